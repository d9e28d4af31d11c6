"""Decode a video's audio track with PyAV: mono float32 at a target rate, plus the container time of
its first sample, so that sample k sits at ``start + k / rate`` on the clock of the video frames' pts.

Encoder delay (priming), as PyAV 18 / FFmpeg hand it over (measured on files written by PyAV):

- AAC and MP3 in MP4/MOV and MKV: the container records the priming (edit list, ``CodecDelay``). The
  first packet has a negative pts and skip-samples side data or the discard flag, the decoder drops the
  priming, and the first decoded frame's pts is the time of its first real sample: a click written at
  1.000 s decodes at 1.000 s. Nothing to correct.
- AAC and MP3 in AVI: AVI has no such field. The decoded track keeps the priming (1024 samples for AAC,
  1105 for MP3 = LAME's 576 + the decoder's 529) and starts at pts 0. But FFmpeg's muxer (what writes
  nearly every AVI today, including the release's) met a negative first audio pts and shifted *every*
  stream later (``avoid_negative_ts``): the audio by exactly the delay, the video by the delay rounded
  up to whole frames. A click and a flash written together at 1.000 s come back at 1.050 s (audio,
  MP3 at 22.05 kHz) and 1.080 s (video, 25 fps): the container's timestamps are right to within one
  video frame, and removing the delay would make it worse (0.080 s off). Hence the default
  ``codec_delay="container"``. ``"compensate"`` is for AVIs from writers that ignore the delay (the
  audio then starts at pts 0 *and* the video is not shifted): it moves the start back by the codec's
  usual delay whenever the container carries no priming information.
- PCM has no delay.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np

from abaw.errors import AbawError

log = logging.getLogger(__name__)

# Samples of priming a decoder outputs when the container did not say to skip them: MP3 = LAME's
# encoder delay (576) + the MP3 decoder's own delay (529); AAC = the 1024-sample priming of FFmpeg's and
# most AAC-LC encoders (Apple's 2112 only occurs in MP4/MOV, which carry an edit list).
CODEC_DELAY_MODES = ("container", "compensate")
CODEC_DELAY_SAMPLES = {"mp3": 1105, "mp3float": 1105, "aac": 1024, "aac_fixed": 1024}

# A decode with more failed packets than this fraction is refused rather than silently zero-filled.
MAX_BAD_PACKET_FRACTION = 0.05


class AudioDecodeError(RuntimeError, AbawError):
    """The audio of ``video_path`` cannot be decoded; ``reason`` says why."""

    def __init__(self, video_path: str | Path, reason: str):
        self.video_path = str(video_path)
        self.reason = reason
        super().__init__(f"{video_path}: cannot decode audio: {reason}")


class NoAudioStreamError(AudioDecodeError):
    """The video has no audio stream (or one without a single packet)."""


def _to_mono(frame) -> np.ndarray:
    """One decoded frame -> float32 mono, full scale = 1, channels averaged."""
    x = frame.to_ndarray()
    fmt = frame.format
    channels = len(frame.layout.channels)
    if not fmt.is_planar:  # packed formats come back as (1, samples * channels), interleaved
        x = x.reshape(-1, channels).T
    name = fmt.name.rstrip("p")
    if name == "s16":
        x = x.astype(np.float32) / 32768.0
    elif name == "s32":
        x = x.astype(np.float32) / 2147483648.0
    elif name == "u8":
        x = (x.astype(np.float32) - 128.0) / 128.0
    elif name in ("flt", "dbl"):
        x = x.astype(np.float32, copy=False)
    else:  # pragma: no cover - FFmpeg's audio decoders only produce the formats above
        raise ValueError(f"unsupported sample format {fmt.name}")
    return x.mean(axis=0) if channels > 1 else x[0]


def _time(pts, time_base) -> Fraction | None:
    return None if pts is None or time_base is None else pts * Fraction(time_base)


def decode_audio(
    video_path: str | Path, target_rate: int, codec_delay: str = "container"
) -> tuple[np.ndarray, int, float]:
    """Decode the first audio stream of ``video_path``.

    Returns ``(waveform float32[S] mono, target_rate, start_time_s)``: sample k is at container time
    ``start_time_s + k / target_rate`` (the same clock as the video frames' ``pts * time_base``).
    ``codec_delay``: ``"container"`` trusts the container's timestamps (right for FFmpeg-written files,
    see the module notes); ``"compensate"`` also removes the AAC/MP3 encoder delay where the container
    carries no priming information.

    Frames are placed by their timestamps: a jump forward (a lost or undecodable packet) is filled with
    silence, an overlap is dropped. Raises ``NoAudioStreamError`` when there is no audio stream and
    ``AudioDecodeError`` when the audio cannot be decoded.
    """
    import av

    if codec_delay not in CODEC_DELAY_MODES:
        raise ValueError(f"codec_delay must be one of {CODEC_DELAY_MODES}, not {codec_delay!r}")
    path = str(video_path)
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as e:
        raise AudioDecodeError(path, f"cannot open the file ({e})") from e
    with container:
        if not container.streams.audio:
            raise NoAudioStreamError(path, "the file has no audio stream")
        stream = container.streams.audio[0]
        try:
            codec = stream.codec_context.codec.name
        except (AttributeError, av.FFmpegError) as e:  # a codec this FFmpeg build cannot decode
            raise AudioDecodeError(path, f"no decoder for its audio stream ({e})") from e
        chunks: list[np.ndarray] = []
        n = 0  # samples placed so far, at the native rate
        rate = 0
        t0: Fraction | None = None
        first_packet = None
        packets = bad = 0
        last_error = ""
        try:
            for packet in container.demux(stream):
                if packet.size and first_packet is None:
                    first_packet = (
                        _time(packet.pts, packet.time_base),
                        packet.is_discard or packet.has_sidedata("skip_samples"),
                    )
                packets += bool(packet.size)
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:  # one corrupt packet: skip it, the next pts re-places us
                    bad += 1
                    last_error = str(e)
                    continue
                for frame in frames:
                    x = _to_mono(frame)
                    t = _time(frame.pts, frame.time_base)
                    if t0 is None:
                        rate = frame.sample_rate
                        if t is None:  # a frame without pts: fall back to its packet's, else 0
                            t = (
                                first_packet[0]
                                if first_packet and first_packet[0] is not None
                                else Fraction(0)
                            )
                        t0 = t
                    elif frame.sample_rate != rate:
                        raise AudioDecodeError(
                            path,
                            f"the sample rate changes from {rate} to {frame.sample_rate} Hz at {float(t or 0):.3f} s",
                        )
                    elif t is not None:
                        # Trust the running sample count unless the pts disagrees by more than a tick of
                        # the stream clock (MKV rounds pts to 1 ms) and 10 ms.
                        tick = float(frame.time_base) * rate if frame.time_base else 0.0
                        tol = max(1.5 * tick, 0.010 * rate)
                        offset = float((t - t0) * rate) - n
                        if offset > tol:
                            gap = int(round(offset))
                            chunks.append(np.zeros(gap, np.float32))
                            n += gap
                        elif offset < -tol:
                            x = x[int(round(-offset)) :]
                    if len(x):
                        chunks.append(x)
                        n += len(x)
        except av.FFmpegError as e:
            raise AudioDecodeError(path, f"demuxing failed ({e})") from e
        if packets == 0:
            raise NoAudioStreamError(path, "the audio stream has no packets")
        if n == 0 or t0 is None:
            raise AudioDecodeError(
                path, f"none of {packets} audio packets decoded ({last_error or 'no samples'})"
            )
        if bad > MAX_BAD_PACKET_FRACTION * packets:
            raise AudioDecodeError(path, f"{bad} of {packets} audio packets failed to decode ({last_error})")
        if bad:
            log.warning(
                "%s: %d of %d audio packets failed to decode; filled with silence", path, bad, packets
            )

    start = t0
    container_trims = first_packet is not None and (
        first_packet[1] or (first_packet[0] is not None and first_packet[0] < t0)
    )
    if codec_delay == "compensate" and not container_trims and codec in CODEC_DELAY_SAMPLES:
        start = t0 - Fraction(CODEC_DELAY_SAMPLES[codec], rate)

    wave = np.concatenate(chunks)
    chunks.clear()  # a 15-minute 48 kHz track is 170 MB per copy: keep one before resampling
    if rate != target_rate:
        import torch
        import torchaudio.functional as AF

        # torchaudio's sinc resampler is zero-phase: output sample m is at input time m / target_rate,
        # so the start time carries over unchanged.
        wave = AF.resample(torch.from_numpy(wave), rate, target_rate).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32), int(target_rate), float(start)
