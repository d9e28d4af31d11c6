"""A synthetic Aff-Wild2 VA release: official layout, real media, planted traps and a hidden signal.

``generate(out, seed, scale)`` writes what a user would unpack from the organisers (annotations, aligned
crops, raw .mp4/.avi videos in batch folders, the test list and the sample prediction file) plus
``out/ground_truth/`` (test labels and ``traps.json``), which the pipeline reads only to score.

The signal: each subject's valence and arousal are smooth functions of container time
(:mod:`abaw.synth.signal`). Valence is drawn in the face (mouth curve and opening, brow tilt,
skin flush), arousal is heard in the voice (level, pitch, brightness). The plan (who, what, which trap
where) is :mod:`abaw.synth.plan`; the pictures and containers are :mod:`abaw.synth.media`. Labels are sampled at the frames' presentation
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
from fractions import Fraction
from pathlib import Path

import numpy as np

from abaw.data.release import crop_name
from abaw.synth import media
from abaw.synth.plan import AUDIO_NOISE, AUDIO_SILENT, AUDIO_SPEAKER, VideoPlan, plan_release
from abaw.synth.signal import (
    VOICE_RATE,
    SmoothProcess,
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
    speaker = [(frame_t(s), frame_t(e)) for s, e, m in plan.audio_runs if m == AUDIO_SPEAKER]
    if speaker:
        # As loud as the subject's own voice on average: someone at the same distance from the
        # microphone, whose level (and pitch) follows their arousal, not the subject's.
        y = _second_speaker(plan, t0, n16, speaker)
        talking = np.abs(y) > 0
        if talking.any():
            x = x + y * (np.sqrt(np.mean(x[talking] ** 2)) / max(np.sqrt(np.mean(y[talking] ** 2)), 1e-9))
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


def _second_speaker(plan: VideoPlan, t0: float, n16: int, talks: list[tuple[float, float]]) -> np.ndarray:
    """Another person talking during ``talks`` (time ranges) only: their own voice and their own
    arousal, so the soundtrack there says nothing about the subject's."""
    rng = np.random.default_rng([plan.seed, 3])
    voice = Voice.random(rng)
    arousal = SmoothProcess.random(rng, mean=rng.uniform(-0.35, 0.45), spread=rng.uniform(0.3, 0.7))
    ends = sorted(talks)
    quiet, t = [], t0 - 1.0
    for a, b in ends:
        if a > t:
            quiet.append((t, a))
        t = max(t, b)
    quiet.append((t, t0 + n16 / VOICE_RATE + 1.0))
    return synth_voice(voice, arousal, t0, n16, quiet)


_FACE_KIND = {media.OCCLUDE: "occluded", media.BLUR: "blurred"}
_VOICE_KIND = {AUDIO_SILENT: "silence", AUDIO_NOISE: "noise", AUDIO_SPEAKER: "speaker"}


def _kind_runs(kinds: np.ndarray) -> list[list]:
    """[start, end, kind] runs of an object array of kind names (None = clean)."""
    out = []
    for name in sorted({k for k in kinds if k is not None}):
        out += [[s, e, name] for s, e in _mask_runs(kinds == name)]
    return sorted(out)


def _degraded(n_axis: int, has_crop: np.ndarray, face_mode: np.ndarray, audio_runs: list, has_audio: bool) -> dict:
    """Where each modality carries no emotion, frame by frame, with the kind: the face is missing (no
    crop), occluded or blurred; the voice is silent, drowned in noise, talked over, or there is no
    soundtrack at all. Later runs win where two overlap, as when the media are drawn."""
    face = np.full(n_axis, None, dtype=object)
    m = face_mode[:n_axis]
    for mode, name in _FACE_KIND.items():
        face[: len(m)][m == mode] = name
    face[~has_crop] = "missing"
    voice = np.full(n_axis, None if has_audio else "no_audio", dtype=object)
    if has_audio:
        for s, e, mode in audio_runs:
            voice[s:e] = _VOICE_KIND[mode]
    return {"visual": _kind_runs(face), "audio": _kind_runs(voice)}


