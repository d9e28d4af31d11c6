"""Audio real-time factor: seconds of audio per second of ``AudioExtractor.embed_video`` compute, on a
generated MP4 (split out of ``abaw.features.audio``: the extractor knows nothing of benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from abaw.features.audio import AUDIO_PRESETS, AudioExtractor
from abaw.features.audio_decode import decode_audio
from abaw.features.config import AudioBackboneConfig


def write_bench_video(
    path: str | Path, seconds: float = 60.0, fps: float = 30.0, rate: int = 44100
) -> np.ndarray:
    """An MP4 (H.264 + stereo AAC at ``rate``) of amplitude-modulated noise; returns its frame times."""
    import fractions

    import av

    rng = np.random.default_rng(0)
    n = int(seconds * rate)
    env = np.repeat(rng.uniform(0.02, 0.5, int(seconds * 5) + 1), rate // 5)[:n]
    sig = (rng.standard_normal(n) * env).clip(-1, 1).astype(np.float32)
    times = np.arange(int(seconds * fps)) / fps
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=rate)
        a.layout = "stereo"
        pos, step = 0, 1024
        img = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        for i, t in enumerate(times):
            while pos < n and pos / rate <= t:
                f = av.AudioFrame.from_ndarray(
                    np.stack([sig[pos : pos + step]] * 2), format="fltp", layout="stereo"
                )
                f.sample_rate, f.pts, f.time_base = rate, pos, fractions.Fraction(1, rate)
                c.mux(a.encode(f))
                pos += step
            img.pts = i
            c.mux(vs.encode(img))
        c.mux(a.encode(None))
        c.mux(vs.encode(None))
    return times


def bench_audio_rtf(
    presets: tuple[str, ...] = ("logmel", "vggish", "wav2vec2_base"),
    seconds: float = 60.0,
    fps: float = 30.0,
    device: Any = "cpu",
    contexts: tuple[str, ...] = ("track", "window"),
    window_seconds: float = 10.0,
) -> dict[str, dict[str, float]]:
    """Real-time factor (seconds of audio per second of compute) of ``embed_video`` on 44.1 kHz stereo
    AAC in an MP4 at ``fps`` frames per second, decoding and resampling included, random weights.

    wav2vec2-family presets run once per context in ``contexts``: ``track`` on ``seconds`` of audio,
    ``window`` on ``min(seconds, window_seconds)`` (it costs about fps * window_s times more). Prints one
    line per run and returns ``{label: {"rtf", "seconds", "total_s", "decode_s"}}``."""
    import tempfile

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        videos = {}
        for secs in sorted({seconds, min(seconds, window_seconds)}):
            path = Path(tmp) / f"bench_{secs:g}s.mp4"
            videos[secs] = (path, write_bench_video(path, secs, fps))
        decode_audio(videos[min(videos)][0], 16000)  # warm-up: imports and codec set-up are not timed
        for name in presets:
            runs = [("", seconds)]
            if AUDIO_PRESETS[name].kind == "wav2vec2":
                length = {"track": seconds, "window": min(seconds, window_seconds)}
                runs = [(ctx, length[ctx]) for ctx in contexts]
            for ctx, secs in runs:
                path, times = videos[secs]
                t0 = time.perf_counter()
                decode_audio(path, 16000)
                decode_s = time.perf_counter() - t0
                acfg = AudioBackboneConfig(preset=name, allow_random=True, context=ctx or "track")
                ex = AudioExtractor(acfg, device)  # built outside the timing: a one-off cost per run
                t0 = time.perf_counter()
                ex.embed_video(path, times)
                total = time.perf_counter() - t0
                label = f"{name}[{ctx}]" if ctx else name
                results[label] = dict(rtf=secs / total, seconds=secs, total_s=total, decode_s=decode_s)
                print(
                    f"{label:24s} {secs / total:8.2f}x real time  ({total:6.2f} s for {secs:g} s of audio, "
                    f"{len(times)} frames at {fps:g} fps; decode + resample alone {decode_s:.2f} s)",
                    flush=True,
                )
    return results
