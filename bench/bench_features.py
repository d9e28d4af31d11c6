"""Feature extraction: pipeline efficiency, streaming memory, audio real-time factor.

- visual efficiency = full extraction frames/s (JPEG decode + resize/normalise + forward + .npy write)
  / the same backbone's forward-only frames/s on pre-decoded tensors: same model, batch and threads,
  measured back to back (forward, extraction, forward again) so load on the shared machine hits both.
- memory: peak RSS of a fresh process extracting one 20,000-frame subject / one 1,000-frame subject.
- audio: seconds of compute per second of audio (real-time factor) for each audio preset.

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
        [f"data.root={root}", f"cache_root={root / 'cache'}", "features.device=cpu", *overrides],
    )


def visual_efficiency(frames: int, threads: int, workers: int, batch: int = 64) -> dict:
    import torch

    from abaw.features.extract import extract_features
    from abaw.features.visual import VisualExtractor, decode_crop

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per = 500
        table = make_release(
            root, {f"s{i:03d}": min(per, frames - i * per) for i in range(-(-frames // per))}
        )
        cfg = _cfg(root, [f"features.visual.batch_size={batch}", f"features.visual.num_workers={workers}"])
        ext = VisualExtractor(cfg.features.visual, "cpu")
        imgs = [ext.transform(image=decode_crop(str(p)))["image"] for p in sorted((root / "_src").iterdir())]
        x = torch.from_numpy(
            np.stack([imgs[k % len(imgs)] for k in range(batch)]).transpose(0, 3, 1, 2).copy()
        )
        n_batches = -(-frames // batch)

        def forward_only() -> float:
            ext.embed(x)  # warm-up (oneDNN picks kernels on the first call)
            t = time.perf_counter()
            for _ in range(n_batches):
                ext.embed(x)
            return n_batches * batch / (time.perf_counter() - t)

        fwd_a = forward_only()
        report = extract_features(cfg, "visual", index=table)
        fwd_b = forward_only()
        assert report.ok and report.frames == frames, report.summary()
        full = report.frames / report.loop_seconds
        fwd = (fwd_a + fwd_b) / 2
        return dict(
            threads=threads,
            workers=workers,
            batch=batch,
            frames=frames,
            forward_fps=round(fwd, 1),
            forward_spread=round(abs(fwd_a - fwd_b) / fwd, 3),
            extraction_fps=round(full, 1),
            extraction_fps_with_setup=round(report.frames / report.seconds, 1),
            efficiency=round(full / fwd, 3),
        )


def _memory_child(n_frames: int) -> None:
    """(Run in a fresh process.) Extract one subject of n_frames and print peak RSS as JSON."""
    from abaw.features.extract import extract_features
    from abaw.utils import peak_rss_mb

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = make_release(root, {"long": n_frames})
        cfg = _cfg(root, ["features.visual.img_size=64", "features.visual.num_workers=1"])
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


def _test_video(path: Path, seconds: float, fps: int = 30, rate: int = 16000) -> np.ndarray:
    """A small H.264 + AAC mp4 (speech-like tones in noise); returns its frame times."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        aus = c.add_stream("aac", rate=rate)
        aus.layout = "mono"
        n_video = int(seconds * fps)
        for i in range(n_video):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i % 255, np.uint8), format="rgb24")
            for pkt in vs.encode(frame):
                c.mux(pkt)
        t = np.arange(int(seconds * rate)) / rate
        sig = (0.3 * np.sin(2 * np.pi * (150 + 50 * np.sin(t)) * t) + 0.05 * rng.normal(size=t.size)).astype(
            np.float32
        )
        pts = 0
        for a in range(0, sig.size, 1024):
            chunk = sig[a : a + 1024][None]
            af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            af.sample_rate, af.pts = rate, pts
            pts += chunk.shape[1]
            for pkt in aus.encode(af):
                c.mux(pkt)
        for s in (vs, aus):
            for pkt in s.encode():
                c.mux(pkt)
    return np.arange(n_video) / fps


def audio_rtf(seconds: float = 20.0) -> dict:
    try:
        from abaw.features import audio
    except ImportError as e:
        return {"skipped": f"abaw.features.audio not importable ({e})"}
    from abaw.config import load_config

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "talk.mp4"
        times = _test_video(video, seconds)
        for name in audio.AUDIO_PRESETS:
            cfg = load_config(
                "configs/demo.yaml", [f"features.audio.preset={name}", "features.audio.allow_random=true"]
            )
            try:
                ext = audio.AudioExtractor(cfg.features.audio, "cpu")
            except Exception as e:  # a preset that cannot be built here is reported, not fatal
                out[name] = f"not built: {type(e).__name__}: {e}"
                continue
            ext.embed_video(video, times[:30])  # warm-up
            t = time.perf_counter()
            feats, mask = ext.embed_video(video, times)
            dt = time.perf_counter() - t
            out[name] = dict(dim=int(feats.shape[1]), seconds=round(dt, 2), rtf=round(dt / seconds, 4))
    return out


def main() -> None:
    import torch

    frames = int(os.environ.get("BENCH_FRAMES", "1536"))
    print(f"cpu cores {os.cpu_count()}, torch {torch.__version__}; resnet18 preset at 112 px, random weights")
    for threads, workers in ((1, 1), (2, 1), (1, 0)):
        r = visual_efficiency(frames, threads, workers)
        print(
            f"visual  threads={threads} workers={workers} batch={r['batch']}: forward-only {r['forward_fps']} fps "
            f"(spread {r['forward_spread']:.0%}), extraction {r['extraction_fps']} fps "
            f"({r['extraction_fps_with_setup']} with model load) -> efficiency {r['efficiency']:.2f} (target >= 0.8)",
            flush=True,
        )
    m = memory()
    print(
        f"memory  peak RSS {m['short']['peak_rss_mb']:.0f} MiB ({m['short']['n_frames']} frames) vs "
        f"{m['long']['peak_rss_mb']:.0f} MiB ({m['long']['n_frames']} frames) -> ratio {m['rss_ratio']:.2f} "
        "(target <= 1.5)",
        flush=True,
    )
    for name, r in audio_rtf().items():
        print(f"audio   {name}: {r}", flush=True)


if __name__ == "__main__":
    main()