def _make_video(plan: VideoPlan, root: str, face_cues: str = "shape+colour") -> dict:
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
                faces = media.render_faces(
                    person.appearance, val, presents[k][b0:b1], modes[k][b0:b1], rng, face_cues,
                    media.mouth_opening(person.seed, times[b0:b1]),
                    media.head_roll(person.seed, times[b0:b1]) if face_cues == "curve" else None,
                    media.pose_track(person.seed, times[b0:b1]) if face_cues == "wild" else None,
                )
                x, y = slots[k]
                frame[:, y : y + media.CROP, x : x + media.CROP] = faces
                for i in range(b0, min(b1, n_axes[k])):
                    if presents[k][i]:
                        (crop_dirs[k] / crop_name(i)).write_bytes(media.jpeg_bytes(faces[i - b0]))
            yield from frame

    audio = _make_audio(plan, times)
    video_path = root / plan.relpath
    video_path.parent.mkdir(parents=True, exist_ok=True)
    media.write_container(
        video_path, st, frames(), plan.pts, audio, Fraction(plan.fps_nominal).limit_denominator(1001)
    )

    decoded = media.demux_frame_times(video_path)
    if len(decoded) != n or not np.allclose(decoded, times, atol=1e-9, rtol=0):
        raise RuntimeError(
            f"{video_path}: wrote {n} frames at planned pts, read back {len(decoded)} different ones"
        )

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
            "degraded": _degraded(n_axis, has_crop, modes[k], plan.audio_runs, st.acodec is not None),
        }
    return facts


# ---- the release ------------------------------------------------------------------------------------
def _degradation(degradation: dict | None) -> dict:
    """The degradation settings as recorded: empty when nothing is degraded (today's release)."""
    d = dict(degradation or {})
    return d if d.get("face_degraded", 0) > 0 or d.get("voice_degraded", 0) > 0 else {}


def _is_complete(out: Path, seed: int, scale: float, degradation: dict | None = None, *,
                 face_cues: str = "shape+colour") -> bool:
    try:
        meta = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    # A release written before face_cues was recorded carried the colour cue.
    return (meta.get("seed") == seed and meta.get("scale") == scale and meta.get("version") == VERSION
            and meta.get("degradation", {}) == _degradation(degradation)
            and meta.get("face_cues", "shape+colour") == face_cues)


def planted_degradation(root: Path) -> dict[str, dict[str, list]] | None:
    """{subject: {"visual": runs, "audio": runs}} of a complete synthetic release (runs [start, end,
    kind] on the frame axis, see ``_degraded``); None when ``root`` holds no synthetic release. Read
    only to score and to diagnose, never to train."""
    try:
        meta = json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return {s: info["degraded"] if "degraded" in info else _version1_degraded(info)
            for s, info in meta.get("subjects", {}).items()}


def _version1_degraded(info: dict) -> dict[str, list]:
    """What a release written before the "degraded" record planted (its traps, kinds unnamed)."""
    n = info["label_rows"] or info["sample_rows"]
    visual = [[s, e, "missing"] for s, e in info["missing_crop_runs"]]
    visual += [[s, e, "trap"] for s, e in info["face_uninformative_runs"]]
    audio = [[s, e, "trap"] for s, e in info["audio_uninformative_runs"]] if info["has_audio"] else [[0, n, "no_audio"]]
    return {"visual": sorted(visual), "audio": audio}


