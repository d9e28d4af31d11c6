"""Training data pipeline: throughput next to in-memory tensors, and peak memory against cache size.

1. Overhead: training steps/s of grjca_hier (default size, window 300, batch 16) fed by the real
   FusionDataModule (pread windows from the feature cache, collate, mask) divided by steps/s of the same
   model on the same batches pre-loaded as tensors. Rounds are interleaved (A B A B ...), so load on a
   shared machine moves both sides alike; the ratio is of the medians. Target >= 0.9.
2. Memory: peak RSS of a whole ``train()`` run (1 epoch, small model; training, validation,
   stitching, report) in a fresh subprocess on a demo-sized release and on one 10x larger, plus, for
   contrast, a child that reads the same 10x windows by slicing memmaps. Target: ratio near 1.

The releases have the subjects, splits and frame counts of the synthetic release at scale 1 and 10
(``abaw.synth.generate.plan_release``), but the features are random float16 written in the FeatureCache
layout with the real widths (ResNet-18 512-d, log-mel 192-d) and the labels are random tracks in the
official format: extracting features for a 10x release would take hours on a CPU, and neither figure
depends on feature values.

    .venv/bin/python -m bench training     (BENCH_DEVICE=cuda to run the model on a GPU)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from abaw.utils import peak_rss_mb  # VmHWM: a child's own peak, not its parent's

D_AUDIO, D_VISUAL = 192, 512
ROUNDS, STEPS = 4, 6


# ---- a release of the right shape --------------------------------------------------------------
def write_release(root: Path, scale: float, seed: int = 0) -> Path:
    """Labels, both caches and index.parquet for the synthetic plan at ``scale``; returns the index."""
    import polars as pl

    from abaw.synth.generate import plan_release

    videos, _ = plan_release(seed, scale)
    rng = np.random.default_rng(seed)
    adir, vdir, ldir = root / "audio", root / "visual", root / "labels"
    for d in (adir, vdir, ldir):
        d.mkdir(parents=True, exist_ok=True)
    rows = []
    for v in videos:
        for p in v.persons:
            n = len(v.pts) + p.axis_delta
            for d, dim in ((adir, D_AUDIO), (vdir, D_VISUAL)):
                np.save(d / f"{p.subject}.mask.npy", np.ones(n, dtype=bool))
                # Written in blocks: the 10x release must not need its size in RAM to build either.
                mm = np.lib.format.open_memmap(d / f"{p.subject}.npy", mode="w+", dtype=np.float16, shape=(n, dim))
                for a in range(0, n, 8192):
                    mm[a:a + 8192] = rng.standard_normal((min(8192, n - a), dim), dtype=np.float32)
                mm.flush()
                del mm
            label_file = None
            if p.split != "test":
                vals = np.tanh(np.cumsum(rng.normal(0, 0.05, (n, 2)), axis=0)).astype(np.float32)
                for a, b in p.unlabelled_runs:
                    vals[a:b] = -5.0
                label_file = ldir / f"{p.subject}.txt"
                with open(label_file, "w") as f:
                    f.write("valence,arousal\n")
                    np.savetxt(f, vals, fmt="%.4f", delimiter=",")
            rows.append({"subject": p.subject, "video": v.stem, "split": p.split,
                         "label_file": str(label_file) if label_file else None, "n_frames": n, "usable": True})
    index = root / "index.parquet"
    pl.DataFrame(rows).write_parquet(index)
    return index


def _source(root: Path, cfg):
    import polars as pl

    from abaw.features.cache import FeatureCache
    from abaw.training.datamodule import SubjectSource

    return SubjectSource(cfg, table=pl.read_parquet(root / "index.parquet"),
                         audio_cache=FeatureCache(root / "audio"), visual_cache=FeatureCache(root / "visual"))


def _cfg(cache_root: Path, overrides: list[str]):
    from abaw.config import load_config

    return load_config(None, [f"cache_root={cache_root}", "train.num_workers=0", *overrides])


# ---- 1. pipeline overhead -------------------------------------------------------------------------
def overhead(root: Path) -> None:
    import torch

    from abaw.metrics.loss import ccc_loss
    from abaw.models import build_model
    from abaw.training.datamodule import NORM_KEYS, FusionDataModule
    from abaw.training.inference import forward_batch

    device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
    cfg = _cfg(root / "cache", [])
    dm = FusionDataModule(cfg, source=_source(root, cfg))
    torch.manual_seed(0)
    model = build_model(cfg.model, dm.in_audio, dm.in_visual).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    keys = ("audio", "visual", "gold", "mask", "pad", "face", *NORM_KEYS)

    def step(batch: dict) -> None:
        b = {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}
        out = forward_batch(model, b)
        loss = ccc_loss(out.pred.float(), b["gold"], b["mask"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    loader = dm.train_dataloader()
    preloaded = [b for b, _ in zip(loader, range(STEPS), strict=False)]  # same batches, already tensors
    step(preloaded[0])  # warm-up (allocator, kernels)
    t_real, t_mem, t_data = [], [], []
    for r in range(ROUNDS):
        loader.sampler.set_epoch(r + 1)
        sync()
        t0 = time.perf_counter()
        for batch, _ in zip(loader, range(STEPS), strict=False):
            step(batch)
        sync()
        t_real.append(STEPS / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for batch in preloaded:
            step(batch)
        sync()
        t_mem.append(STEPS / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _batch, _ in zip(loader, range(STEPS), strict=False):
            pass
        t_data.append(STEPS / (time.perf_counter() - t0))
    real, mem, data = (statistics.median(x) for x in (t_real, t_mem, t_data))
    print(f"device {device}, grjca_hier default, batch {cfg.train.batch_size} x {cfg.train.window} frames, "
          f"Ia={dm.in_audio} Iv={dm.in_visual}, {len(dm.train_windows)} train windows")
    print(f"  steps/s with FusionDataModule   {real:8.2f}")
    print(f"  steps/s on in-memory tensors    {mem:8.2f}")
    print(f"  ratio (target >= 0.9)           {real / mem:8.3f}")
    print(f"  loader alone, batches/s         {data:8.2f}  (headroom: {data / mem:.1f}x the model's step rate)")


# ---- 2. memory against cache size ------------------------------------------------------------------
def _child(root: str, mode: str) -> None:
    """Runs in a fresh interpreter; prints one JSON line with peak RSS."""
    root_p = Path(root)
    if mode in ("memmap", "pread"):
        # Contrast: every train window read once, by slicing memory maps (their pages stay mapped into
        # the process) or through RowReader (pread into a fresh buffer), nothing else loaded.
        import polars as pl

        from abaw.training.store import RowReader
        from abaw.training.windows import window_starts

        table = pl.read_parquet(root_p / "index.parquet").filter(pl.col("split") == "train")
        total = 0.0
        maps = []
        for r in table.iter_rows(named=True):
            for kind in ("audio", "visual"):
                mm = np.load(root_p / kind / f"{r['subject']}.npy", mmap_mode="r")
                maps.append(mm)
                reader = RowReader(mm, kind)
                for s in window_starts(r["n_frames"], 300, 200):
                    rows = mm[s:s + 300] if mode == "memmap" else reader.read(s, s + 300)
                    total += float(np.asarray(rows[:, 0], dtype=np.float32).sum())
        print(json.dumps({"peak_rss_mb": peak_rss_mb(), "checksum": total}))
        return
    from abaw.training.datamodule import FusionDataModule
    from abaw.training.train import train

    cfg = _cfg(root_p / "cache", ["train.max_epochs=1", "train.name=bench", "train.patience=0",
                                  "model.d_audio=32", "model.d_visual=32", "model.head_hidden=32"])
    dm = FusionDataModule(cfg, source=_source(root_p, cfg))
    t0 = time.perf_counter()
    metrics, _ = train(cfg, datamodule=dm)
    frames = sum(s.n_frames for s in dm.train_subjects + dm.val_subjects)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": time.perf_counter() - t0, "frames": frames,
                      "train_windows": len(dm.train_windows)}))


def _run_child(root: Path, mode: str) -> dict:
    code = f"from bench.bench_training import _child; _child({str(root)!r}, {mode!r})"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"child {mode} on {root} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cache_mb(root: Path) -> float:
    return sum(p.stat().st_size for d in ("audio", "visual") for p in (root / d).glob("*.npy")) / 2**20


def memory(small: Path, large: Path) -> None:
    a = _run_child(small, "train")
    b = _run_child(large, "train")
    c = _run_child(large, "memmap")
    d = _run_child(large, "pread")
    print(f"  demo-size release: {a['frames']:>8d} frames, cache {_cache_mb(small):7.0f} MiB, "
          f"peak RSS {a['peak_rss_mb']:7.0f} MiB ({a['seconds']:.0f} s)")
    print(f"  10x release:       {b['frames']:>8d} frames, cache {_cache_mb(large):7.0f} MiB, "
          f"peak RSS {b['peak_rss_mb']:7.0f} MiB ({b['seconds']:.0f} s)")
    print(f"  peak RSS ratio 10x / 1x (target ~1)  {b['peak_rss_mb'] / a['peak_rss_mb']:6.3f}")
    print(f"  why pread: reading every 10x train window once, nothing else loaded: memmap slicing peak RSS "
          f"{c['peak_rss_mb']:.0f} MiB, RowReader (pread) {d['peak_rss_mb']:.0f} MiB")


def main() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    base = Path(tempfile.mkdtemp(prefix="abaw-bench-training-"))
    try:
        small, large = base / "x1", base / "x10"
        t0 = time.perf_counter()
        write_release(small, 1.0)
        write_release(large, 10.0)
        print(f"(random-feature releases written in {time.perf_counter() - t0:.0f} s under {base})")
        print("-- data pipeline overhead")
        overhead(small)
        print("-- peak memory against cache size (fresh subprocesses)")
        memory(small, large)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
