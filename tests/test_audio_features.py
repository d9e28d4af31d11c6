"""Audio backbones: decoding (codec delay, stream offsets), per-frame alignment on real timestamps, the
wav2vec2 family's options and refusals, and the cache settings.

Every video here is written with PyAV in tmp_path from a known signal, so each test compares what the
extractor returns with a direct computation on the original (pre-encoding) signal at the frames' real
container timestamps.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torchaudio

from abaw.features.audio import (
    AUDIO_PRESETS,
    AudioExtractor,
    audio_settings,
    log_mel,
    resolve_audio,
    vggish_mel_matrix,
)
from abaw.features.audio_decode import CODEC_DELAY_SAMPLES, AudioDecodeError, decode_audio
from abaw.features.config import AudioBackboneConfig
from abaw.features.registry import WeightsError


# ---- media ---------------------------------------------------------------------------------------
def write_media(
    path,
    signal: np.ndarray | None,
    rate: int = 44100,
    acodec: str = "aac",
    vcodec: str = "libx264",
    video_pts: np.ndarray | None = None,
    video_tb: Fraction = Fraction(1, 25),
    audio_start: float = 0.0,
    audio_pts_bias: int = 0,
    flash: tuple[int, ...] = (),
    layout: str = "stereo",
):
    """A small video: frames at integer ``video_pts`` (in ``video_tb``; the ``flash`` indices white, the
    rest black) and ``signal`` (sample k at ``audio_start + k / rate``), muxed in time order.
    ``audio_pts_bias`` shifts the audio pts fed to the encoder (a writer that ignores encoder delay)."""
    if video_pts is None:
        video_pts = np.arange(int(3 / video_tb))
    with av.open(str(path), "w") as c:
        vs = c.add_stream(vcodec, rate=min(Fraction(1) / video_tb, Fraction(30)))
        vs.width, vs.height = 32, 32
        vs.pix_fmt = "yuvj420p" if vcodec == "mjpeg" else "yuv420p"
        vs.time_base = video_tb
        vs.codec_context.time_base = video_tb
        if vcodec == "libx264":
            vs.options = {"preset": "ultrafast", "threads": "1"}
        a = None
        if signal is not None:
            a = c.add_stream(acodec, rate=rate)
            a.layout = layout
            a.time_base = Fraction(1, rate)
            size = a.codec_context.frame_size or 1024
            signal = whole_frames(signal)
            assert len(signal) % size == 0
        pos = 0
        a0 = int(round(audio_start * rate))

        def audio_until(t):
            nonlocal pos
            while a is not None and pos < len(signal) and audio_start + pos / rate <= t:
                x = signal[pos : pos + size][None]
                x = np.repeat(x, 2, 0) if layout == "stereo" else x
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x), format="fltp", layout=layout)
                f.sample_rate, f.pts, f.time_base = rate, a0 + pos + audio_pts_bias, Fraction(1, rate)
                c.mux(a.encode(f))
                pos += size

        for i, p in enumerate(video_pts):
            audio_until(float(p * video_tb))
            img = np.full((32, 32, 3), 255 if i in flash else 0, np.uint8)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = int(p), video_tb
            c.mux(vs.encode(vf))
        c.mux(vs.encode(None))
        audio_until(np.inf)
        if a is not None:
            c.mux(a.encode(None))
    return path


def whole_frames(signal: np.ndarray) -> np.ndarray:
    """``signal`` zero-padded to whole encoder frames (1024 AAC/PCM, 576 or 1152 MP3): exactly what
    ``write_media`` encodes."""
    return np.pad(signal, (0, -len(signal) % 9216)).astype(np.float32)


def frame_times(path) -> np.ndarray:
    """The video frames' container times, as the index reads them (packet pts * time_base, sorted)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return np.sort([float(p.pts * v.time_base) for p in c.demux(v) if p.size and not p.is_discard])


def flash_times(path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0) if f.to_ndarray(format="gray").mean() > 128]


