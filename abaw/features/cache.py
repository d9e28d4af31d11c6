"""The feature cache: one memory-mappable ``.npy`` pair per subject, written so that no crash is trusted.

Layout of ``<release_cache>/features/<backbone>-<hash>/``::

    settings.json          what the hash covers (written when the folder is created)
    config.yaml            the resolved run config of the run that created it
    <subject>.mask.npy     bool [N]: True where the row holds real data, False where it was filled
    <subject>.npy          float16 [N, D]: one row per frame of the subject's frame axis
    manifest.json          subjects, shapes, dim, settings; written last, once every subject is present
    .locks/                per-subject and manifest locks (several processes may fill one cache)

A subject counts as done only when both files exist, their headers agree on N (and on D with the rest of
the cache) and the feature file has all its bytes. Each file is written to a ``.*.tmp`` file in the same
folder and renamed into place (atomic); the mask first, the features last, so the presence of a valid
feature file means the mask beside it belongs to it. A run that is killed leaves only ``.tmp`` files,
which the next writer of that subject deletes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from abaw.errors import AbawError
from abaw.utils import atomic_path, atomic_write_json, file_lock

MANIFEST = "manifest.json"
SETTINGS = "settings.json"
_FILL_CHUNK = 4096  # rows copied per step when filling missing frames (bounded memory)


def fill_sources(present: np.ndarray, policy: str) -> np.ndarray:
    """For each frame, the frame whose features it carries: itself where present, -1 for zeros.

    Policies for a missing frame: ``previous`` (last present frame before it; frames before the first
    present one take the first present one), ``next`` (the mirror image: after the last present frame,
    the last one), ``nearest`` (closest present frame, the earlier one on a tie), ``zeros``. With no
    present frame at all every policy gives zeros.
    """
    present = np.asarray(present, dtype=bool)
    n = present.size
    idx = np.arange(n)
    if policy == "zeros" or not present.any():
        return np.where(present, idx, -1)
    first, last = int(np.argmax(present)), int(n - 1 - np.argmax(present[::-1]))
    prev = np.maximum.accumulate(np.where(present, idx, -1))
    nxt = np.minimum.accumulate(np.where(present, idx, n)[::-1])[::-1]
    prev = np.where(prev < 0, first, prev)
    nxt = np.where(nxt >= n, last, nxt)
    if policy == "previous":
        return prev
    if policy == "next":
        return nxt
    if policy == "nearest":
        return np.where(idx - prev <= nxt - idx, prev, nxt)
    raise ValueError(f"fill policy {policy!r} is not one of previous, next, nearest, zeros")


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) of a ``.npy`` file, or None if it is not a readable ``.npy``."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
            return tuple(shape), np.dtype(dtype), f.tell()
    except (OSError, ValueError):
        return None


def _complete_npy(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Header of a ``.npy`` whose data is all on disk (a truncated file returns None)."""
    head = npy_header(path)
    if head is None:
        return None
    shape, dtype, offset = head
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        return (shape, dtype) if os.path.getsize(path) == expected else None
    except OSError:
        return None


class CacheError(RuntimeError, AbawError):
    """A cache folder whose contents contradict its name (settings, feature width): never written into."""


