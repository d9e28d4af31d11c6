"""Fine-tuning: training cost over inference cost, whether JPEG decoding keeps up, flat memory.

- step / forward: images/s of a training step (forward + backward + AdamW) over forward-only images/s,
  same backbone, batch and threads, on pre-loaded tensors, timed back to back.
- loader: images/s of the training DataLoader alone (workers decoding and augmenting JPEGs) and of the
  whole training loop (loader feeding the training step) over the training step on pre-loaded tensors
  (target >= 0.9: decoding and augmentation must keep up with the model).
- bf16: the training step and the forward pass under bfloat16 autocast over the same in fp32, timed in
  between the fp32 phases (``finetune.precision: bf16-mixed``, ``features.visual.precision: bf16``; fast
  on CPUs with AVX512-BF16 or AMX, emulated and slower elsewhere).
- memory: peak RSS of a fresh process that builds the frame table and runs a few training steps, with
  10x the frames on disk over 1x (the same number of steps: target flat, ~1.0).

Run: ``.venv/bin/python -m bench finetune`` (BENCH_FT_FRAMES=N frames per timing, BENCH_FT_WORKERS=W).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_features import make_release

SIDE, BATCH = 112, 32


def _release(root: Path, frames: int, per: int = 256) -> tuple[dict, list[str]]:
    """Crop folders (hard-linked JPEGs) with label files: index rows by subject, and the subject names."""
    table = make_release(root, {f"s{i:03d}": min(per, frames - i * per) for i in range(-(-frames // per))})
    rng = np.random.default_rng(0)
    rows = {}
    for r in table.iter_rows(named=True):
        labels = root / f"{r['subject']}.txt"
        v = rng.uniform(-1, 1, (r["n_frames"], 2))
        labels.write_text("valence,arousal\n" + "".join(f"{a:.3f},{b:.3f}\n" for a, b in v))
        rows[r["subject"]] = {**r, "label_file": str(labels)}
    return rows, sorted(rows)


def _setup(root: Path, frames: int, workers: int):
    import timm
    import torch

    from abaw.config import from_dict
    from abaw.finetune.config import FinetuneConfig
    from abaw.finetune.data import FinetuneData, frame_table
    from abaw.finetune.module import FinetuneModule, FinetuneNet

    rows, names = _release(root, frames)
    ft = from_dict(FinetuneConfig, {"stride": 1, "batch_size": BATCH, "num_workers": workers,
                                    "augment": "face", "layers": "all"})
    table = frame_table(rows, names, root, 1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    dm = FinetuneData(table, table, ft, (SIDE, SIDE), mean, std, "bilinear", 0, seed=0)
    torch.manual_seed(0)
    lit = FinetuneModule(FinetuneNet(timm.create_model("resnet18", num_classes=0)), ft, channels_last=True)
    lit.net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(lit.param_groups(), lr=1e-4)
    return ft, dm, lit, opt


def _step(lit, opt, x, y) -> None:
    import torch

    opt.zero_grad(set_to_none=True)
    lit.loss(lit(x), y, torch.isfinite(y).all(dim=1)).backward()
    opt.step()


def throughput(frames: int, threads: int, workers: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ft, dm, lit, opt = _setup(Path(tmp), frames, workers)
        loader = dm.train_dataloader()
        x, y, _ = next(iter(loader))
        n = -(-frames // BATCH)

        def forward(bf16: bool = False) -> float:
            lit.eval()
            t = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for _ in range(n):
                    lit(x)
            return n * BATCH / (time.perf_counter() - t)

        def step(bf16: bool = False) -> float:
            lit.train()
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for _ in range(n):
                    _step(lit, opt, x, y)
            return n * BATCH / (time.perf_counter() - t)

        def loader_only() -> float:
            t, k = time.perf_counter(), 0
            for xb, _, _ in loader:
                k += len(xb)
            return k / (time.perf_counter() - t)

        def loop() -> float:
            lit.train()
            t, k = time.perf_counter(), 0
            for xb, yb, _ in loader:
                _step(lit, opt, xb, yb)
                k += len(xb)
            return k / (time.perf_counter() - t)

        step(), forward(), step(True), forward(True)  # warm-up: oneDNN picks kernels, workers start
        fwd_a, step_a = forward(), step()
        load, full = loader_only(), loop()
        step_16, fwd_16 = step(True), forward(True)
        step_b, fwd_b = step(), forward()
        fwd, stp = (fwd_a + fwd_b) / 2, (step_a + step_b) / 2
        return dict(frames=frames, threads=threads, workers=workers, batch=BATCH, side=SIDE,
                    forward_ips=round(fwd, 1), step_ips=round(stp, 1), loader_ips=round(load, 1),
                    loop_ips=round(full, 1), step_over_forward=round(stp / fwd, 3),
                    bf16_step_ips=round(step_16, 1), bf16_forward_ips=round(fwd_16, 1),
                    bf16_step_over_fp32=round(step_16 / stp, 3), bf16_forward_over_fp32=round(fwd_16 / fwd, 3),
                    loader_over_step=round(load / stp, 3), loop_over_step=round(full / stp, 3))


def memory_child(frames: int) -> dict:
    """In a fresh process: frame table over ``frames`` frames, then 8 training steps from the loader."""
    import torch

    from abaw.utils import peak_rss_mb

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        _, dm, lit, opt = _setup(Path(tmp), frames, workers=0)
        base = peak_rss_mb()
        for k, (xb, yb, _) in enumerate(dm.train_dataloader()):
            _step(lit, opt, xb, yb)
            if k == 7:
                break
        return dict(frames=frames, pool=len(dm.train_table), peak_rss_mb=round(peak_rss_mb(), 1),
                    before_steps_mb=round(base, 1))


def _memory(frames: int) -> dict:
    code = f"import json; from bench.bench_finetune import memory_child; print(json.dumps(memory_child({frames})))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=str(Path(__file__).resolve().parent.parent))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    frames = int(os.environ.get("BENCH_FT_FRAMES", "512"))
    workers = int(os.environ.get("BENCH_FT_WORKERS", "2"))
    threads = int(os.environ.get("BENCH_FT_THREADS", str(min(2, os.cpu_count() or 1))))
    t = throughput(frames, threads, workers)
    print(f"resnet18 @ {SIDE} px, batch {BATCH}, {threads} thread(s), {workers} decoding worker(s), "
          f"{frames} frames per timing")
    print(f"  forward-only {t['forward_ips']:.0f} img/s, training step {t['step_ips']:.0f} img/s -> "
          f"step/forward {t['step_over_forward']:.2f}")
    print(f"  loader alone {t['loader_ips']:.0f} img/s -> loader/step {t['loader_over_step']:.2f}; "
          f"whole loop {t['loop_ips']:.0f} img/s -> loop/step {t['loop_over_step']:.2f} (target >= 0.9)")
    print(f"  bf16 autocast: step {t['bf16_step_ips']:.0f} img/s -> bf16/fp32 {t['bf16_step_over_fp32']:.2f}; "
          f"forward {t['bf16_forward_ips']:.0f} img/s -> bf16/fp32 {t['bf16_forward_over_fp32']:.2f}")
    small, large = _memory(frames), _memory(10 * frames)
    print(f"  memory: peak RSS {small['peak_rss_mb']:.0f} MiB ({small['pool']} frames) vs "
          f"{large['peak_rss_mb']:.0f} MiB ({large['pool']} frames) -> ratio "
          f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f} (target ~1.0: the pool is indices, not pixels)")
    print(json.dumps({"throughput": t, "memory": [small, large]}))


if __name__ == "__main__":
    main()