def click_times(wave: np.ndarray, rate: int, start: float) -> np.ndarray:
    above = np.abs(wave) > 0.3
    onsets = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    onsets = onsets[np.diff(np.r_[-(10**9), onsets]) > rate // 5]
    return start + onsets / rate


def clicks(rate: int, seconds: float, at: tuple[float, ...]) -> np.ndarray:
    x = np.zeros(int(seconds * rate), np.float32)
    for t in at:
        k = int(round(t * rate))
        x[k : k + rate // 1000] = 0.9  # a 1 ms pulse
    return x


def loudness_steps(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Noise whose level jumps every 40-160 ms: its log-mel statistics depend on where a window sits to
    within a few milliseconds."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    level = np.empty(n, np.float32)
    pos = 0
    while pos < n:
        step = int(rng.uniform(0.04, 0.16) * rate)
        level[pos : pos + step] = 10 ** rng.uniform(-2.0, -0.4)
        pos += step
    x = rng.standard_normal(n).astype(np.float32) * level
    t = np.arange(n) / rate
    x += 0.05 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    return np.clip(x, -0.95, 0.95).astype(np.float32)


def reference_logmel(signal, rate, audio_start, times, window_s, anchor="centre"):
    """Per-frame [mean, std, delta rms] of the original signal's log-mel frames whose centre lies in
    each frame's window: a direct loop, independent of the extractor's window arithmetic."""
    x = torch.from_numpy(signal)
    x16 = torchaudio.functional.resample(x, rate, 16000).numpy() if rate != 16000 else signal
    L = log_mel(x16).astype(np.float64)
    centres = audio_start + (np.arange(len(L)) * 160 + 200) / 16000
    out, mask = np.zeros((len(times), 192)), np.zeros(len(times), bool)
    for i, t in enumerate(times):
        lo, hi = (t - window_s / 2, t + window_s / 2) if anchor == "centre" else (t - window_s, t)
        sel = L[(centres >= lo) & (centres < hi)]
        if len(sel):
            d = np.sqrt((np.diff(sel, axis=0) ** 2).mean(0)) if len(sel) > 1 else np.zeros(64)
            out[i], mask[i] = np.concatenate([sel.mean(0), sel.std(0), d]), True
    return out, mask


@pytest.fixture(autouse=True)
def no_weights_download(monkeypatch):
    """No test here may fetch weights (a hub download fails offline and in CI): the torchaudio bundles
    and torch.hub are cut off at their call sites, beyond conftest's socket guard, so a test that takes
    the ``pretrained`` path fails here, by name, instead of waiting on the network."""
    import torchaudio._internal
    import torchaudio.utils.download

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to download weights: {args[:1]}")

    sites = [(torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
             (torchaudio._internal, "load_state_dict_from_url"), (torchaudio.utils.download, "download_url_to_file")]
    for module, name in sites:
        monkeypatch.setattr(module, name, refuse)
    return refuse, sites


def test_the_hub_path_is_cut_off_in_these_tests(no_weights_download):
    # Checked on the patched call sites themselves: no bundle is asked for, so even a cut-off that
    # missed would not start a download here.
    refuse, sites = no_weights_download
    for module, name in sites:
        assert getattr(module, name) is refuse, f"{module.__name__}.{name}"
        with pytest.raises(AssertionError, match="download weights"):
            getattr(module, name)("https://weights.invalid/model.pth")


def cfg(**kw) -> AudioBackboneConfig:
    return AudioBackboneConfig(**kw)


# ---- front end -----------------------------------------------------------------------------------
def test_mel_matrix_is_vggish_like_and_a_tone_lands_in_its_band():
    m = vggish_mel_matrix(16000, 512, 64, 125.0, 7500.0)
    ta = torchaudio.functional.melscale_fbanks(
        257, 125.0, 7500.0, 64, 16000, norm=None, mel_scale="htk"
    ).numpy()
    # Same bands as torchaudio's HTK filterbank (VGGish draws the triangles in mel, not Hz: near-equal).
    assert np.abs(m.argmax(0) - ta.argmax(0)).max() <= 1
    assert np.corrcoef(m.ravel(), ta.ravel())[0, 1] > 0.98
    assert (m[0] == 0).all()
    t = np.arange(16000) / 16000
    L = log_mel((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    assert L.shape == (1 + (16000 - 400) // 160, 64)
    centre_hz = 700 * (
        np.exp(np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)[1:-1] / 1127) - 1
    )
    assert abs(centre_hz[L.mean(0).argmax()] - 1000) < 60


# ---- decoding: codec delay and stream offsets ----------------------------------------------------
@pytest.mark.parametrize(
    "ext, acodec, rate, layout",
    [
        ("mp4", "aac", 44100, "stereo"),
        ("mp4", "libmp3lame", 48000, "stereo"),
        ("mkv", "aac", 22050, "mono"),
        ("mkv", "libmp3lame", 44100, "stereo"),
        ("avi", "pcm_s16le", 22050, "stereo"),
        ("avi", "pcm_s16le", 48000, "mono"),
    ],
)
def test_decode_places_clicks_at_their_time(tmp_path, ext, acodec, rate, layout):
    sig = clicks(rate, 3.0, (0.5, 1.0, 2.2))
    vcodec = "mpeg4" if ext == "avi" else "libx264"
    path = write_media(tmp_path / f"a.{ext}", sig, rate, acodec, vcodec, flash=(25,), layout=layout)
    wave, r, start = decode_audio(path, 16000)
    assert r == 16000 and wave.dtype == np.float32 and wave.ndim == 1
    assert np.allclose(click_times(wave, r, start), [0.5, 1.0, 2.2], atol=0.005)
    assert flash_times(path) == [1.0]  # the video frame written at 1.0 s is timed at 1.0 s too


def test_mp3_in_avi_follows_the_container_and_compensate_is_for_writers_that_ignore_the_delay(tmp_path):
    rate, delay = 22050, CODEC_DELAY_SAMPLES["mp3"]
    sig = clicks(rate, 3.0, (1.0,))
    # FFmpeg's muxer shifts every stream by the (negative) encoder delay: the container times are right to
    # within one video frame, removing the delay again would put the audio 80 ms off the video.
    muxed = write_media(tmp_path / "ffmpeg.avi", sig, rate, "libmp3lame", "mpeg4", flash=(25,))
    (flash,) = flash_times(muxed)
    (click,) = click_times(*decode_audio(muxed, 16000, "container"))
    (moved,) = click_times(*decode_audio(muxed, 16000, "compensate"))
    assert abs(click - flash) < 0.04 < abs(moved - flash)
    # A writer that stamps the delayed output at pts 0 (no shift anywhere): only "compensate" is right.
    naive = write_media(
        tmp_path / "naive.avi", sig, rate, "libmp3lame", "mpeg4", audio_pts_bias=delay, flash=(25,)
    )
    assert flash_times(naive) == [1.0]
    (click,) = click_times(*decode_audio(naive, 16000, "container"))
    assert click == pytest.approx(1.0 + delay / rate, abs=0.005)
    (click,) = click_times(*decode_audio(naive, 16000, "compensate"))
    assert click == pytest.approx(1.0, abs=0.005)


def test_stream_start_offsets_are_kept(tmp_path):
    rate = 44100
    sig = clicks(rate, 2.0, (0.5,))
    # Audio starts 0.7 s into the container, the video at 0.
    late_audio = write_media(tmp_path / "late_audio.mp4", sig, rate, audio_start=0.7)
    wave, r, start = decode_audio(late_audio, 16000)
    # MP4 presents the AAC priming too when the audio starts late (no negative pts to trim): the track
    # starts up to 1024 samples early, with silence, and its content is where it belongs.
    assert 0.7 - 1024 / rate - 0.002 < start < 0.7 + 0.002
    assert click_times(wave, r, start) == pytest.approx([1.2], abs=0.005)
    # The video starts 0.5 s in (its first pts), the audio at 0.
    late_video = write_media(tmp_path / "late_video.mp4", sig, rate, video_pts=np.arange(12, 75))
    assert frame_times(late_video)[0] == pytest.approx(0.48)
    wave, r, start = decode_audio(late_video, 16000)
    assert start == pytest.approx(0.0, abs=0.002)
    assert click_times(wave, r, start) == pytest.approx([0.5], abs=0.005)


# ---- alignment: embed_video == direct computation at the frames' real timestamps ------------------
ALIGN_CASES = {
    # name: (ext, acodec, rate, vcodec, video_tb, video_pts (None: irregular), audio_start, window_s)
    "aac_mp4_30fps": ("mp4", "aac", 44100, "libx264", Fraction(1, 30), np.arange(90), 0.0, 0.96),
    "aac_mp4_2997fps": ("mp4", "aac", 48000, "libx264", Fraction(1001, 30000), np.arange(3, 88), 0.0, 0.25),
    "aac_mp4_irregular": ("mp4", "aac", 44100, "libx264", Fraction(1, 1000), None, 0.0, 0.25),
    "aac_mp4_video_starts_late": (
        "mp4",
        "aac",
        44100,
        "libx264",
        Fraction(1, 25),
        np.arange(13, 75),
        0.0,
        0.5,
    ),
    "aac_mp4_audio_starts_late": ("mp4", "aac", 44100, "libx264", Fraction(1, 25), np.arange(75), 0.6, 0.5),
    "mp3_mkv_25fps": ("mkv", "libmp3lame", 44100, "libx264", Fraction(1, 25), np.arange(75), 0.0, 0.25),
    # Lossless audio: the features must match the original signal's exactly.
    "pcm_avi_7fps": ("avi", "pcm_s16le", 22050, "mpeg4", Fraction(1, 7), np.arange(21), 0.0, 0.5),
    "pcm_mkv_irregular_audio_late": (
        "mkv",
        "pcm_s16le",
        48000,
        "libx264",
        Fraction(1, 1000),
        None,
        0.3,
        0.25,
    ),
}


@pytest.mark.parametrize("case", list(ALIGN_CASES))
def test_logmel_follows_each_frames_real_timestamp(tmp_path, case):
    ext, acodec, rate, vcodec, tb, pts, audio_start, window_s = ALIGN_CASES[case]
    if pts is None:  # irregular: frame durations between 15 and 70 ms
        pts = np.cumsum(np.random.default_rng(1).integers(15, 70, 80))
    sig = whole_frames(loudness_steps(rate, 3.2 - audio_start))
    path = write_media(tmp_path / f"v.{ext}", sig, rate, acodec, vcodec, pts, tb, audio_start)
    times = frame_times(path)
    assert len(times) == len(pts) and times == pytest.approx(pts * float(tb), abs=1e-3)
    feats, mask = AudioExtractor(cfg(window_s=window_s)).embed_video(path, times)
    assert feats.shape == (len(times), 192) and feats.dtype == np.float32 and mask.dtype == bool

    ref, ref_mask = reference_logmel(sig, rate, audio_start, times, window_s)
    # Windows that graze either end may gain or lose a 10 ms log-mel frame to codec priming and padding
    # (MP4 presents AAC priming as up to 1024 samples of silence before a late audio start).
    end = audio_start + len(sig) / rate
    inner = ref_mask & (times - window_s / 2 > audio_start + 0.03) & (times + window_s / 2 < end - 0.03)
    assert inner.sum() >= len(times) // 2
    assert mask[inner].all() and not (mask & (times + window_s / 2 < audio_start - 0.03)).any()

    def mismatch(ref):
        # Lossy codecs change each band's gain a little (AAC: about -0.2 above 5 kHz); what alignment
        # decides is how the window means move from frame to frame, so compare those around their mean.
        d = feats[inner, :64] - ref[inner, :64]
        return np.abs(d - d.mean(0)).mean()

    err = mismatch(ref)
    if acodec == "pcm_s16le":
        np.testing.assert_allclose(feats[mask], ref[mask], atol=2e-3)
        np.testing.assert_array_equal(mask, ref_mask)
    else:
        assert err < 0.04 and np.abs(feats[inner] - ref[inner]).mean() < 0.08
    # ... and the agreement is specific to the timestamps: 20 ms either way is clearly worse.
    for dt in (-0.02, 0.02):
        assert mismatch(reference_logmel(sig, rate, audio_start, times + dt, window_s)[0]) > max(
            1.3 * err, 0.01
        )


def test_windows_outside_the_audio_are_masked_and_edges_are_clipped(tmp_path):
    rate = 16000
    sig = whole_frames(loudness_steps(rate, 2.0))
    path = write_media(
        tmp_path / "v.avi", sig, rate, "pcm_s16le", "mpeg4", np.arange(4 * 25), Fraction(1, 25)
    )
    times = np.r_[-1.0, frame_times(path), 5.0]  # the video runs to 4 s, the audio to 2.3 s
    ex = AudioExtractor(cfg(window_s=0.96))
    feats, mask = ex.embed_video(path, times)
    ref, ref_mask = reference_logmel(sig, rate, 0.0, times, 0.96)
    outside = (times + 0.48 <= 0) | (times - 0.48 >= len(sig) / rate)
    assert outside.sum() > 20 and not mask[outside].any() and mask[~outside].all()
    assert (feats[~mask] == 0).all()
    np.testing.assert_array_equal(mask, ref_mask)
    # Clipped windows (t < 0.48 or t > 1.52) average the frames that exist, exactly like the reference.
    np.testing.assert_allclose(feats[mask], ref[mask], atol=2e-3)


def test_anchor_end_is_the_centred_window_half_a_window_earlier():
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(48000) * np.repeat(rng.uniform(0.01, 0.5, 30), 1600)).astype(np.float32)
    t = np.sort(rng.uniform(0.3, 2.5, 40))
    end, m_end = AudioExtractor(cfg(anchor="end", window_s=0.5)).embed_waveform(wave, 0.2, t)
    mid, m_mid = AudioExtractor(cfg(anchor="centre", window_s=0.5)).embed_waveform(wave, 0.2, t - 0.25)
    np.testing.assert_array_equal(m_end, m_mid)
    np.testing.assert_allclose(end, mid, atol=1e-5)


# ---- missing and broken audio --------------------------------------------------------------------
def test_video_without_audio_gives_zeros_and_false_mask(tmp_path):
    path = write_media(tmp_path / "mute.mp4", None)
    times = frame_times(path)
    feats, mask = AudioExtractor(cfg()).embed_video(path, times)
    assert feats.shape == (len(times), 192) and not mask.any() and not feats.any()


def _corrupt_audio_packets(path, every: int = 1) -> None:
    """Overwrite the payload of every ``every``-th audio packet (in place, same sizes)."""
    with av.open(str(path)) as c:
        spans = [(p.pos, p.size) for p in c.demux(c.streams.audio[0]) if p.size and p.pos is not None]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for pos, size in spans[::every]:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_undecodable_audio_raises_naming_the_file(tmp_path):
    path = write_media(tmp_path / "broken.mp4", clicks(44100, 2.0, (1.0,)))
    _corrupt_audio_packets(path)
    with pytest.raises(AudioDecodeError, match="broken.mp4") as e:
        AudioExtractor(cfg()).embed_video(path, frame_times(path))
    assert e.value.video_path == str(path)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(AudioDecodeError, match="junk.mp4"):
        decode_audio(junk, 16000)


def test_a_few_corrupt_packets_are_silenced_without_moving_later_audio(tmp_path, caplog):
    rate = 44100
    sig = whole_frames(clicks(rate, 6.0, (0.5, 5.0)))
    path = write_media(tmp_path / "scratched.mp4", sig, rate)
    with av.open(str(path)) as c:
        spans = [(p.pos, p.size) for p in c.demux(c.streams.audio[0]) if p.size]
    data = bytearray(path.read_bytes())
    pos, size = spans[100]  # one packet around 2.3 s
    data[pos : pos + size] = b"\xff" * size
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        wave, r, start = decode_audio(path, 16000)
    assert click_times(wave, r, start) == pytest.approx([0.5, 5.0], abs=0.005)
    assert len(wave) / r == pytest.approx(len(sig) / rate, abs=0.03)  # the lost packet became silence
    assert "1 of" in caplog.text and "scratched.mp4" in caplog.text


def test_frame_times_must_be_finite(tmp_path):
    path = write_media(tmp_path / "v.mp4", clicks(44100, 1.0, ()))
    with pytest.raises(ValueError, match="v.mp4"):
        AudioExtractor(cfg()).embed_video(path, np.array([0.0, np.nan]))


# ---- wav2vec2 family -----------------------------------------------------------------------------
def test_wav2vec2_refuses_without_weights(tmp_path):
    with pytest.raises(WeightsError, match="allow_random") as e:
        AudioExtractor(cfg(preset="wav2vec2_base"))
    assert "features.audio.weights" in str(e.value) and "pretrained" in str(e.value)
    with pytest.raises(WeightsError, match="does not exist"):
        audio_settings(cfg(preset="wav2vec2_base", weights=str(tmp_path / "missing.pth")))
    with pytest.raises(WeightsError, match="VGGish"):  # refused while resolving, before any model is built
        resolve_audio(cfg(preset="vggish", pretrained=True))
    with pytest.raises(ValueError, match="layer"):
        AudioExtractor(cfg(preset="wav2vec2_base", allow_random=True, layer=12))


@pytest.fixture(scope="module")
def pcm16k(tmp_path_factory):
    """A 16 kHz PCM MKV whose samples survive s16 exactly: decoding returns the original signal."""
    rate = 16000
    sig = whole_frames(np.round(loudness_steps(rate, 2.5, seed=3) * 32768) / 32768)
    path = write_media(
        tmp_path_factory.mktemp("w2v") / "pcm.mkv",
        sig,
        rate,
        "pcm_s16le",
        "libx264",
        np.arange(2, 12) * 5,
        Fraction(1, 25),
        layout="mono",
    )
    return path, sig, frame_times(path)


def w2v(**kw) -> AudioExtractor:
    # Extractors with the same weights share one model (built once per process).
    return AudioExtractor(cfg(preset="wav2vec2_base", allow_random=True, **kw))


def _direct_layer(model, x: np.ndarray, layer: int) -> np.ndarray:
    with torch.inference_mode():
        return model.extract_features(torch.from_numpy(x)[None], num_layers=layer + 1)[0][-1][0].numpy()


def test_wav2vec2_window_context_is_each_window_alone(pcm16k):
    path, sig, times = pcm16k
    times = np.r_[times[::3], 0.1]  # the last window is clipped by the track's start
    ex = w2v(layer=0, context="window")
    feats, mask = ex.embed_video(path, times)
    assert feats.shape == (len(times), 768) and mask.all() and ex.dim == 768
    for i, t in enumerate(times):
        s0 = int(np.ceil((t - 0.48) * 16000 - 1e-6))
        ref = _direct_layer(ex.model, sig[max(0, s0) : s0 + 15360], 0).mean(0)
        np.testing.assert_allclose(feats[i], ref, atol=2e-4, rtol=1e-3)


def test_wav2vec2_track_context_pools_the_frames_of_each_window(pcm16k):
    path, sig, times = pcm16k
    ex = w2v(layer=1, window_s=0.5)
    feats, mask = ex.embed_video(path, times)
    assert mask.all()
    frames = _direct_layer(ex.model, sig, 1)  # the whole track in one pass
    centres = (np.arange(len(frames)) * 320 + 200) / 16000
    for i, t in enumerate(times):
        sel = (centres >= t - 0.25) & (centres < t + 0.25)
        np.testing.assert_allclose(feats[i], frames[sel].mean(0), atol=2e-4, rtol=1e-3)
    # Stitched segments: with a margin covering the whole track every segment sees all of it, so the
    # stitched frames must equal the single pass (this checks the frame bookkeeping, not the model).
    stitched, _ = w2v(layer=1, window_s=0.5, segment_s=1.5, margin_s=10).embed_video(path, times)
    np.testing.assert_allclose(stitched, feats, atol=1e-4, rtol=1e-3)
    # Another layer is another output.
    other, _ = w2v(layer=3, window_s=0.5).embed_video(path, times)
    assert np.abs(other - feats).mean() > 0.05 * np.abs(feats).mean()


def test_wav2vec2_random_weights_are_seeded():
    from abaw.features.audio import _build_model

    ex = w2v()
    again = _build_model(ex.spec, "cpu")  # a fresh build, not the shared one
    for (name, a), (_, b) in zip(ex.model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_wav2vec2_loads_a_weights_file_identified_by_digest(pcm16k, tmp_path, monkeypatch):
    # A small wav2vec2 stands in for the 95 M-parameter base, so the test writes kilobytes, not 380 MB.
    import dataclasses
    import functools

    import abaw.features.audio as audio

    tiny = functools.partial(
        torchaudio.models.wav2vec2_model,
        extractor_mode="group_norm",
        extractor_conv_layer_config=None,
        extractor_conv_bias=False,
        encoder_embed_dim=32,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=2,
        encoder_num_heads=2,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=64,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )
    monkeypatch.setattr(torchaudio.models, "wav2vec2_base", tiny)
    preset = dataclasses.replace(
        AUDIO_PRESETS["wav2vec2_base"],
        dim=32,
        params={**AUDIO_PRESETS["wav2vec2_base"].params, "n_layers": 2},
    )
    monkeypatch.setitem(audio.AUDIO_PRESETS, "wav2vec2_base", preset)
    path, sig, times = pcm16k
    w = tmp_path / "w2v.pth"
    torch.manual_seed(5)
    torch.save(tiny().state_dict(), w)
    ex = AudioExtractor(cfg(preset="wav2vec2_base", weights=str(w)))
    loaded = torch.load(w, weights_only=True)
    assert all(torch.equal(v, loaded[k]) for k, v in ex.model.state_dict().items())
    feats, mask = ex.embed_video(path, times)
    assert feats.shape == (len(times), 32) and mask.all()
    s = audio_settings(cfg(preset="wav2vec2_base", weights=str(w)))
    assert s["weights"] == "file" and len(s["weights_id"]) == 16 and str(w) not in str(s)
    torch.save(tiny().state_dict(), w)  # other weights, other cache key
    assert audio_settings(cfg(preset="wav2vec2_base", weights=str(w)))["weights_id"] != s["weights_id"]
    bad = tmp_path / "bad.pth"
    torch.save({"encoder.nonsense": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pth.*state dict"):
        AudioExtractor(cfg(preset="wav2vec2_base", weights=str(bad)))
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match="text.pth.*not a torch checkpoint"):
        AudioExtractor(cfg(preset="wav2vec2_base", weights=str(tmp_path / "text.pth")))


@pytest.mark.parametrize("preset", sorted(AUDIO_PRESETS))
def test_every_preset_gives_its_dim_per_frame(preset):
    wave = loudness_steps(16000, 1.5, seed=4)
    t = np.array([-2.0, 0.0, 0.7, 1.4, 9.0])
    ex = AudioExtractor(cfg(preset=preset, allow_random=True, layer=0))
    feats, mask = ex.embed_waveform(wave, 0.0, t)
    assert ex.name == preset and ex.dim == AUDIO_PRESETS[preset].dim
    assert feats.shape == (5, ex.dim) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_array_equal(mask, [False, True, True, True, False])
    assert not feats[~mask].any() and feats[mask].std() > 0


def test_vggish_runs_on_each_windows_patch_with_random_weights(pcm16k):
    path, _, times = pcm16k
    ex = AudioExtractor(cfg(preset="vggish", allow_random=True, batch_size=4))
    feats, mask = ex.embed_video(path, np.r_[times, 10.0])
    assert feats.shape == (len(times) + 1, 128) and mask[:-1].all() and not mask[-1]
    assert np.isfinite(feats).all() and feats[:-1].std(0).max() > 0
    with pytest.raises(ValueError, match="0.96"):
        AudioExtractor(cfg(preset="vggish", allow_random=True, window_s=0.5))


# ---- cache settings ------------------------------------------------------------------------------
def test_settings_change_with_everything_that_changes_the_output():
    base = audio_settings(cfg())
    assert base["preset"] == "logmel" and base["dim"] == AUDIO_PRESETS["logmel"].dim == 192
    for change in (
        dict(window_s=0.5),
        dict(anchor="end"),
        dict(codec_delay="compensate"),
        dict(dtype="float32"),
    ):
        assert audio_settings(cfg(**change)) != base, change
    assert audio_settings(cfg(batch_size=3)) == base  # speed, not values
    w = dict(preset="wav2vec2_base", allow_random=True)
    assert audio_settings(cfg(**w, layer=-1)) == audio_settings(cfg(**w, layer=11))
    assert audio_settings(cfg(**w, layer=3)) != audio_settings(cfg(**w))
    assert audio_settings(cfg(**w, context="window")) != audio_settings(cfg(**w))
    with pytest.raises(ValueError, match="unknown preset"):
        audio_settings(cfg(preset="nope"))
    with pytest.raises(ValueError, match="anchor"):
        audio_settings(cfg(anchor="middle"))


# ---- the synthetic release: the voice carries arousal ----------------------------------------------
def test_logmel_energy_tracks_arousal_on_the_synthetic_release(synth_release):
    """The generator voices arousal (louder, higher, brighter). On every single-speaker video with audio
    (MP4/AAC, AVI/MP3 at 10 fps, AVI/PCM, variable frame rate, a video starting 0.5 s after its audio)
    the window's mean log-mel energy must follow the hidden arousal, and half a second of misalignment
    must cost most of that."""
    import json

    from abaw.data.annotations import read_annotations
    from abaw.data.probe import probe_video
    from abaw.synth.generate import ANNOTATIONS, SPLIT_DIRS

    meta = json.loads((synth_release / "ground_truth" / "traps.json").read_text())
    ex = AudioExtractor(cfg())
    r = {shift: [] for shift in (0.0, -0.5, 0.5)}
    checked = set()
    for subject, facts in meta["subjects"].items():
        video = synth_release / facts["video_path"]
        times = probe_video(video).frame_times
        if not facts["has_audio"]:
            feats, mask = ex.embed_video(video, times)
            assert not mask.any() and not feats.any(), subject
            continue
        if subject.endswith(("_left", "_right")):  # two voices in one track
            continue
        labels = (
            synth_release / "ground_truth" / "Test_Set" / f"{subject}.txt"
            if facts["split"] == "test"
            else synth_release / ANNOTATIONS / SPLIT_DIRS[facts["split"]] / f"{subject}.txt"
        )
        ann = read_annotations(labels)
        n = min(len(times), len(ann.values))
        for shift in r:
            feats, mask = ex.embed_video(video, times[:n] + shift)
            ok = mask & ann.valid[:n]
            for s, e, *_ in facts["audio_uninformative_runs"]:  # noise or silence planted there
                ok[s:e] = False
            r[shift].append(np.corrcoef(feats[ok, :64].mean(1), ann.values[:n, 1][ok])[0, 1])
        checked.add((facts["audio_codec"], facts["vfr"], facts["first_video_pts_s"] > 0))
    assert {c for c, *_ in checked} >= {"aac", "mp3", "pcm_s16le"} and len(checked) >= 4
    aligned = np.array(r[0.0])
    assert aligned.min() > 0.4 and aligned.mean() > 0.6, aligned
    for shift in (-0.5, 0.5):
        assert np.mean(r[shift]) < aligned.mean() - 0.2, (shift, r[shift], aligned)
