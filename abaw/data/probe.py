"""Frame count and per-frame timestamps of a video, read from the container without decoding.

Frame i's time is its packet's ``pts * time_base`` on the container's own timeline: no stream start is
subtracted, so video frames and audio samples (also timed by the container) stay aligned even when the
video stream starts later than the audio. Packets arrive in decode order (B-frames reorder them), so the
presentation times are sorted. Containers whose packets carry no pts (raw elementary streams, some
AVIs) fall back to a full decode, and the probe says so in ``notes``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from abaw.errors import AbawError

# A frame duration further than this (relative) from the median makes the video variable-frame-rate.
# Time bases like 1/1000 s jitter CFR durations by one tick (33/34 ms), which stays far below 10 %.
VFR_TOLERANCE = 0.10


class ProbeError(RuntimeError, AbawError):
    """A video that cannot be opened or has no usable video stream; the message names the file."""


@dataclass(frozen=True)
class VideoProbe:
    path: str
    n_frames: int
    frame_times: np.ndarray  # float64 [n_frames], seconds on the container timeline, ascending
    fps: float  # measured: frames per second over the span of the timestamps
    nominal_fps: float | None  # what the stream header claims
    vfr: bool  # irregular frame durations
    video_start: float  # first frame time (seconds)
    container_start: float  # the container's start time (seconds; 0 when it has none)
    duration: float  # seconds
    width: int
    height: int
    codec: str
    has_audio: bool
    audio_rate: int | None = None
    audio_channels: int | None = None
    audio_start: float | None = None  # first audio timestamp (seconds, container timeline)
    audio_codec: str | None = None
    method: str = "packets"  # "packets" (demuxed) or "decode" (fallback)
    notes: tuple[str, ...] = field(default=())

    @property
    def frame_duration(self) -> float:
        """Median frame duration (seconds): the step used to extrapolate timestamps past the end."""
        if self.n_frames >= 2:
            return float(np.median(np.diff(self.frame_times)))
        return 1.0 / (self.nominal_fps or self.fps or 30.0)

    @property
    def start_offset(self) -> float:
        """How much later than the container's start (its earliest stream, often the audio) the first video
        frame comes. Frame times keep this offset; a reader that assumes frame 0 at the audio's sample 0
        would be off by it."""
        return self.video_start - self.container_start


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ProbeError(f"{path}: cannot open as a video: {e}") from e


def _seconds(ts, time_base: Fraction) -> np.ndarray:
    # pts * num is exact (below 2**53), so one division gives the correctly rounded float(pts * time_base),
    # the same number anyone computing with Fractions gets.
    return np.asarray(ts, dtype=np.float64) * time_base.numerator / time_base.denominator


def probe_video(path: str | os.PathLike) -> VideoProbe:
    """Count frames and read their timestamps by demuxing packets (no decoding)."""
    import av

    path = Path(path)
    notes: list[str] = []
    with _open(path) as c:
        if not c.streams.video:
            raise ProbeError(f"{path}: no video stream")
        v = c.streams.video[0]
        info = _stream_info(c, v)
        # The demuxer then skips other streams' packets instead of reading them for us to drop.
        for other in c.streams:
            if other.index != v.index:
                other.discard = av.stream.Discard.all
        pts: list[int] = []
        missing_pts = False
        try:
            for pkt in c.demux(v):
                # The demuxer ends with an empty flush packet; packets flagged discard (before an edit
                # list's start) are dropped by the decoder too, so they are not frames.
                if pkt.size == 0 or pkt.is_discard:
                    continue
                if pkt.pts is None:
                    missing_pts = True
                    break
                pts.append(pkt.pts)
        except av.error.FFmpegError as e:
            raise ProbeError(f"{path}: reading packets failed after {len(pts)} frames: {e}") from e
        if not missing_pts:
            times = np.sort(_seconds(pts, v.time_base))
            method = "packets"
    if missing_pts:
        notes.append("packets carry no timestamps: frames counted and timed by a full decode")
        times = decode_frame_times(path, notes)
        method = "decode"
    if len(times) == 0:
        raise ProbeError(f"{path}: the video stream has no frames")
    return _finish(path, times, info, method, notes)


def decode_frame_times(path: str | os.PathLike, notes: list[str] | None = None) -> np.ndarray:
    """Decode every frame and return its presentation time (seconds): the slow reference for probing.

    When the decoder stamps no pts either (raw elementary streams), frame i is placed at i / nominal
    rate, and ``notes`` says so.
    """
    import av

    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise ProbeError(f"{path}: no video stream")
        v = c.streams.video[0]
        v.thread_type = "AUTO"
        tb = v.time_base
        raw: list[int | None] = []
        try:
            for frame in c.decode(v):
                raw.append(frame.pts)
        except av.error.FFmpegError as e:
            raise ProbeError(f"{path}: decoding failed after {len(raw)} frames: {e}") from e
        rate = v.average_rate or v.guessed_rate or v.base_rate
    if all(p is not None for p in raw):
        return np.sort(_seconds(raw, tb))
    if notes is not None:
        notes.append(f"no frame timestamps at all: frames placed at the nominal {float(rate or 0):.3f} fps")
    if not rate:
        raise ProbeError(f"{path}: frames carry no timestamps and the stream states no frame rate")
    return np.arange(len(raw), dtype=np.float64) / float(rate)


def _stream_info(c, v) -> dict:
    a = c.streams.audio[0] if c.streams.audio else None
    info = dict(
        nominal_fps=float(v.average_rate or v.guessed_rate or 0) or None,
        container_start=(c.start_time / 1_000_000) if c.start_time is not None else 0.0,
        container_duration=(c.duration / 1_000_000) if c.duration else None,
        width=int(v.codec_context.width or 0),
        height=int(v.codec_context.height or 0),
        codec=v.codec_context.codec.canonical_name,  # "mp3", not the decoder name "mp3float"
        tick=float(v.time_base) if v.time_base else 0.0,
        has_audio=a is not None and bool(a.codec_context.sample_rate),
    )
    if info["has_audio"]:
        cc = a.codec_context
        info.update(
            audio_rate=int(cc.sample_rate),
            audio_channels=int(cc.layout.nb_channels) if cc.layout else None,
            audio_start=float(a.start_time * a.time_base) if a.start_time is not None else None,
            audio_codec=cc.codec.canonical_name,
        )
    return info


def _finish(path: Path, times: np.ndarray, info: dict, method: str, notes: list[str]) -> VideoProbe:
    n = len(times)
    tick = info.pop("tick")
    nominal = info["nominal_fps"]
    vfr = False
    if n >= 2:
        d = np.diff(times)
        span = times[-1] - times[0]
        fps = (n - 1) / span if span > 0 else (nominal or 0.0)
        med = float(np.median(d))
        irregular = np.abs(d - med) > max(VFR_TOLERANCE * med, 1.5 * tick)
        if (d <= 0).any():
            notes.append(f"{int((d <= 0).sum())} duplicate frame timestamp(s)")
        if irregular.any():
            vfr = True
            notes.append(
                f"variable frame rate: frame durations {d.min() * 1e3:.1f}-{d.max() * 1e3:.1f} ms "
                f"(median {med * 1e3:.1f} ms, {int(irregular.sum())} of {n - 1} irregular)"
            )
    else:
        fps = nominal or 0.0
    step = float(np.median(np.diff(times))) if n >= 2 else (1.0 / fps if fps else 0.0)
    end = float(times[-1]) + step
    duration = info.pop("container_duration") or (end - min(float(times[0]), info["container_start"]))
    return VideoProbe(
        path=str(path),
        n_frames=n,
        frame_times=times,
        fps=float(fps),
        vfr=vfr,
        video_start=float(times[0]),
        duration=float(duration),
        method=method,
        notes=tuple(notes),
        **info,
    )
