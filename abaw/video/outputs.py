"""What ``abaw video`` writes: frames.csv, plot.png and the overlay MP4 (face box and a circumplex dot
per frame, with the original audio)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from abaw.utils import atomic_path


def frames_table(times: np.ndarray, pred: np.ndarray, found: np.ndarray, detected: np.ndarray,
                 boxes: np.ndarray, gate_cols: dict[str, np.ndarray]):
    """One row per decoded frame (0-based ``frame``, its container time)."""
    import polars as pl

    n = len(times)
    b = np.where(found[:, None], boxes, np.nan)
    cols = {
        "frame": np.arange(n, dtype=np.int32),
        "time_s": np.round(times, 6),
        "valence": pred[:, 0],
        "arousal": pred[:, 1],
        "face_found": found,
        "face_detected": detected,
        "box_x0": b[:, 0], "box_y0": b[:, 1], "box_x1": b[:, 2], "box_y1": b[:, 3],
    }
    cols.update(gate_cols)
    return pl.DataFrame(cols)


def write_csv(df, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.write_csv(tmp, float_precision=5)
    return path


def audio_envelope(path: Path, times: np.ndarray, window_s: float = 0.05) -> np.ndarray | None:
    """RMS level (dBFS) of the audio around each frame time; None without an audio stream."""
    from abaw.features.audio_decode import AudioDecodeError, decode_audio

    rate = 16000
    try:
        wave, rate, start = decode_audio(path, rate)
    except AudioDecodeError:
        return None
    if len(wave) == 0:
        return None
    c = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    half = int(window_s * rate / 2)
    mid = np.round((times - start) * rate).astype(np.int64)
    lo, hi = np.clip(mid - half, 0, len(wave)), np.clip(mid + half, 0, len(wave))
    power = (c[hi] - c[lo]) / np.maximum(hi - lo, 1)
    return (10 * np.log10(np.maximum(power, 1e-10))).astype(np.float32)


def write_plot(path: Path, times: np.ndarray, pred: np.ndarray, found: np.ndarray,
               envelope: np.ndarray | None, gate_cols: dict[str, np.ndarray], title: str) -> Path:
    """Valence and arousal over time (frames without a face shaded), the audio envelope and the gates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 3 if gate_cols else 2
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.4 * rows + 0.6), sharex=True,
                             gridspec_kw={"height_ratios": [2.2] + [1] * (rows - 1)})
    ax = axes[0]
    ax.plot(times, pred[:, 0], label="valence", color="tab:blue", lw=1.2)
    ax.plot(times, pred[:, 1], label="arousal", color="tab:red", lw=1.2)
    missing = ~found
    if missing.any():
        ax.fill_between(times, -1, 1, where=missing, color="0.85", step="mid", label="no face")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_ylabel("prediction")
    ax.legend(loc="upper right", ncol=3, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax = axes[1]
    if envelope is not None:
        ax.plot(times, envelope, color="0.3", lw=0.8)
        ax.set_ylabel("audio dBFS")
    else:
        ax.text(0.5, 0.5, "no audio stream", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    if gate_cols:
        ax = axes[2]
        for name, g in gate_cols.items():
            ax.plot(times, g, lw=0.9, label=name.removeprefix("gate_"))
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("gates")
        ax.legend(loc="upper right", ncol=4, fontsize=7)
    axes[-1].set_xlabel("time (s, container clock)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# ---- overlay ----------------------------------------------------------------------------------------
def _draw(img: np.ndarray, box: np.ndarray | None, va: np.ndarray, found: bool) -> np.ndarray:
    """Face box and a valence-arousal circumplex (valence right, arousal up) in the top-left corner."""
    out = np.ascontiguousarray(img)
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 240))
    if box is not None and found and np.isfinite(box).all():
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), thick)
    r = max(12, int(min(h, w) * 0.14))
    cx, cy = r + 4, r + 4
    overlay = out.copy()
    cv2.circle(overlay, (cx, cy), r, (255, 255, 255), -1)
    out[:] = cv2.addWeighted(overlay, 0.55, out, 0.45, 0)
    cv2.circle(out, (cx, cy), r, (60, 60, 60), 1)
    cv2.line(out, (cx - r, cy), (cx + r, cy), (120, 120, 120), 1)
    cv2.line(out, (cx, cy - r), (cx, cy + r), (120, 120, 120), 1)
    v, a = (float(np.clip(x, -1, 1)) for x in va)
    colour = (220, 30, 30) if found else (140, 140, 140)
    cv2.circle(out, (int(round(cx + v * r)), int(round(cy - a * r))), max(2, r // 6), colour, -1)
    return out


def write_overlay(path: Path, clip, times: np.ndarray, pred: np.ndarray, boxes: np.ndarray,
                  found: np.ndarray, progress: bool = True) -> Path:
    """H.264 MP4 of the input with the drawings, every frame at its own timestamp, and the original audio
    re-encoded to AAC on the same clock."""
    import av
    from tqdm.auto import tqdm

    from abaw.video.media import frames

    tb = Fraction(1, 90000)
    t0 = float(min(times[0], clip.probe.audio_start if clip.probe.audio_start is not None else times[0]))
    w, h = clip.width - clip.width % 2, clip.height - clip.height % 2
    with atomic_path(path) as tmp:
        out = av.open(str(tmp), "w", format="mp4")
        try:
            vs = out.add_stream("libx264", rate=Fraction(round(clip.fps * 1000), 1000) if clip.fps else 30)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.time_base = tb
            vs.codec_context.time_base = tb
            vs.options = {"preset": "veryfast", "crf": "23"}
            a_in = None
            if clip.has_audio:
                a_in = av.open(str(clip.path))
                ain = a_in.streams.audio[0]
                as_ = out.add_stream("aac", rate=ain.codec_context.sample_rate or 44100)
                as_.layout = "mono" if (ain.codec_context.channels or 1) == 1 else "stereo"
            last = -1
            bar = tqdm(total=len(times), desc="overlay", unit="frame", disable=not progress)
            for i, _, rgb in frames(clip):
                if i >= len(times):
                    break
                img = _draw(rgb[:h, :w], boxes[i], pred[i], bool(found[i]))
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                pts = max(last + 1, int(round((times[i] - t0) / tb)))
                vf.pts, vf.time_base, last = pts, tb, pts
                for pkt in vs.encode(vf):
                    out.mux(pkt)
                bar.update(1)
            bar.close()
            for pkt in vs.encode():
                out.mux(pkt)
            if a_in is not None:
                _copy_audio(a_in, as_, out, t0)
                a_in.close()
        finally:
            out.close()
    return path


def _copy_audio(src, stream, out, t0: float) -> None:
    import av

    rate = stream.codec_context.sample_rate
    resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
    next_pts = None
    for frame in src.decode(audio=0):
        start = float(frame.pts * frame.time_base) - t0 if frame.pts is not None else None
        for f in resampler.resample(frame):
            if next_pts is None:
                next_pts = max(0, int(round((start or 0.0) * rate)))
            f.pts, f.time_base = next_pts, Fraction(1, rate)
            next_pts += f.samples
            for pkt in stream.encode(f):
                out.mux(pkt)
    for f in resampler.resample(None):
        if next_pts is None:
            next_pts = 0
        f.pts, f.time_base = next_pts, Fraction(1, rate)
        next_pts += f.samples
        for pkt in stream.encode(f):
            out.mux(pkt)
    for pkt in stream.encode(None):
        out.mux(pkt)
