"""Pictures and containers for the synthetic release: a cartoon face whose mouth and brows (and, with
``face_cues="shape+colour"``, skin colour) show valence, and real .mp4/.avi files written (and read back)
with PyAV. With ``face_cues="curve"`` valence is geometry only (mouth curvature, brow tilt, eye shape at
constant area), subtler, under a slow head roll, and the mouth opens and closes with a talking rhythm,
whatever the valence: no brightness or colour of the face, nor of its mouth region, follows valence.

The "shape+colour" and "shape" cues are deliberately large and high-contrast, so that crops embedded by
a random-weight ResNet keep them; "curve" is the case for fine-tuning. Arousal is not drawn.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageFilter

CROP = 112  # crop side in pixels, as in Aff-Wild2's cropped_aligned
NOISE_BANK = 8

# libmp3lame's encoder delay (576) plus the mp3 decoder's own delay (529): AVI keeps no edit list, so a
# reader sees every mp3 sample this late. The writer starts the signal this much early to compensate.
MP3_DELAY_SAMPLES = 1105

OCCLUDE, BLUR = 1, 2  # face_uninformative modes


@dataclass(frozen=True)
class Appearance:
    skin: tuple[int, int, int]
    bg_top: tuple[int, int, int]
    bg_bottom: tuple[int, int, int]
    hair: tuple[int, int, int]
    lips: tuple[int, int, int]
    cx: float
    cy: float
    radius: float
    light: float  # left-right lighting slope

    @classmethod
    def random(cls, rng: np.random.Generator) -> Appearance:
        tone = rng.uniform(0.25, 1.0)
        skin = (90 + 150 * tone, 60 + 130 * tone, 45 + 110 * tone)

        def col(lo, hi, tint=255):
            base = rng.integers(lo, hi)
            return tuple(int(np.clip(base + t, 0, 255)) for t in rng.integers(-tint, tint + 1, 3))

        return cls(
            skin=tuple(int(c) for c in skin),
            # Rooms in muted colours: the face, not the wallpaper, should dominate what a network sees.
            bg_top=col(50, 200, 30),
            bg_bottom=col(50, 200, 30),
            hair=col(20, 110, 25),
            # Lips stay clearly lighter than the unhappy mouth's dark gap, so the gap reads as such.
            lips=(int(rng.integers(160, 215)), int(rng.integers(60, 100)), int(rng.integers(70, 110))),
            # Aligned crops are tight: the head fills the frame, as in Aff-Wild2's cropped_aligned.
            cx=float(CROP / 2 + rng.uniform(-3, 3)),
            cy=float(CROP / 2 + rng.uniform(-1, 4)),
            radius=float(rng.uniform(47, 53)),
            light=float(rng.uniform(-0.25, 0.25)),
        )


PAD = 4  # the head sways by up to this many pixels
MOUTH_HALF_WIDTH = 0.48  # in head radii
MOUTH_BEND = 0.36  # vertical bend of the mouth at |valence| = 1, in head radii
# Skin colour shift per unit of valence (RGB): flushed when happy, pale and bluish when unhappy. Shape
# cues alone barely survive a random-weight backbone across subjects; a colour shift over the whole face
# does (leave-one-subject-out ridge on random ResNet-18 features: CCC ~0.25 without, ~0.8 with).
BLUSH = (28, -8, -8)
PALLOR = (10, -4, -14)
# What the face carries (``synth.face_cues``): "shape+colour" adds the skin shift above; "shape" drops it
# but its mouth still opens with |valence|, white teeth when happy and a dark gap when unhappy (a large
# brightness pattern: frozen random features still reach visual-only CCC_v ~0.9 on it); "curve" is
# geometry only -- mouth corners up/down about a fixed mean height, brow tilt, eye shape at constant area --
# with the opening driven by speech (``mouth_opening``), the case where a frozen random backbone fails
# and fine-tuning must help.
# "wild" is "curve" as a face in the wild shows it: smaller still (corners ~3 px), on a head that turns,
# tilts, nears and leaves the camera and blinks, under light that moves (``pose_track``) -- all of it
# independent of valence, all of it what aligned Aff-Wild2 crops keep of real footage.
FACE_CUES = ("shape+colour", "shape", "curve", "wild")
# "curve" is subtler than the cartoon levels, as real expressions are: the mouth corners move by
# CURVE_BEND * 2/3 head radii (~5 px in a 112 px crop) at |valence| = 1, the brows tilt half as much,
# and the head rolls slowly (HEAD_ROLL degrees, independent of valence), so no fixed edge orientation
# stands for valence.
CURVE_BEND = 0.16
CURVE_BROW = 0.3
EYE_SQUINT = 0.2  # eye half-width grows by this fraction per unit of valence, half-height shrinks (area fixed)
HEAD_ROLL = 8.0
MAX_OPENING = 0.16  # mouth opening while speaking, in head radii
# "wild": the geometric cues at 60 % of "curve", and the pose, scale, light and blinks of ``pose_track``.
WILD_CUE = 0.6
WILD_YAW = 0.12  # inner-face shift when the head turns, head radii
WILD_ROLL = 10.0  # degrees
WILD_SCALE = 0.08  # relative change of the face's size in the crop (residual of the alignment)
WILD_SHIFT = 3.0  # pixels of slow drift of the face in the crop
WILD_LIGHT = 0.35  # brightness slope across the crop, per crop width, left-right and top-bottom
WILD_GAIN = 0.12  # slow change of exposure


def mouth_opening(seed: int, t: np.ndarray) -> np.ndarray:
    """float32 [len(t)]: how far the mouth is open (head radii) at container times ``t`` for one person:
    syllable-rate opening and closing (3-6 Hz) in talk spurts of a few seconds, a deterministic function
    of (seed, t) so that frames rendered in separate blocks join up. It knows nothing of valence."""
    rng = np.random.default_rng([int(seed), 31])
    t = np.asarray(t, np.float64)
    f = rng.uniform(3, 6, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    syl = np.maximum(0, np.sin(2 * np.pi * f[:, None] * t[None] + ph[:, None]).mean(0) * 1.4)
    f_talk, ph_talk = rng.uniform(0.1, 0.3), rng.uniform(0, 2 * np.pi)
    talking = np.clip(np.sin(2 * np.pi * f_talk * t + ph_talk) * 2 + 0.8, 0, 1)
    return (np.clip(syl, 0, 1) * talking * MAX_OPENING).astype(np.float32)


def head_roll(seed: int, t: np.ndarray) -> np.ndarray:
    """float32 [len(t)]: in-plane head rotation (degrees, within +-HEAD_ROLL) at times ``t`` for one
    person: a slow sway, a deterministic function of (seed, t), independent of valence."""
    rng = np.random.default_rng([int(seed), 37])
    t = np.asarray(t, np.float64)
    f, ph = rng.uniform(0.05, 0.4, 3), rng.uniform(0, 2 * np.pi, 3)
    return (HEAD_ROLL * np.sin(2 * np.pi * f[:, None] * t[None] + ph[:, None]).mean(0) * 1.2).clip(
        -HEAD_ROLL, HEAD_ROLL
    ).astype(np.float32)


def _sway(rng: np.random.Generator, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A slow sway in [-1, 1]: three sinusoids of frequencies in [lo, hi] Hz with random phases."""
    f, ph = rng.uniform(lo, hi, 3), rng.uniform(0, 2 * np.pi, 3)
    return np.clip(np.sin(2 * np.pi * f[:, None] * t[None] + ph[:, None]).mean(0) * 1.2, -1, 1)