class FeatureCache:
    """Read (and, through ``writer``, fill) one backbone's feature folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r})"

    # ---- files ---------------------------------------------------------------------------------
    def feature_path(self, subject: str) -> Path:
        return self.path / f"{subject}.npy"

    def mask_path(self, subject: str) -> Path:
        return self.path / f"{subject}.mask.npy"

    def lock_path(self, name: str) -> Path:
        return self.path / ".locks" / f"{name}.lock"

    # ---- state ---------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            return None

    @property
    def settings(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / SETTINGS).read_text())
        except FileNotFoundError:
            return None

    @property
    def complete(self) -> bool:
        """True once the manifest exists: every subject of the release was extracted."""
        return (self.path / MANIFEST).is_file()

    def shape(self, subject: str) -> tuple[int, int] | None:
        """(N, D) of a finished subject, or None when it is absent, partial or inconsistent."""
        feats = _complete_npy(self.feature_path(subject))
        mask = _complete_npy(self.mask_path(subject))
        if feats is None or mask is None:
            return None
        (fshape, _), (mshape, mdtype) = feats, mask
        if len(fshape) != 2 or mshape != (fshape[0],) or mdtype != np.bool_:
            return None
        return int(fshape[0]), int(fshape[1])

    def has(self, subject: str, n_frames: int | None = None, dim: int | None = None) -> bool:
        """Whether ``subject`` is finished (and, when given, has ``n_frames`` rows of width ``dim``)."""
        shape = self.shape(subject)
        if shape is None:
            return False
        return (n_frames is None or shape[0] == n_frames) and (dim is None or shape[1] == dim)

    def subjects(self) -> list[str]:
        """Finished subjects: the manifest's list when complete, else those found on disk."""
        manifest = self.manifest
        if manifest is not None:
            return sorted(manifest["subjects"])
        if not self.path.is_dir():
            return []
        names = [p.name[: -len(".mask.npy")] for p in self.path.glob("*.mask.npy")]
        return sorted(s for s in names if self.shape(s) is not None)

    @property
    def dim(self) -> int | None:
        """Feature width D (from the manifest, else the first finished subject)."""
        manifest = self.manifest
        if manifest is not None:
            return int(manifest["dim"])
        for s in self.subjects():
            return self.shape(s)[1]
        return None

    def load(self, subject: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(features [N, D], mask bool [N]); features are memory-mapped read-only unless ``mmap=False``."""
        shape = self.shape(subject)
        if shape is None:
            raise KeyError(f"{self.path}: no finished features for subject {subject!r} (run `abaw features`)")
        feats = np.load(self.feature_path(subject), mmap_mode="r" if mmap else None)
        mask = np.load(self.mask_path(subject))
        return feats, mask

    # ---- writing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        with file_lock(self.lock_path(name)):
            yield

    def remove_stale_tmp(self, subject: str) -> None:
        """Delete temp files a killed writer of ``subject`` left (call only while holding its lock)."""
        pattern = re.compile(rf"^\.{re.escape(subject)}(\.mask)?\.npy\.[A-Za-z0-9_]+\.tmp$")
        for p in self.path.glob(f".{glob_escape(subject)}*.tmp"):
            if pattern.match(p.name):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def writer(self, subject: str, n_frames: int, dim: int, dtype: str) -> SubjectWriter:
        return SubjectWriter(self, subject, n_frames, dim, dtype)

    def write_subject(self, subject: str, feats: np.ndarray, mask: np.ndarray, dtype: str) -> bool:
        """Publish a whole in-memory subject (audio) under its lock; False if another writer already did."""
        with self.lock(subject):
            if self.has(subject, len(mask), feats.shape[1]):
                return False
            self.remove_stale_tmp(subject)
            w = self.writer(subject, len(mask), feats.shape[1], dtype)
            with w:
                w.write(np.arange(len(mask)), feats)
                w.commit(mask, None)
        return True

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.path / MANIFEST, manifest)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


class SubjectWriter:
    """Streams one subject's rows into a temp ``.npy`` (preallocated, memory-mapped) and publishes it.

    ``write(rows, feats)`` fills rows batch by batch; ``commit(mask, sources)`` copies filled rows from
    their sources (see ``fill_sources``), writes the mask, then renames the features into place. Leaving
    the ``with`` block without ``commit`` deletes the temp file. The caller holds the subject's lock.
    """

    def __init__(self, cache: FeatureCache, subject: str, n_frames: int, dim: int, dtype: str):
        self.cache, self.subject = cache, subject
        self.shape = (int(n_frames), int(dim))
        self.dtype = np.dtype(dtype)
        self.final = cache.feature_path(subject)
        self.tmp: Path | None = None
        self.array: np.ndarray | None = None
        self.committed = False

    def __enter__(self) -> SubjectWriter:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.final.name}.", suffix=".tmp", dir=self.final.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        if self.shape[0] * self.shape[1] > 0:
            # Preallocated on disk and filled in batches: a 20,000-frame video never sits in memory.
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=self.shape)
        else:  # mmap cannot map zero bytes
            self.array = np.zeros(self.shape, self.dtype)
        return self

    def write(self, rows: np.ndarray, feats: np.ndarray) -> None:
        with np.errstate(over="ignore"):  # an overflow to inf is caught just below, with a better message
            out = np.asarray(feats).astype(self.dtype, copy=False)
        if not np.isfinite(out).all():
            raise FloatingPointError(
                f"subject {self.subject}: non-finite features (NaN/inf) in rows {int(rows[0])}..{int(rows[-1])}"
                + (
                    " after casting to float16; set features.*.dtype=float32"
                    if self.dtype == np.float16
                    else ""
                )
            )
        self.array[rows] = out

    def commit(self, mask: np.ndarray, sources: np.ndarray | None) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.shape[0],):
            raise ValueError(f"subject {self.subject}: mask of shape {mask.shape} for {self.shape[0]} rows")
        arr = self.array
        if sources is not None:
            todo = np.flatnonzero(sources != np.arange(len(sources)))
            for a in range(0, len(todo), _FILL_CHUNK):
                rows = todo[a : a + _FILL_CHUNK]
                src = sources[rows]
                # Sources are always real (written) rows, never other filled rows, so one pass suffices.
                block = np.zeros((len(rows), self.shape[1]), self.dtype)
                real = src >= 0
                block[real] = arr[src[real]]
                arr[rows] = block
        if isinstance(arr, np.memmap):
            arr.flush()
        else:
            with open(self.tmp, "wb") as f:
                np.lib.format.write_array(f, arr)
        del arr
        self.array = None
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        with atomic_path(self.cache.mask_path(self.subject)) as mtmp, open(mtmp, "wb") as f:
            np.lib.format.write_array(f, mask)
        os.replace(self.tmp, self.final)
        self.committed = True

    def __exit__(self, *exc: object) -> None:
        self.array = None
        if not self.committed and self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
