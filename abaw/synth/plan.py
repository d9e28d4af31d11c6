"""The synthetic release as data: which videos and subjects, their emotions, looks and voices, and
which trap sits where. A pure function of (seed, scale); nothing here touches files.

Every trap kind lives on a fixed set of core videos, so it exists at any scale; ordinary "filler"
subjects (with the occasional everyday flaw) bring the release to its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from abaw.synth import media
from abaw.synth.signal import Emotion, Voice

MP4_TIME_BASE = Fraction(1, 90000)
AUDIO_SILENT, AUDIO_NOISE, AUDIO_SPEAKER = 1, 2, 3  # audio_uninformative modes: the voice stops, noise
# drowns it, or a second speaker (another voice, another arousal) talks over it
FACE_MODES = {"occluded": media.OCCLUDE, "blurred": media.BLUR, "missing": 0}  # 0: no crop (a missing run)
VOICE_MODES = {"silence": AUDIO_SILENT, "noise": AUDIO_NOISE, "speaker": AUDIO_SPEAKER}


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
    fps_in_name: int | None  # None for plain names (video23.mp4)
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
        fps_in_name = None if plain else name_fps
        v = VideoPlan(
            stem,
            relpath,
            stream,
            pts,
            float(mean_fps),
            fps_in_name,
            vfr,
            persons,
            seed=int(r.integers(2**31)),
        )
        self.videos.append(v)
        return v

    def trap(self, kind: str, subject: str, detail: str) -> None:
        self.traps.append(Trap(kind, subject, detail))


def plan_release(seed: int, scale: float, degradation: dict | None = None) -> tuple[list[VideoPlan], list[Trap]]:
    """The release as data: which videos, which subjects, which traps where. Pure function of its args.

    ``degradation`` (``SynthConfig.degradation()``) adds degraded face and voice runs on top; it draws
    from its own random streams, so subjects, signals and traps are those of the undegraded release."""
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive number, got {scale}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
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

    low = p.video(
        "train",
        fps=Fraction(10),
        name_fps=10,
        container="avi",
        vcodec="mpeg4",
        acodec="libmp3lame",
        rate=22050,
    )
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
    p.trap(
        "variable_frame_rate",
        s.subject,
        f"{vfr.relpath}: irregular pts, mean {vfr.fps_nominal:.2f} fps, B-frames",
    )
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

    mism = p.video(
        "test", fps=Fraction(25), name_fps=25, container="avi", vcodec="mjpeg", acodec="pcm_s16le", rate=16000
    )
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
        if v.fps_in_name is not None and v.fps_in_name != int(round(fps)):
            p.trap(
                "wrong_fps_in_name", s.subject, f"{v.stem}: name says {name_fps}, stream is {float(fps):.2f}"
            )
    if degradation:
        degrade(p.videos, seed, degradation)
    return p.videos, p.traps


def _draw_runs(rng: np.random.Generator, n: int, fraction: float, mean_len: float, kinds: list[str],
               taken: list[list[int]] = ()) -> list[tuple[int, int, str]]:
    """Runs [start, end, kind] covering about ``fraction`` of n frames, each about ``mean_len`` frames
    long (0.5-1.5x), placed uniformly at random where they overlap neither each other nor ``taken``
    (runs already planted there), so every degraded frame has exactly one kind."""
    if fraction <= 0 or n < 2:
        return []
    busy = np.zeros(n, bool)
    for r in taken:
        busy[r[0] : r[1]] = True
    runs: list[tuple[int, int, str]] = []
    target, done, tries = fraction * n, 0, 0
    while done < target and tries < 2000:
        tries += 1
        length = int(np.clip(round(mean_len * rng.uniform(0.5, 1.5)), 1, n))
        start = int(rng.integers(0, n - length + 1))
        if busy[start : start + length].any():
            continue
        runs.append((start, start + length, kinds[int(rng.integers(len(kinds)))]))
        busy[start : start + length] = True
        done += length
    return sorted(runs)


def degrade(videos: list[VideoPlan], seed: int, degradation: dict) -> None:
    """Plant degraded face runs (per person) and voice runs (per video: a pair shares its soundtrack).
    The face and the voice are drawn from two independent streams, so they are independent."""
    face_rng = np.random.default_rng([seed, 104729, 1])
    voice_rng = np.random.default_rng([seed, 104729, 2])
    run_s = float(degradation.get("degrade_run_s", 2.0))
    for v in videos:
        n = len(v.pts)
        mean_len = run_s * v.fps_nominal
        for person in v.persons:
            for s, e, kind in _draw_runs(face_rng, n, degradation.get("face_degraded", 0.0), mean_len,
                                         degradation.get("face_kinds", list(FACE_MODES)),
                                         person.missing_runs + person.face_runs):
                if kind == "missing":
                    person.missing_runs.append([s, e])
                else:
                    person.face_runs.append([s, e, FACE_MODES[kind]])
        if v.stream.acodec is None:
            continue  # no soundtrack to degrade (the no_audio trap already makes the voice useless)
        for s, e, kind in _draw_runs(voice_rng, n, degradation.get("voice_degraded", 0.0), mean_len,
                                     degradation.get("voice_kinds", list(VOICE_MODES)), v.audio_runs):
            v.audio_runs.append([s, e, VOICE_MODES[kind]])
