"""Writing and validating a submission at Aff-Wild2 test-set scale.

Figures, measured side by side in this process:
- ``write_submission`` of 1 M rows (100 videos x 10,000 frames) vs a per-row Python loop writing the
  same text (target: about a second, many times the loop's speed);
- ``check_submission`` of that file against its sample file and release list vs a per-row ``csv``
  loop that only parses (no checks): the validator reads with the csv module too, so the ratio is what
  its checks cost on top of parsing; and the same validation of 3 M rows (it scales linearly);
- peak memory of each: traced Python/NumPy allocations (tracemalloc) and the process RSS growth
  (sampled; polars allocates outside tracemalloc's view).
Times are the best of two runs, wall and CPU (the CPU figure is steadier on a shared machine).
"""

from __future__ import annotations

import csv
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil

from abaw.submit.validate import check_submission
from abaw.submit.writer import HEADER, write_submission

FRAMES = 10_000


def _data(n_videos: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    order = [f"{i}-30-1280x720" + ("_left" if i % 7 == 0 else "") for i in range(n_videos)]
    preds = {s: rng.uniform(-1, 1, (FRAMES, 2)).astype(np.float32) for s in order}
    return order, preds, {s: FRAMES for s in order}


def _refs(folder: Path, order: list[str]) -> tuple[Path, Path]:
    release = folder / "release.txt"
    release.write_text("\n".join(order) + "\n")
    sample = folder / "sample.txt"
    with open(sample, "w") as f:
        f.write(HEADER + "\n")
        for s in order:
            f.writelines(f"{s}/{i:05d}.jpg,0,0\n" for i in range(1, FRAMES + 1))
    return sample, release


def _timed(fn, repeat: int = 2) -> tuple[float, float]:
    """Best (wall, cpu) seconds over ``repeat`` runs."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    return best


def _memory(fn) -> tuple[float, float]:
    """(traced peak MiB, RSS growth MiB) of one run of ``fn``."""
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    try:
        fn()
    finally:
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        stop.set()
        sampler.join()
    peak = max(peak, proc.memory_info().rss)
    return traced / 2**20, (peak - base) / 2**20


def _write_once(path: Path, n_videos: int) -> tuple[list[str], tuple[float, float]]:
    """Write ``n_videos`` x 10,000 rows once; the predictions are dropped before validation is timed."""
    order, preds, counts = _data(n_videos, seed=1)
    return order, _timed(lambda: write_submission(path, preds, order, counts), repeat=1)


def _naive_write(path: Path, preds: dict, order: list[str]) -> None:
    with open(path, "w") as f:
        f.write(HEADER + "\n")
        for s in order:
            for i, (v, a) in enumerate(preds[s].astype(np.float64)):
                f.write(f"{s}/{i + 1:05d}.jpg,{v:.6f},{a:.6f}\n")


def _naive_parse(path: Path) -> int:
    """Only what any checker must do per row: split, parse the frame and both numbers."""
    n = 0
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for loc, v, a in reader:
            _, _, image = loc.rpartition("/")
            int(image[:-4])
            float(v), float(a)
            n += 1
    return n


def _row(label: str, wall: float, cpu: float, rows: int, mem: tuple[float, float] | None = None) -> str:
    out = f"  {label:<44} {wall:7.2f} s wall {cpu:7.2f} s cpu  {rows / cpu / 1e6:6.2f} M rows/cpu-s"
    if mem:
        out += f"  peak traced {mem[0]:7.1f} MiB, RSS +{mem[1]:7.1f} MiB"
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        order, preds, counts = _data(100)
        rows = len(order) * FRAMES
        sub = tmp / "predictions.txt"
        sample, release = _refs(tmp, order)

        w = _timed(lambda: write_submission(sub, preds, order, counts))
        w_mem = _memory(lambda: write_submission(sub, preds, order, counts))
        n = _timed(lambda: _naive_write(tmp / "naive.txt", preds, order), repeat=1)
        assert (tmp / "naive.txt").read_bytes() == sub.read_bytes(), "the loop and the writer disagree"
        print(f"write {rows:,} rows ({sub.stat().st_size / 2**20:.0f} MiB):")
        print(_row("write_submission (polars, per video)", *w, rows, w_mem))
        print(_row("per-row Python loop", *n, rows))
        print(f"  ratio: writer {n[1] / w[1]:.1f}x faster (cpu), {n[0] / w[0]:.1f}x (wall)")

        v = _timed(lambda: check_submission(sub, sample, release))
        v_mem = _memory(lambda: check_submission(sub, sample, release))
        report = check_submission(sub, sample, release)
        assert report.valid and report.rows == rows, report.format()
        plain = _timed(lambda: check_submission(sub))
        p = _timed(lambda: _naive_parse(sub), repeat=1)
        print(f"validate {rows:,} rows:")
        print(_row("check_submission + sample + release", *v, rows, v_mem))
        print(_row("check_submission, no references", *plain, rows))
        print(_row("per-row csv loop (parse only, no checks)", *p, rows))
        print(f"  ratio: validator (no references) takes {plain[1] / p[1]:.2f}x the parse-only loop's cpu time")

        sub3 = tmp / "predictions3.txt"
        order3, w3 = _write_once(sub3, 300)
        sample3, release3 = _refs(tmp, order3)
        v3 = _timed(lambda: check_submission(sub3, sample3, release3))
        v3_mem = _memory(lambda: check_submission(sub3, sample3, release3))
        print(f"3 M rows ({sub3.stat().st_size / 2**20:.0f} MiB):")
        print(_row("write_submission", *w3, 3 * rows))
        print(_row("check_submission + sample + release", *v3, 3 * rows, v3_mem))
        print(f"  scaling: validation of 3x the rows took {v3[1] / v[1]:.2f}x the cpu time")


if __name__ == "__main__":
    main()
