"""A synthetic Aff-Wild2 VA release: official layout, real media, planted traps and a hidden signal.

``generate(out, seed, scale)`` writes what a user would unpack from the organisers (annotations, aligned
crops, raw .mp4/.avi videos in batch folders, the test list and the sample prediction file) plus
``out/ground_truth/`` (test labels and ``traps.json``), which the pipeline reads only to score.

The signal: each subject's valence and arousal are smooth functions of container time
(:mod:`abaw.data.synth_signal`). Valence is drawn in the face (mouth curve and opening, brow tilt),
arousal is heard in the voice (level, pitch, brightness). Labels are sampled at the frames' presentation
timestamps as PyAV reads them back, so a pipeline that aligns by the container's timestamps recovers
both, and one that trusts names, nominal fps or row indices pays for it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from abaw.data import synth_media as media
from abaw.data.synth_signal import (
    VOICE_RATE,
    Emotion,
    Voice,
    fft_friendly_length,
    resample_exact,
    synth_voice,
)
from abaw.utils import atomic_write_json, file_lock

log = logging.getLogger(__name__)

VERSION = 1
ANNOTATIONS = Path("8th ABAW Annotations") / "VA_Estimation_Challenge"
SPLIT_DIRS = {"train": "Train_Set", "val": "Validation_Set"}
TEST_LIST = "Valence_Arousal_Estimation_Challenge_test_set_release.txt"
SAMPLE_FILE = "CVPR_8th_ABAW_VA_test_set_sample.txt"
MARKER = Path("ground_truth") / "traps.json"  # written last: its presence means the release is complete
BLOCK = 256  # frames rendered at once (bounds memory at any scale)
MP4_TIME_BASE = Fraction(1, 90000)


# ---- the plan: everything random is drawn here, in the parent, from the seed ----------------------
@dataclass
class PersonPlan:
    subject: str
    split: str
    emotion: Emotion
    appearance: media.Appearance
    voice: Voice
    seed: int
    axis_delta: int = 0  # frame-axis length minus decoded frames (label rows, or sample rows for test)
    missing_runs: list[list[int]] = field(default_factory=list)  # no face detected -> no crop file
    unlabelled_runs: list[list[int]] = field(default_factory=list)  # -5 rows
    face_runs: list[list[int]] = field(default_factory=list)  # [start, end, mode]: occluded or blurred
    odd_label: bool = False  # CRLF line endings and a trailing blank line (valid, but unusual)


@dataclass
class VideoPlan:
    stem: str
    relpath: str  # e.g. batch1/118-30-640x480.mp4
    stream: media.StreamPlan
    pts: np.ndarray  # int64 frame pts in stream.time_base
    fps_nominal: float
    fps_in_name: int | None
    vfr: bool
    persons: list[PersonPlan]
    audio_runs: list[list[int]] = field(default_factory=list)  # [start, end, mode] on the frame axis
    seed: int = 0

    @property
    def times(self) -> np.ndarray:
        # (pts * num) / den rounds once, exactly like float(pts * time_base) in a reader.
        tb = self.stream.time_base
        return (self.pts * tb.numerator) / tb.denominator


@dataclass
class Trap:
    kind: str
    subject: str
    detail: str


AUDIO_SILENT, AUDIO_NOISE = 1, 2


def _length_factor(scale: float) -> float:
    # Small scales shorten videos (fast tests); large ones mostly add subjects, lengths grow gently.
    return scale if scale <= 1 else math.sqrt(scale)


class _Planner:
    def __init__(self, seed: int, scale: float):
        self.rng = np.random.default_rng([seed, 7919])
        self.lf = _length_factor(scale)
        self.ids = iter(self.rng.permutation(np.arange(1, 460)).tolist())
        self.traps: list[Trap] = []
        self.videos: list[VideoPlan] = []

    def n_frames(self) -> int:
        return max(80, int(round(self.rng.uniform(500, 1500) * self.lf)))

    def run(self, n: int, at: float, frac: float, lo: int = 5) -> list[int]:
        s = int(at * n)
        return [s, min(n, s + max(lo, int(frac * n)))]

    def person(self, subject: str, split: str, register: str = "any") -> PersonPlan:
        r = self.rng
        return PersonPlan(
            subject=subject,
            split=split,
            emotion=Emotion.random(r),
            appearance=media.Appearance.random(r),
            voice=Voice.random(r, register),
            seed=int(r.integers(2**31)),
        )

    def video(
        self,
        split: str,
        *,
        fps: Fraction,
        name_fps: int | None,
        container: str = "mp4",
        vcodec: str = "libx264",
        acodec: str | None = "aac",
        rate: int = 44100,
        pair: bool = False,
        vfr: bool = False,
        offset_s: float = 0.0,
        plain: bool = False,
        preset: str = "ultrafast",
    ) -> VideoPlan:
        r = self.rng
        vid = next(self.ids)
        nominal = ["640x480", "1280x720", "480x360", "1920x1080", "640x360", "854x480"][int(r.integers(6))]
        stem = f"video{vid}" if plain else f"{vid}-{name_fps}-{nominal}"
        relpath = f"batch{1 + int(r.integers(2))}/{stem}.{container}"
        width, height = (256, 144) if pair else (160, 120)
        n = self.n_frames()
        if container == "avi":
            tb = 1 / fps  # AVI has one constant frame duration: pts count frames
            pts = np.arange(n, dtype=np.int64)
        else:
            tb = MP4_TIME_BASE
            if vfr:
                # Irregular frame durations (about 15-30 fps), as in phone recordings.
                ticks = r.choice([3000, 3000, 3750, 4500, 6000], size=n)
                pts = np.concatenate([[0], np.cumsum(ticks[:-1])]).astype(np.int64)
            else:
                step = 1 / (fps * tb)
                if step.denominator != 1:
                    raise ValueError(f"{fps} fps is not a whole number of {tb} s ticks")
                pts = np.arange(n, dtype=np.int64) * step.numerator
            pts += int(round(offset_s / tb))
        stream = media.StreamPlan(container, vcodec, acodec, rate, width, height, Fraction(tb), preset)
        if pair:
            persons = [self.person(f"{stem}_left", split, "low"), self.person(f"{stem}_right", split, "high")]
        else:
            persons = [self.person(stem, split)]
        times = (pts * tb.numerator) / tb.denominator
        mean_fps = (n - 1) / (times[-1] - times[0])
        v = VideoPlan(stem, relpath, stream, pts, float(mean_fps), name_fps, vfr, persons, seed=int(r.integers(2**31)))
        self.videos.append(v)
        return v

    def trap(self, kind: str, subject: str, detail: str) -> None:
        self.traps.append(Trap(kind, subject, detail))


def plan_release(seed: int, scale: float) -> tuple[list[VideoPlan], list[Trap]]:
    """The release as data: which videos, which subjects, which traps where. Pure function of its args."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    p = _Planner(seed, scale)
    n_of = len

    # -- core videos: every trap kind lives here, so it exists at any scale --------------------------
    pair = p.video("train", fps=Fraction(30), name_fps=30, rate=44100, pair=True)
    left, right = pair.persons
    n = n_of(pair.pts)
    p.trap("left_right", left.subject, f"{left.subject} and {right.subject} share {pair.relpath}")
    p.trap("left_right", right.subject, f"{left.subject} and {right.subject} share {pair.relpath}")
    left.missing_runs.append(p.run(n, 0.45, 0.06))
    p.trap("missing_crops_middle", left.subject, f"no crops for frames {left.missing_runs[-1]}")
    right.odd_label = True
    p.trap("odd_label_file", right.subject, "CRLF line endings and a trailing blank line (valid)")

    low = p.video("train", fps=Fraction(10), name_fps=10, container="avi", vcodec="mpeg4",
                  acodec="libmp3lame", rate=22050)
    s = low.persons[0]
    n = n_of(low.pts)
    p.trap("low_fps", s.subject, "10 fps")
    p.trap("avi_video", s.subject, f"{low.relpath}: mpeg4 video, mp3 audio (encoder delay compensated)")
    s.missing_runs.append([0, max(5, n // 12)])
    p.trap("missing_crops_start", s.subject, f"no crops for frames {s.missing_runs[-1]}")
    s.axis_delta = 2
    p.trap("label_rows_more", s.subject, f"label rows = decoded frames + 2 ({n + 2} vs {n})")

    vfr = p.video("train", fps=Fraction(24), name_fps=24, rate=48000, vfr=True, preset="veryfast")
    s = vfr.persons[0]
    n = n_of(vfr.pts)
    p.trap("variable_frame_rate", s.subject, f"{vfr.relpath}: irregular pts, mean {vfr.fps_nominal:.2f} fps, B-frames")
    s.unlabelled_runs.append(p.run(n, 0.3, 0.08))
    p.trap("unlabelled_middle", s.subject, f"-5 rows for frames {s.unlabelled_runs[-1]}")
    s.axis_delta = -3
    p.trap("label_rows_fewer", s.subject, f"label rows = decoded frames - 3 ({n - 3} vs {n})")
    s.face_runs.append([*p.run(n, 0.6, 0.1), media.OCCLUDE])

    off = p.video("val", fps=Fraction(25), name_fps=30, rate=16000, offset_s=0.5)
    s = off.persons[0]
    n = n_of(off.pts)
    p.trap("wrong_fps_in_name", s.subject, f"{off.stem}: name says 30 fps, stream is 25 fps")
    p.trap("stream_start_offset", s.subject, "first video pts 0.5 s, audio starts at 0")
    off.audio_runs.append([*p.run(n, 0.5, 0.12), AUDIO_NOISE])

    mute = p.video("val", fps=Fraction(30000, 1001), name_fps=30, acodec=None, plain=True)
    s = mute.persons[0]
    n = n_of(mute.pts)
    p.trap("no_audio", s.subject, f"{mute.relpath} has no audio stream")
    s.missing_runs.append(p.run(n, 0.7, 0.05))
    s.unlabelled_runs.append([0, max(3, n // 30)])

    mism = p.video("test", fps=Fraction(25), name_fps=25, container="avi", vcodec="mjpeg",
                   acodec="pcm_s16le", rate=16000)
    s = mism.persons[0]
    n = n_of(mism.pts)
    s.axis_delta = 3
    p.trap("test_count_mismatch", s.subject, f"sample file has {n + 3} rows, video decodes to {n} frames")
    p.trap("avi_video", s.subject, f"{mism.relpath}: mjpeg video, pcm_s16le audio")
    s.missing_runs.append(p.run(n, 0.2, 0.04))

    tst = p.video("test", fps=Fraction(30), name_fps=30, rate=44100)
    s = tst.persons[0]
    n = n_of(tst.pts)
    s.face_runs.append([*p.run(n, 0.25, 0.1), media.BLUR])
    tst.audio_runs.append([*p.run(n, 0.65, 0.1), AUDIO_SILENT])
    s.unlabelled_runs.append(p.run(n, 0.8, 0.05))

    # -- fillers: ordinary subjects (with the occasional everyday flaw) to reach the target size -------
    n_fill = max(0, int(round(18 * scale)) - 8)
    splits = ["train", "train", "val", "train", "test", "train", "val", "train", "test", "train"]
    r = p.rng
    for k in range(n_fill):
        fps = [Fraction(30), Fraction(30), Fraction(30000, 1001), Fraction(25), Fraction(24), Fraction(15)][
            int(r.integers(6))
        ]
        avi = r.random() < 0.2
        name_fps = int(round(fps)) if r.random() > 0.1 else 30
        v = p.video(
            splits[k % len(splits)],
            fps=fps if not avi else Fraction(int(round(fps))),
            name_fps=name_fps,
            container="avi" if avi else "mp4",
            vcodec=("mpeg4" if r.random() < 0.5 else "mjpeg") if avi else "libx264",
            acodec=("pcm_s16le" if avi else "aac") if r.random() > 0.1 else None,
            rate=int(r.choice([16000, 22050, 44100, 48000])),
            plain=r.random() < 0.15,
        )
        s = v.persons[0]
        n = n_of(v.pts)
        if r.random() < 0.5:
            s.missing_runs.append(p.run(n, r.uniform(0.05, 0.85), r.uniform(0.01, 0.06), lo=2))
        if r.random() < 0.3:
            s.unlabelled_runs.append(p.run(n, r.uniform(0.1, 0.85), r.uniform(0.01, 0.05), lo=2))
        if r.random() < 0.3:
            s.face_runs.append([*p.run(n, r.uniform(0.1, 0.8), r.uniform(0.03, 0.1)), int(r.integers(1, 3))])
        if v.stream.acodec and r.random() < 0.3:
            v.audio_runs.append([*p.run(n, r.uniform(0.1, 0.8), r.uniform(0.03, 0.1)), int(r.integers(1, 3))])
        if name_fps != int(round(fps)):
            p.trap("wrong_fps_in_name", s.subject, f"{v.stem}: name says {name_fps}, stream is {float(fps):.2f}")
    return p.videos, p.traps


# ---- one video: media, crops, labels (runs in a worker process) ------------------------------------
def _axis_times(decoded: np.ndarray, n_axis: int) -> np.ndarray:
    """Frame times on the axis; past the last decoded frame, extrapolated by the median duration."""
    if n_axis <= len(decoded):
        return decoded[:n_axis]
    step = float(np.median(np.diff(decoded)))
    extra = decoded[-1] + step * np.arange(1, n_axis - len(decoded) + 1)
    return np.concatenate([decoded, extra])


def _runs_mask(n: int, runs: list[list[int]]) -> np.ndarray:
    m = np.zeros(n, bool)
    for r in runs:
        m[r[0] : r[1]] = True
    return m


def _mask_runs(mask: np.ndarray) -> list[list[int]]:
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return [[int(a), int(b)] for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True)]


def _label_text(values: np.ndarray, valid: np.ndarray, odd: bool) -> str:
    rows = ["valence,arousal"]
    rows += [f"{v:.3f},{a:.3f}" if ok else "-5,-5" for (v, a), ok in zip(values, valid, strict=True)]
    nl = "\r\n" if odd else "\n"
    return nl.join(rows) + nl + (nl if odd else "")


def _room(plan: VideoPlan) -> np.ndarray:
    rng = np.random.default_rng([plan.seed, 1])
    H, W = plan.stream.height, plan.stream.width
    g = np.linspace(0, 1, H)[:, None, None]
    room = rng.integers(30, 220, 3) * (1 - g) + rng.integers(30, 220, 3) * g
    room = np.broadcast_to(room, (H, W, 3)).copy()
    x0 = int(rng.integers(0, W // 2))
    room[H // 2 :, x0 : x0 + W // 3] = rng.integers(20, 200, 3)  # a piece of furniture
    return room.astype(np.uint8)


def _slots(plan: VideoPlan) -> list[tuple[int, int]]:
    W, H = plan.stream.width, plan.stream.height
    if len(plan.persons) == 2:
        return [(8, (H - media.CROP) // 2), (W - 8 - media.CROP, (H - media.CROP) // 2)]
    return [((W - media.CROP) // 2, (H - media.CROP) // 2)]


def _make_audio(plan: VideoPlan, decoded: np.ndarray) -> np.ndarray | None:
    st = plan.stream
    if st.acodec is None:
        return None
    sr = st.audio_rate
    lead = media.MP3_DELAY_SAMPLES if st.acodec == "libmp3lame" else 0
    t0 = lead / sr  # sample j of what we encode plays at j/sr + the decoder's delay
    end = decoded[-1] + 3 * float(np.median(np.diff(decoded))) + 0.3
    n16 = fft_friendly_length(int(math.ceil((end - t0) * VOICE_RATE)))
    frame_t = lambda i: decoded[min(i, len(decoded) - 1)]  # noqa: E731
    silent = [(frame_t(s), frame_t(e)) for s, e, m in plan.audio_runs if m == AUDIO_SILENT]
    x = sum(synth_voice(p.voice, p.emotion.arousal, t0, n16, silent) for p in plan.persons)
    # A fixed gain, not peak normalisation: the level itself carries arousal, so it must mean the same
    # in every file (peaks of one excited voice reach about -3 dBFS).
    x = resample_exact(x, VOICE_RATE, sr) * (0.9 / math.sqrt(len(plan.persons)))
    rng = np.random.default_rng([plan.seed, 2])
    x += rng.normal(0, 0.002, len(x))  # room noise floor
    t = t0 + np.arange(len(x)) / sr
    for s, e, m in plan.audio_runs:
        if m == AUDIO_NOISE:  # a loud appliance drowns the voice
            sel = (t >= frame_t(s)) & (t < frame_t(e))
            x[sel] += rng.normal(0, 0.35, int(sel.sum()))
    return np.clip(x, -1, 1).astype(np.float32)


def _make_video(plan: VideoPlan, root: str) -> dict:
    """Write the raw video, every person's crops, and labels (or hidden test labels). Returns the facts
    traps.json records, measured from the written files."""
    root = Path(root)
    n = len(plan.pts)
    times = plan.times
    st = plan.stream
    room = _room(plan)
    slots = _slots(plan)
    modes, presents, crop_dirs = [], [], []
    for person in plan.persons:
        mode = np.zeros(n, np.int8)
        for s, e, m in person.face_runs:
            mode[s:e] = m
        modes.append(mode)
        presents.append(~_runs_mask(n, person.missing_runs))
        d = root / "cropped_aligned" / person.subject
        d.mkdir(parents=True)
        crop_dirs.append(d)
    n_axes = [n + p.axis_delta for p in plan.persons]

    def frames():
        for b0 in range(0, n, BLOCK):
            b1 = min(n, b0 + BLOCK)
            frame = np.broadcast_to(room, (b1 - b0, *room.shape)).copy()
            for k, person in enumerate(plan.persons):
                rng = np.random.default_rng([person.seed, b0])
                val = person.emotion.valence(times[b0:b1])
                faces = media.render_faces(person.appearance, val, presents[k][b0:b1], modes[k][b0:b1], rng)
                x, y = slots[k]
                frame[:, y : y + media.CROP, x : x + media.CROP] = faces
                for i in range(b0, min(b1, n_axes[k])):
                    if presents[k][i]:
                        (crop_dirs[k] / f"{i + 1:05d}.jpg").write_bytes(media.jpeg_bytes(faces[i - b0]))
            yield from frame

    audio = _make_audio(plan, times)
    video_path = root / plan.relpath
    video_path.parent.mkdir(parents=True, exist_ok=True)
    media.write_container(video_path, st, frames(), plan.pts, audio, Fraction(plan.fps_nominal).limit_denominator(1001))

    decoded = media.demux_frame_times(video_path)
    if len(decoded) != n or not np.allclose(decoded, times, atol=1e-9, rtol=0):
        raise RuntimeError(f"{video_path}: wrote {n} frames at planned pts, read back {len(decoded)} different ones")

    facts = {}
    for k, person in enumerate(plan.persons):
        n_axis = n_axes[k]
        t_axis = _axis_times(decoded, n_axis)
        values = person.emotion.at(t_axis)
        valid = ~_runs_mask(n_axis, person.unlabelled_runs)
        text = _label_text(values, valid, person.odd_label)
        if person.split == "test":
            label_path = root / "ground_truth" / "Test_Set" / f"{person.subject}.txt"
        else:
            label_path = root / ANNOTATIONS / SPLIT_DIRS[person.split] / f"{person.subject}.txt"
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_bytes(text.encode())
        has_crop = np.zeros(n_axis, bool)
        has_crop[: min(n, n_axis)] = presents[k][: min(n, n_axis)]
        fr = lambda runs: [[int(s), int(e)] for s, e, *_ in runs]  # noqa: E731
        facts[person.subject] = {
            "split": person.split,
            "video": plan.stem,
            "video_path": plan.relpath,
            "fps_nominal": round(plan.fps_nominal, 6),
            "fps_in_name": plan.fps_in_name,
            "vfr": plan.vfr,
            "decoded_frames": int(len(decoded)),
            "label_rows": None if person.split == "test" else n_axis,
            "sample_rows": n_axis if person.split == "test" else None,
            "first_video_pts_s": float(decoded[0]),
            "has_audio": st.acodec is not None,
            "audio_rate": st.audio_rate if st.acodec else None,
            "audio_codec": {"libmp3lame": "mp3"}.get(st.acodec, st.acodec),
            "video_codec": {"libx264": "h264"}.get(st.vcodec, st.vcodec),
            "missing_crop_runs": _mask_runs(~has_crop),
            "unlabelled_runs": _mask_runs(~valid),
            "face_uninformative_runs": fr(person.face_runs),
            "audio_uninformative_runs": fr(plan.audio_runs),
        }
    return facts


# ---- the release ------------------------------------------------------------------------------------
def _is_complete(out: Path, seed: int, scale: float) -> bool:
    try:
        meta = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("seed") == seed and meta.get("scale") == scale and meta.get("version") == VERSION


def generate(out: Path, seed: int = 0, scale: float = 1.0, force: bool = False, workers: int | None = None) -> Path:
    """Write a synthetic release into ``out`` (see the module docstring) and return ``out``.

    Same seed and scale give identical labels, lists and pixels. A complete release of the same seed,
    scale and generator version is kept unless ``force``. The release is built in a sibling folder and
    renamed into place, so an interrupted run never leaves a half release behind.
    """
    out = Path(out).expanduser().resolve()
    with file_lock(out.parent / f".{out.name}.lock"):
        if not force and _is_complete(out, seed, scale):
            log.info("%s already holds the seed=%s scale=%s release", out, seed, scale)
            return out
        if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not force:
            raise FileExistsError(f"{out} exists and is not a synthetic release; pass force=True to replace it")
        videos, traps = plan_release(seed, scale)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            subjects = _write_media(videos, tmp, workers)
            _write_lists(videos, tmp)
            atomic_write_json(
                tmp / MARKER,
                {"seed": seed, "scale": scale, "version": VERSION, "subjects": subjects,
                 "traps": [t.__dict__ for t in traps]},
            )
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            if out.exists():
                out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _write_media(videos: list[VideoPlan], root: Path, workers: int | None) -> dict:
    total = sum(len(v.pts) * len(v.persons) for v in videos)
    if workers is None:
        workers = 1 if total < 6000 else min(len(videos), os.cpu_count() or 1, 4)
    order = sorted(videos, key=lambda v: -len(v.pts) * len(v.persons))  # longest first balances the pool
    facts: dict = {}
    if workers <= 1:
        for v in order:
            facts.update(_make_video(v, str(root)))
    else:
        import multiprocessing as mp

        # spawn, not fork: the caller may hold threads (torch, pytest plugins) that fork would copy mid-lock.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for f in [pool.submit(_make_video, v, str(root)) for v in order]:
                facts.update(f.result())
    return {k: facts[k] for k in sorted(facts)}


def _write_lists(videos: list[VideoPlan], root: Path) -> None:
    tests = [p for v in videos for p in v.persons if p.split == "test"]
    (root / TEST_LIST).write_text("".join(f"{p.subject}\n" for p in tests))
    lines = ["image_location,valence,arousal"]
    for v in videos:
        for p in v.persons:
            if p.split == "test":
                lines += [f"{p.subject}/{i:05d}.jpg,0,0" for i in range(1, len(v.pts) + p.axis_delta + 1)]
    (root / SAMPLE_FILE).write_text("\n".join(lines) + "\n")


def cli_synth(cfg, args) -> int:
    out = Path(args.out) if getattr(args, "out", None) else cfg.data_root
    seed = args.seed if getattr(args, "seed", None) is not None else cfg.synth.seed
    scale = args.scale if getattr(args, "scale", None) is not None else cfg.synth.scale
    t0 = time.perf_counter()
    generate(out, seed=seed, scale=scale, force=bool(getattr(args, "force", False)))
    meta = json.loads((out / MARKER).read_text())
    subs = meta["subjects"].values()
    counts = {s: sum(1 for x in subs if x["split"] == s) for s in ("train", "val", "test")}
    frames = sum(x["label_rows"] or x["sample_rows"] for x in subs)
    print(
        f"synthetic release (seed {seed}, scale {scale}) at {out}\n"
        f"  subjects: {counts['train']} train, {counts['val']} val, {counts['test']} test; {frames} frames\n"
        f"  traps: {', '.join(sorted({t['kind'] for t in meta['traps']}))}\n"
        f"  took {time.perf_counter() - t0:.1f} s (0 if it was already there)"
    )
    return 0