def pose_track(seed: int, t: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame at container times ``t`` for one person under "wild" (each a float32 [len(t)], a
    deterministic function of (seed, t), independent of valence): ``yaw`` (inner-face shift, head radii),
    ``roll`` (degrees), ``scale``, ``tx``/``ty`` (pixels), ``light_x``/``light_y`` (brightness slopes),
    ``gain`` and ``blink`` (1 while the eyes are shut: about 0.15 s every 2-6 s)."""
    rng = np.random.default_rng([int(seed), 41])
    t = np.asarray(t, np.float64)
    track = {
        "yaw": WILD_YAW * _sway(rng, t, 0.05, 0.5),
        "roll": WILD_ROLL * _sway(rng, t, 0.05, 0.4),
        "scale": 1 + WILD_SCALE * _sway(rng, t, 0.02, 0.2),
        "tx": WILD_SHIFT * _sway(rng, t, 0.05, 0.5),
        "ty": WILD_SHIFT * _sway(rng, t, 0.05, 0.5),
        "light_x": WILD_LIGHT * _sway(rng, t, 0.01, 0.1),
        "light_y": WILD_LIGHT * _sway(rng, t, 0.01, 0.1),
        "gain": 1 + WILD_GAIN * _sway(rng, t, 0.01, 0.1),
    }
    rate, phase = rng.uniform(1 / 6, 1 / 2), rng.uniform()
    track["blink"] = ((t * rate + phase) % 1 < 0.15 * rate).astype(np.float64)
    return {k: v.astype(np.float32) for k, v in track.items()}


def skin_tint(valence: np.ndarray, face_cues: str) -> np.ndarray:
    """float32 [n, 1, 1, 3]: the RGB shift added to every skin pixel of each frame (zeros for "shape")."""
    if face_cues not in FACE_CUES:
        raise ValueError(f"face_cues {face_cues!r} is not one of {FACE_CUES}")
    v = valence.astype(np.float32).reshape(-1, 1, 1, 1)
    if face_cues != "shape+colour":
        return np.zeros((len(v), 1, 1, 3), np.float32)
    return np.maximum(v, 0) * np.float32(BLUSH) + np.maximum(-v, 0) * np.float32(PALLOR)


EYE = (25, 20, 20)
GAP = (55, 15, 20)  # the dark inside of an open mouth


def _canvas(
    app: Appearance, eyes: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(background, static face, u, w, skin): float32 canvases (CROP + 2 PAD square) of what does not
    change from frame to frame (eyes too unless not ``eyes``), the face coordinates (units of the head
    radius) of every canvas pixel and the skin mask."""
    S = CROP + 2 * PAD
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    g = (yy / S)[..., None]
    bg = np.array(app.bg_top, np.float32) * (1 - g) + np.array(app.bg_bottom, np.float32) * g
    u = (xx - PAD - app.cx) / app.radius
    w = (yy - PAD - app.cy) / app.radius
    face = bg.copy()
    au = np.abs(u)
    skin = (u / 0.82) ** 2 + (w / 1.02) ** 2 < 1
    face[skin] = app.skin
    face[((u / 0.9) ** 2 + ((w + 0.08) / 1.06) ** 2 < 1) & (w < -0.6)] = app.hair
    if eyes:
        face[(au - 0.34) ** 2 + (w + 0.18) ** 2 < 0.11**2] = EYE
    skin &= np.all(face == np.array(app.skin, np.float32), axis=-1)
    return bg, face, u, w, skin


def render_faces(
    app: Appearance,
    valence: np.ndarray,
    present: np.ndarray,
    mode: np.ndarray,
    rng: np.random.Generator,
    face_cues: str = "shape+colour",
    opening: np.ndarray | None = None,
    roll: np.ndarray | None = None,
    pose: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """uint8 [n, CROP, CROP, 3]: one face per frame showing ``valence``; background only where not
    ``present``; ``mode`` OCCLUDE/BLUR hides the face; ``face_cues`` (FACE_CUES) says what of the face
    shows valence. ``opening`` (head radii per frame, e.g. ``mouth_opening``; closed when None) is how
    far the mouth is open under "curve", ``roll`` (degrees per frame, e.g. ``head_roll``; upright when
None) how far the head is rotated in the crop under "curve"; ``pose`` (``pose_track``) moves the head,
the light and the eyelids under "wild" (required there). Deterministic for a given ``rng`` state.

    Head and hair (and eyes, except under "curve") are a static canvas; brows and mouth are drawn per
    frame (in the window that holds them), then each frame is cut from the canvas at its own small
    offset (head sway).
    """
    n = len(valence)
    S = CROP
    wild = face_cues == "wild"
    curve = face_cues in ("curve", "wild")  # "wild" draws the "curve" face, smaller, under ``pose``
    cue = WILD_CUE if wild else 1.0
    if wild and pose is None:
        raise ValueError("face_cues='wild' needs the per-frame pose (pose_track)")
    if opening is None:
        opening = np.zeros(n, np.float32)
    bg, face, u, w, skin = _canvas(app, eyes=not curve)
    # Rows and columns that can hold a brow or the mouth, whatever the valence.
    rows = np.flatnonzero((w[:, 0] > -0.75) & (w[:, 0] < 0.95))
    cols = np.flatnonzero(np.abs(u[0]) < 0.6)
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    uw, ww = u[r0:r1, c0:c1][None], w[r0:r1, c0:c1][None]
    cu = uw / MOUTH_HALF_WIDTH
    in_mouth = np.abs(cu) < 1
    occluder = (np.abs(u) < 0.95) & (w > -0.7) & (w < 0.95)

    shade = (1.0 + app.light * (np.arange(S, dtype=np.float32) - S / 2) / S)[None, None, :, None]
    noise = rng.normal(0, 5, (NOISE_BANK, S, S, 3)).astype(np.float32)
    dx = np.clip(np.round(rng.normal(0, 1.5, n)), -PAD, PAD).astype(int)
    dy = np.clip(np.round(rng.normal(0, 1.5, n)), -PAD, PAD).astype(int)
    gain = (1 + rng.normal(0, 0.04, n)).astype(np.float32)
    pick = rng.integers(NOISE_BANK, size=n)
    occ_col = np.array(rng.integers(40, 200, 3), np.float32)
    out = np.empty((n, S, S, 3), np.uint8)
    for c_start in range(0, n, 64):
        idx = np.arange(c_start, min(n, c_start + 64))
        v = valence[idx].astype(np.float32)[:, None, None]
        canvas = np.where(present[idx][:, None, None, None], face[None], bg[None])
        tint = skin_tint(valence[idx], face_cues)
        canvas += (skin[None, ..., None] & present[idx][:, None, None, None]) * tint
        win = canvas[:, r0:r1, c0:c1]
        shown = present[idx][:, None, None]
        # Brows: negative valence pulls the inner ends down (frown), positive lifts them.
        # A turned head ("wild") moves brows, eyes and mouth sideways within the face outline.
        fu = uw - pose["yaw"][idx][:, None, None] if wild else uw
        afu = np.abs(fu)
        brow_w = -0.45 - 0.10 * cue * v + (CURVE_BROW if curve else 0.6) * cue * v * (afu - 0.35)
        win[shown & (afu > 0.14) & (afu < 0.56) & (np.abs(ww - brow_w) < 0.06)] = (35, 25, 20)
        if curve:
            blink = pose["blink"][idx] if wild else None
            _curve_mouth_and_eyes(win, shown, fu, ww, cue * v, opening[idx], app.lips, blink)
        else:
            # Mouth: ~R wide (over a third of the crop); the corners rise and the centre drops with
            # valence, and the opening shows teeth when happy, a dark gap when unhappy.
            w0 = 0.50 - MOUTH_BEND / 3 * v
            wc = w0 + MOUTH_BEND * v * (1 - cu**2)
            inside = shown & in_mouth
            gap = inside & (ww > np.minimum(w0, wc)) & (ww < np.maximum(w0, wc))
            happy = v > 0
            win[gap & happy] = (240, 238, 228)
            win[gap & ~happy] = GAP
            win[inside & ((np.abs(ww - wc) < 0.07) | (np.abs(ww - w0) < 0.03))] = app.lips
        for j in np.flatnonzero(present[idx] & (mode[idx] == OCCLUDE)):
            canvas[j][occluder] = occ_col
        crops = np.stack(
            [
                canvas[j, PAD + dy[i] : PAD + dy[i] + S, PAD + dx[i] : PAD + dx[i] + S]
                for j, i in enumerate(idx)
            ]
        )
        if wild:  # residual roll, scale and drift of the alignment; black beyond
            for j, i in enumerate(idx):
                if present[i]:
                    crops[j] = _affine(crops[j], pose["roll"][i], pose["scale"][i], pose["tx"][i], pose["ty"][i])
        elif curve and roll is not None:  # aligned crops keep a residual roll; black beyond the frame
            for j, i in enumerate(idx):
                if present[i] and roll[i]:
                    img = Image.fromarray(np.clip(crops[j], 0, 255).astype(np.uint8))
                    crops[j] = np.asarray(img.rotate(float(roll[i]), Image.BILINEAR), np.float32)
        if wild:  # light that moves over the face, and the camera's exposure
            ramp = (np.arange(S, dtype=np.float32) - S / 2) / S
            lit = (1 + pose["light_x"][idx][:, None, None] * ramp[None, None, :]
                   + pose["light_y"][idx][:, None, None] * ramp[None, :, None]) * pose["gain"][idx][:, None, None]
            crops *= lit[..., None]
        crops *= shade * gain[idx][:, None, None, None]
        crops += noise[pick[idx]]
        out[idx] = np.clip(crops, 0, 255).astype(np.uint8)
    for i in np.flatnonzero((mode == BLUR) & present):
        out[i] = np.asarray(Image.fromarray(out[i]).filter(ImageFilter.GaussianBlur(8)))
    return out


def _affine(crop: np.ndarray, roll: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """``crop`` rotated by ``roll`` degrees and scaled by ``scale`` about its centre, then moved by
    (tx, ty) pixels; black where nothing maps (as in aligned crops of a face near the frame's edge)."""
    S = crop.shape[0]
    a = np.deg2rad(roll)
    # PIL maps output pixels to input ones: the inverse of rotate-scale-translate about the centre.
    c, s_ = np.cos(a) / scale, np.sin(a) / scale
    cx = cy = S / 2
    ox, oy = cx + tx, cy + ty
    coeffs = (c, s_, cx - c * ox - s_ * oy, -s_, c, cy + s_ * ox - c * oy)
    img = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8))
    return np.asarray(img.transform((S, S), Image.AFFINE, coeffs, Image.BILINEAR), np.float32)


def _curve_mouth_and_eyes(win, shown, uw, ww, v, opening, lips, blink=None) -> None:
    """Draw the "curve" mouth and eyes into ``win`` (frames x window rows x cols x 3) in place.

    Every mark keeps its pixel count whatever the valence, so only geometry follows it: the mouth's
    centre line bends (corners up when happy, down when unhappy) about a mean height that does not move,
    each lip has a fixed vertical thickness, the dark gap between them is ``opening`` tall (tapering to
    the corners) and the eyes are ellipses of fixed area, wider and flatter when happy.
    """
    cu = uw / MOUTH_HALF_WIDTH
    inside = shown & (np.abs(cu) < 1)
    wc = 0.50 + CURVE_BEND * v * (1 / 3 - cu**2)  # mean over the mouth's width: 0.50 at any valence
    half = (np.asarray(opening, np.float32)[:, None, None] / 2) * np.sqrt(np.clip(1 - cu**2, 0, 1))
    win[inside & (np.abs(ww - wc) < half)] = GAP
    win[inside & (np.abs(np.abs(ww - wc) - half - 0.035) < 0.035)] = lips
    s = 1 + EYE_SQUINT * v
    # Shut eyes (``blink``) are a thin line whatever the valence.
    shut = 1.0 if blink is None else np.where(np.asarray(blink)[:, None, None] > 0, 0.2, 1.0)
    eye = ((np.abs(uw) - 0.34) / (0.11 * s)) ** 2 + ((ww + 0.18) / (0.11 / s * shut)) ** 2 < 1
    win[shown & eye] = EYE


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ---- containers -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamPlan:
    """How one raw video file is encoded."""

    container: str  # "mp4" | "avi"
    vcodec: str  # libx264 | mpeg4 | mjpeg
    acodec: str | None  # aac | libmp3lame | pcm_s16le | None (no audio track)
    audio_rate: int
    width: int
    height: int
    time_base: Fraction  # of the video stream; frame pts are integers in it
    x264_preset: str = "ultrafast"


def write_container(
    path: Path,
    plan: StreamPlan,
    frames,
    pts: np.ndarray,
    audio: np.ndarray | None,
    rate_hint: Fraction,
) -> None:
    """Write ``frames`` (iterable of uint8 [H, W, 3]) at integer ``pts`` (in plan.time_base) and mono
    ``audio`` (float, sample k at time k / audio_rate, already shifted for codec delay) interleaved by
    time, so demuxers see a normally interleaved file."""
    c = av.open(str(path), "w", format=plan.container)
    try:
        vs = c.add_stream(plan.vcodec, rate=rate_hint)
        vs.width, vs.height = plan.width, plan.height
        vs.pix_fmt = "yuvj420p" if plan.vcodec == "mjpeg" else "yuv420p"
        vs.time_base = plan.time_base
        vs.codec_context.time_base = plan.time_base
        if plan.vcodec == "libx264":
            vs.options = {"preset": plan.x264_preset, "threads": "1"}
        else:
            vs.options = {"qscale": "4", "threads": "1"}
        a_s = None
        if audio is not None:
            a_s = c.add_stream(plan.acodec, rate=plan.audio_rate)
            a_s.layout = "mono"
            a_s.time_base = Fraction(1, plan.audio_rate)
        chunk = 1024
        # libmp3lame stamps its first packets with negative dts (encoder delay); AVI cannot store that,
        # and FFmpeg's AVI demuxer then miscounts the first video chunk when an audio chunk precedes it
        # (video pts 0, 2, 3, ...). Stamping the audio late keeps video first in the file; AVI has no
        # audio start time anyway, so readers still see the audio start at 0.
        a_pts0 = 1152 if (plan.container == "avi" and plan.acodec == "libmp3lame") else 0
        n_audio = 0 if audio is None else len(audio)
        a_pos = 0
        sr = plan.audio_rate
        for img, p in zip(frames, pts, strict=True):
            t = float(p * plan.time_base)
            while a_s is not None and a_pos < n_audio and a_pos / sr <= t:
                a_pos = _encode_audio(c, a_s, audio, a_pos, chunk, a_pts0)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = int(p)
            vf.time_base = plan.time_base
            for pkt in vs.encode(vf):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        while a_s is not None and a_pos < n_audio:
            a_pos = _encode_audio(c, a_s, audio, a_pos, chunk, a_pts0)
        if a_s is not None:
            for pkt in a_s.encode():
                c.mux(pkt)
    finally:
        c.close()


def _encode_audio(c, stream, audio: np.ndarray, pos: int, chunk: int, pts0: int) -> int:
    x = audio[pos : pos + chunk].astype(np.float32)[None, :]
    af = av.AudioFrame.from_ndarray(np.ascontiguousarray(x), format="flt", layout="mono")
    af.sample_rate = stream.codec_context.sample_rate
    af.pts = pts0 + pos
    af.time_base = Fraction(1, af.sample_rate)
    for pkt in stream.encode(af):
        c.mux(pkt)
    return pos + x.shape[1]


# ---- reading back (the generator checks its own files; tests use these too) -----------------------
def demux_frame_times(path: Path) -> np.ndarray:
    """Presentation times (s) of the video packets, sorted: what a decoder will stamp on the frames."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        ts = [p.pts * vs.time_base for p in c.demux(vs) if p.pts is not None and p.size > 0]
    return np.array(sorted(float(t) for t in ts))


def decode_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(times float64 [n], frames uint8 [n, H, W, 3]) decoded with PyAV, frame.pts * time_base."""
    times, imgs = [], []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            times.append(float(f.pts * f.time_base))
            imgs.append(f.to_ndarray(format="rgb24"))
    return np.array(times), np.stack(imgs)


def decode_audio(path: Path) -> tuple[float, int, np.ndarray] | None:
    """(start time s, sample rate, float32 mono samples) from the first audio frame's pts; None when the
    file has no audio stream."""
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        chunks, start, sr = [], None, c.streams.audio[0].codec_context.sample_rate
        for f in c.decode(audio=0):
            if start is None:
                start = float(f.pts * f.time_base)
            x = f.to_ndarray()
            chunks.append(x.reshape(-1) if f.format.is_packed else x[0])
    x = np.concatenate(chunks).astype(np.float32)
    if np.issubdtype(chunks[0].dtype, np.integer):
        x /= 32768.0
    return start, sr, x
