"""Feature extraction: pipeline efficiency, streaming memory, audio real-time factor.

- visual efficiency = full extraction frames/s (JPEG decode + resize/normalise + forward + .npy write)
  / the same backbone's forward-only frames/s on pre-decoded tensors: same model, batch and threads,
  measured back to back (forward, extraction, forward again) so load on the shared machine hits both.
- memory: peak RSS of a fresh process extracting one 20,000-frame subject / one 1,000-frame subject.
- inputs: the input identity a rerun checks per subject (scan + stat) / reading every crop's bytes.
- audio: seconds of compute per second of audio (real-time factor) for each audio preset, random
  weights, timed by ``bench.audio_rtf.bench_audio_rtf``.

Run: ``.venv/bin/python -m bench features`` (BENCH_FRAMES=N sets the visual frame count).
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

CROP = 112
DISTINCT = 48  # different images on disk; longer subjects hard-link them (same decode cost, fast setup)


def _images(n: int, seed: int = 0) -> list[bytes]:
    """JPEG bytes of face-like 112 px crops: smooth gradients, an ellipse, mild noise (quality 90)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:CROP, 0:CROP].astype(np.float32)
    out = []
    for _ in range(n):
        top, bottom, skin = (rng.uniform(20, 235, 3) for _ in range(3))
        g = (yy / CROP)[..., None]
        img = top * (1 - g) + bottom * g
        cx, cy = CROP / 2 + rng.uniform(-5, 5, 2)
        r = rng.uniform(36, 44)
        img[((xx - cx) / (0.8 * r)) ** 2 + ((yy - cy) / r) ** 2 < 1] = skin
        img += rng.normal(0, 5, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_release(root: Path, lengths: dict[str, int]):
    """Crop folders for subjects of the given lengths and the index table that describes them."""
    import polars as pl

    src = root / "_src"
    src.mkdir(parents=True, exist_ok=True)
    files = []
    for i, data in enumerate(_images(DISTINCT)):
        files.append(src / f"{i}.jpg")
        files[-1].write_bytes(data)
    rows = []
    for subject, n in lengths.items():
        d = root / "cropped_aligned" / subject
        d.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            os.link(files[k % DISTINCT], d / f"{k + 1:05d}.jpg")
        rows.append(dict(subject=subject, video=subject, n_frames=n, crop_dir=str(d), video_path=None))
    return pl.DataFrame(rows)


def _cfg(root: Path, overrides: list[str]):
    from abaw.config import load_config

    return load_config(
        "configs/demo.yaml",
        # fp32, as the README's figures were taken (demo.yaml extracts in bf16 now; bench finetune has the ratio)
        [f"data.root={root}", f"cache_root={root / 'cache'}", "features.device=cpu", "features.visual.precision=32",
         *overrides],
    )


def visual_efficiency(frames: int, threads: int, workers: int, batch: int = 64, rounds: int = 3) -> dict:
    """Median over ``rounds`` of (extraction fps / forward-only fps), each round timing forward-only just
    before and just after one extraction of ``frames`` frames (a fresh cache each round)."""
    import torch

    from abaw.features.extract import extract_features
    from abaw.features.visual import VisualExtractor, decode_crop

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per = 256
        table = make_release(
            root, {f"s{i:03d}": min(per, frames - i * per) for i in range(-(-frames // per))}
        )
        cfg = _cfg(root, cfg_overrides(batch, workers))
        ext = VisualExtractor(cfg.features.visual, "cpu")
        imgs = [ext.transform(image=decode_crop(str(p)))["image"] for p in sorted((root / "_src").iterdir())]
        x = torch.from_numpy(
            np.stack([imgs[k % len(imgs)] for k in range(batch)]).transpose(0, 3, 1, 2).copy()
        )
        n_batches = -(-frames // batch)
        ext.embed(x)  # warm-up (oneDNN picks its kernels on the first call)

        def forward_only() -> float:
            t = time.perf_counter()
            for _ in range(n_batches):
                ext.embed(x)
            return n_batches * batch / (time.perf_counter() - t)

        ratios, fwds, fulls = [], [], []
        for r in range(rounds):
            fwd_a = forward_only()
            report = extract_features(
                _cfg(root, [f"cache_root={root / f'cache{r}'}", *cfg_overrides(batch, workers)]),
                "visual",
                index=table,
            )
            fwd_b = forward_only()
            assert report.ok and report.frames == frames, report.summary()
            full = report.frames / report.loop_seconds
            fwds.append((fwd_a + fwd_b) / 2)
            fulls.append(full)
            ratios.append(full / fwds[-1])
        return dict(
            threads=threads,
            workers=workers,
            batch=batch,
            frames=frames,
            forward_fps=round(float(np.median(fwds)), 1),
            extraction_fps=round(float(np.median(fulls)), 1),
            ratios=[round(v, 3) for v in ratios],
            efficiency=round(float(np.median(ratios)), 3),
        )


def cfg_overrides(batch: int, workers: int) -> list[str]:
    return [f"features.visual.batch_size={batch}", f"features.visual.num_workers={workers}"]


def _memory_child(n_frames: int) -> None:
    """(Run in a fresh process.) Extract one subject of n_frames and print peak RSS as JSON."""
    from abaw.features.extract import extract_features
    from abaw.utils import peak_rss_mb

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = make_release(root, {"long": n_frames})
        cfg = _cfg(root, ["features.visual.img_size=32", "features.visual.num_workers=1"])
        report = extract_features(cfg, "visual", index=table)
        assert report.ok and report.frames == n_frames
        print(json.dumps(dict(n_frames=n_frames, peak_rss_mb=peak_rss_mb(), seconds=report.loop_seconds)))


def memory(short: int = 1000, long: int = 20000) -> dict:
    out = {}
    for n in (short, long):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        code = f"from bench.bench_features import _memory_child; _memory_child({n})"
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).parent.parent,
        )
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(
        short=out[short],
        long=out[long],
        rss_ratio=round(out[long]["peak_rss_mb"] / out[short]["peak_rss_mb"], 3),
    )


def identity_cost(frames: int = 20000, rounds: int = 3) -> dict:
    """Cost of the per-subject input identity a rerun checks (one directory scan with a stat per crop)
    next to reading every crop's bytes (what a content hash would need), on one ``frames``-crop subject;
    medians over ``rounds``, measured alternately."""
    from abaw.features.inputs import visual_inputs

    with tempfile.TemporaryDirectory() as tmp:
        table = make_release(Path(tmp), {"long": frames})
        d = Path(table["crop_dir"][0])
        stat_s, read_s = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            visual_inputs(d, frames)
            stat_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            for p in sorted(d.iterdir()):
                p.read_bytes()
            read_s.append(time.perf_counter() - t)
        a, b = float(np.median(stat_s)), float(np.median(read_s))
        return dict(frames=frames, stat_ms=round(a * 1e3, 1), read_ms=round(b * 1e3, 1), ratio=round(a / b, 3))


def audio_rtf(seconds: float = 20.0) -> dict:
    """Per audio preset: the audio module's own timing of ``embed_video`` (decode included) on an MP4."""
    try:
        from abaw.features import audio
        from bench.audio_rtf import bench_audio_rtf
    except ImportError as e:
        return {"skipped": f"abaw.features.audio not importable ({e})"}
    out = {}
    for name in audio.AUDIO_PRESETS:
        try:
            out.update(bench_audio_rtf(presets=(name,), seconds=seconds, contexts=("track",)))
        except Exception as e:  # a preset that cannot run here is reported, not fatal to the others
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def main() -> None:
    import torch

    frames = int(os.environ.get("BENCH_FRAMES", "512"))
    print(f"cpu cores {os.cpu_count()}, torch {torch.__version__}; resnet18 preset at 112 px, random weights")
    for threads, workers in ((1, 1), (2, 1), (1, 0)):
        r = visual_efficiency(frames, threads, workers)
        print(
            f"visual  threads={threads} workers={workers} batch={r['batch']} frames={frames}: forward-only "
            f"{r['forward_fps']} fps, extraction {r['extraction_fps']} fps -> efficiency {r['efficiency']:.2f} "
            f"(rounds {r['ratios']}; target >= 0.8)",
            flush=True,
        )
    m = memory()
    print(
        f"memory  peak RSS {m['short']['peak_rss_mb']:.0f} MiB ({m['short']['n_frames']} frames) vs "
        f"{m['long']['peak_rss_mb']:.0f} MiB ({m['long']['n_frames']} frames) -> ratio {m['rss_ratio']:.2f} "
        "(target <= 1.5)",
        flush=True,
    )
    c = identity_cost()
    print(
        f"inputs  identity of {c['frames']} crops (scan + stat) {c['stat_ms']} ms vs reading every crop "
        f"{c['read_ms']} ms -> ratio {c['ratio']:.3f} (page cache warm for both)",
        flush=True,
    )
    for name, r in audio_rtf().items():
        if "rtf" in r:
            print(
                f"audio   {name}: {r['rtf']:.1f}x real time = real-time factor {1 / r['rtf']:.4f} "
                f"(compute s per audio s, decode included)",
                flush=True,
            )
        else:
            print(f"audio   {name}: {r}", flush=True)


if __name__ == "__main__":
    main()