def generate(
    out: Path, seed: int = 0, scale: float = 1.0, force: bool = False, workers: int | None = None,
    degradation: dict | None = None, face_cues: str = "shape+colour",
) -> Path:
    """Write a synthetic release into ``out`` (see the module docstring) and return ``out``.

    Same seed and scale give identical labels, lists and pixels. ``degradation``
    (``SynthConfig.degradation()``) plants degraded face and voice runs (see ``plan.degrade``). A
    complete release of the same seed, scale, degradation, ``face_cues`` and generator version is kept
    unless ``force``; one made with other settings is regenerated. The release is built in a sibling folder and
    renamed into place, so an interrupted run never leaves a half release behind.
    """
    out = Path(out).expanduser().resolve()
    with file_lock(out.parent / f".{out.name}.lock"):
        if face_cues not in media.FACE_CUES:
            raise ValueError(f"synth.face_cues: {face_cues!r} is not one of {media.FACE_CUES}")
        if not force and _is_complete(out, seed, scale, degradation, face_cues=face_cues):
            log.info("%s already holds the seed=%s scale=%s release", out, seed, scale)
            return out
        if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not force:
            raise FileExistsError(
                f"{out} exists and is not a synthetic release; pass force=True to replace it"
            )
        videos, traps = plan_release(seed, scale, _degradation(degradation) or None)
        # Under the lock, any sibling work folder is a leftover of a killed run.
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in out.parent.glob(f".{out.name}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            subjects = _write_media(videos, tmp, workers, face_cues)
            _write_lists(videos, tmp)
            atomic_write_json(
                tmp / MARKER,
                {
                    "seed": seed,
                    "scale": scale,
                    "face_cues": face_cues,
                    "version": VERSION,
                    "degradation": _degradation(degradation),
                    "subjects": subjects,
                    "traps": [t.__dict__ for t in traps],
                },
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


def _write_media(videos: list[VideoPlan], root: Path, workers: int | None, face_cues: str) -> dict:
    total = sum(len(v.pts) * len(v.persons) for v in videos)
    if workers is None:
        workers = 1 if total < 6000 else min(len(videos), os.cpu_count() or 1, 4)
    order = sorted(videos, key=lambda v: -len(v.pts) * len(v.persons))  # longest first balances the pool
    facts: dict = {}
    if workers <= 1:
        for v in order:
            facts.update(_make_video(v, str(root), face_cues))
    else:
        import multiprocessing as mp

        # spawn, not fork: the caller may hold threads (torch, pytest plugins) that fork would copy mid-lock.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for f in [pool.submit(_make_video, v, str(root), face_cues) for v in order]:
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


def _degradation_line(meta: dict) -> str:
    if not meta.get("degradation"):
        return ""
    frac = {}
    for m in ("visual", "audio"):
        deg = sum(e - s for info in meta["subjects"].values() for s, e, _ in info["degraded"][m])
        total = sum(info["label_rows"] or info["sample_rows"] for info in meta["subjects"].values())
        frac[m] = deg / max(1, total)
    return f"  degraded frames: face {frac['visual']:.0%}, voice {frac['audio']:.0%} (planted traps included)\n"


def cli_synth(cfg, args) -> int:
    out = Path(args.out) if getattr(args, "out", None) else cfg.data_root
    seed = args.seed if getattr(args, "seed", None) is not None else cfg.synth.seed
    scale = args.scale if getattr(args, "scale", None) is not None else cfg.synth.scale
    force = bool(getattr(args, "force", False))
    cues = cfg.synth.face_cues
    degradation = cfg.synth.degradation()
    reused = not force and _is_complete(Path(out).expanduser().resolve(), seed, scale, degradation, face_cues=cues)
    t0 = time.perf_counter()
    generate(out, seed=seed, scale=scale, force=force, degradation=degradation, face_cues=cues)
    meta = json.loads((out / MARKER).read_text())
    subs = meta["subjects"].values()
    counts = {s: sum(1 for x in subs if x["split"] == s) for s in ("train", "val", "test")}
    frames = sum(x["label_rows"] or x["sample_rows"] for x in subs)
    print(
        f"synthetic release (seed {seed}, scale {scale}, face cues {cues}) at {out}\n"
        f"  subjects: {counts['train']} train, {counts['val']} val, {counts['test']} test; {frames} frames\n"
        f"  traps: {', '.join(sorted({t['kind'] for t in meta['traps']}))}\n"
        + _degradation_line(meta)
        + (
            "  already complete: kept (--force regenerates)"
            if reused
            else f"  took {time.perf_counter() - t0:.1f} s"
        )
    )
    return 0
