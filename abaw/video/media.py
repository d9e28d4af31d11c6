"""Reading any video PyAV opens: its probe (frame clock, audio) and its frames in presentation order.

Frame i's time is its own ``pts * time_base`` on the container timeline (the clock the features stage
aligns audio to, see ``abaw.data.probe``), so variable frame rates and late-starting video streams need
nothing special. A frame without a pts takes the probe's time for its position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abaw.video.errors import VideoError


@dataclass(frozen=True)
class Clip:
    path: Path
    width: int
    height: int
    fps: float
    vfr: bool
    has_audio: bool
    probe: object  # abaw.data.probe.VideoProbe


def open_clip(path: str | Path) -> Clip:
    """Probe ``path``; ``VideoError`` naming the file when it cannot be read as a video."""
    from abaw.data.probe import ProbeError, probe_video

    path = Path(path).expanduser()
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        probe = probe_video(path)
    except ProbeError as e:
        raise VideoError(str(e)) from e
    return Clip(path, probe.width, probe.height, float(probe.fps), bool(probe.vfr), bool(probe.has_audio),
                probe)


def frames(clip: Clip) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, time s, RGB uint8 [H, W, 3]) for every decoded frame; ``VideoError`` when decoding
    breaks off."""
    import av

    pt = clip.probe.frame_times
    step = clip.probe.frame_duration
    i = -1
    try:
        with av.open(str(clip.path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            for i, f in enumerate(c.decode(stream)):
                if f.pts is not None and f.time_base is not None:
                    t = float(f.pts * f.time_base)
                else:
                    t = float(pt[i]) if i < len(pt) else float(pt[-1] + (i - len(pt) + 1) * step)
                yield i, t, f.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        raise VideoError(f"{clip.path}: decoding failed after {i + 1} frames: {e}") from e


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples, rate) of any audio file PyAV reads."""
    import av

    with av.open(str(path)) as c:
        rate = c.streams.audio[0].codec_context.sample_rate
        chunks = [f.to_ndarray().astype(np.float32).reshape(f.to_ndarray().shape[0], -1).mean(0)
                  if not f.format.is_packed else f.to_ndarray().astype(np.float32).reshape(-1)
                  for f in c.decode(audio=0)]
    x = np.concatenate(chunks)
    if np.abs(x).max(initial=0) > 1.5:  # integer samples
        x = x / 32768.0
    return x.astype(np.float32), int(rate)


def write_clip(path: str | Path, images, times: np.ndarray, audio: np.ndarray | None = None,
               audio_rate: int = 16000, container: str | None = None) -> Path:
    """Write RGB frames at their own ``times`` (s; any spacing, so variable frame rates too) and an optional
    mono track starting at 0 into mp4/mkv/avi/mov/webm (by suffix). For tests, benches and demos."""
    from fractions import Fraction

    import av

    path = Path(path)
    fmt = container or {".mkv": "matroska", ".webm": "webm", ".avi": "avi", ".mov": "mov"}.get(
        path.suffix.lower(), "mp4")
    vcodec, acodec = {"avi": ("mpeg4", "pcm_s16le"), "webm": ("libvpx", "libopus")}.get(fmt, ("libx264", "aac"))
    images = list(images)
    h, w = images[0].shape[:2]
    tb = Fraction(1, 1000) if fmt in ("matroska", "webm") else Fraction(1, 90000)
    steps = np.diff(times) if len(times) > 1 else np.array([1 / 30])
    rate = Fraction(1 / float(np.median(steps))).limit_denominator(1001)
    with av.open(str(path), "w", format=fmt) as c:
        vs = c.add_stream(vcodec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        if fmt != "avi":
            vs.time_base = tb
            vs.codec_context.time_base = tb
        else:
            tb = 1 / rate  # AVI stores one tick per frame: constant rate only
            vs.codec_context.time_base = tb
        a_s = None
        if audio is not None:
            a_s = c.add_stream(acodec, rate=48000 if acodec == "libopus" else audio_rate)
            a_s.layout = "mono"
        last = -1
        for img, t in zip(images, times, strict=True):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[: vs.height, : vs.width]), format="rgb24")
            pts = max(last + 1, int(round(t / tb)))
            vf.pts, vf.time_base, last = pts, tb, pts
            for pkt in vs.encode(vf):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        if a_s is not None:
            sr = a_s.codec_context.sample_rate
            x = audio.astype(np.float32)
            if sr != audio_rate:
                x = np.interp(np.arange(int(len(x) * sr / audio_rate)) / sr, np.arange(len(x)) / audio_rate, x)
            resampler = av.AudioResampler(format=a_s.codec_context.format.name, layout="mono", rate=sr)
            for k in range(0, len(x), 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, k:k + 1024], np.float32),
                                                format="flt", layout="mono")
                af.sample_rate, af.pts, af.time_base = sr, k, Fraction(1, sr)
                for f in resampler.resample(af):
                    for pkt in a_s.encode(f):
                        c.mux(pkt)
            for pkt in a_s.encode(None):
                c.mux(pkt)
    return path
