"""Small helpers every stage shares: atomic writes, a file lock, digests, peak memory, code version."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _tmp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lives in the same folder, so the final rename is atomic (same filesystem),
    # and its name ends in .tmp so no reader ever mistakes it for a finished file.
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    A crash leaves only a ``.*.tmp`` file, never a half-written ``path``.
    """
    path = Path(path)
    fd, tmp = _tmp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the ``with`` block; other processes wait."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def file_digest(path: str | os.PathLike, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    Reads VmHWM from /proc: ``ru_maxrss`` is inherited across fork/exec, so a child started from a big
    parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def code_version() -> str:
    """``git describe`` of the checkout when available, else the package version."""
    import subprocess

    from abaw import __version__

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def thread_share(workers: int) -> int:
    """Torch threads for each of ``workers`` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def start_worker_process(n_threads: int) -> None:
    """Set up a spawned worker process: ``n_threads`` torch threads (its share of the cores: workers
    that each took every core would oversubscribe the machine), and exit if its parent dies (a killed
    ``abaw tune`` or ``abaw ablate`` must not leave workers training on; their work is resumed or
    redone on the next start)."""
    import threading
    import time

    import torch

    parent = os.getppid()

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    torch.set_num_threads(max(1, n_threads))


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether bfloat16 autocast runs natively on this machine's ``device_type``: a CUDA GPU with bf16, or
    a CPU with AVX512-BF16 or AMX. Elsewhere oneDNN emulates it, 5-15x slower than fp32."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def warn_if_bf16_emulated(setting: str, device_type: str, fp32: str) -> None:
    """Log a warning naming ``setting`` when bf16 was asked for where it is only emulated."""
    if not native_bf16(device_type):
        import logging

        logging.getLogger("abaw").warning(
            "%s on %s without native bfloat16: emulated, several times slower than fp32 (set %s)",
            setting, device_type, fp32)
