"""``abaw video FILE --runs RUN [RUN...]``: detection, tracking, alignment, features, prediction, outputs.

Work that depends only on the clip and the detection options (detections, crops, features) lives in
``<out>/.work/<hash>/``, keyed by the video file's digest and every option that changes it, so rerunning
with other runs, or only adding ``--overlay``, reuses it; anything else gets a new folder.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from abaw.config import Config, load_config, stable_hash
from abaw.errors import AbawError
from abaw.utils import atomic_path, atomic_write_json, code_version, file_digest
from abaw.video.errors import RunFeaturesError, VideoError

log = logging.getLogger(__name__)

SUBJECT = "clip"
ALIGN_VERSION = 2  # bump when detection/tracking/alignment changes crops: old work folders are not reused
JPEG_QUALITY = 95
AUTO_SMALL = 0.25  # --detector auto: faces smaller than this fraction of the frame's long side use "full"


@dataclass
class VideoOptions:
    face: int | str | None = None  # None: largest/most central; N (0 = leftmost); "left" | "right"
    every: int = 1  # run the detector on every k-th frame, interpolate between
    detector: str = "auto"  # auto (short range; full range where it finds no or only small faces) | short | full
    min_score: float | None = None  # detector score threshold (None: the model's own)
    landmarks: str = "mesh"  # alignment points: "mesh" (MediaPipe face mesh on the box) | "detector" (BlazeFace's)
    template: str = "release"  # "release": the crop layout of the crops the run trained on | "standard"
    crops: bool = False  # also write the aligned crops to <out>/crops/%05d.jpg
    overlay: bool = False  # write overlay.mp4
    device: str | None = None  # feature extraction and prediction device (None: the runs' own)
    threads: int = 1  # detector threads
    progress: bool = True

    def validate(self) -> None:
        if self.every < 1:
            raise VideoError(f"--every must be >= 1, got {self.every}")
        if self.detector not in ("auto", "short", "full"):
            raise VideoError(f"--detector {self.detector!r} is not one of auto, short, full")
        if self.landmarks not in ("mesh", "detector"):
            raise VideoError(f"--landmarks {self.landmarks!r} is not one of mesh, detector")
        if self.template not in ("release", "standard"):
            raise VideoError(f"--template {self.template!r} is not one of release, standard")
        if isinstance(self.face, str) and self.face not in ("auto", "left", "right"):
            try:
                self.face = int(self.face)
            except ValueError:
                raise VideoError(f"--face {self.face!r}: give N (0 = leftmost), left or right") from None


@dataclass
class VideoResult:
    out: Path
    n_frames: int
    faces_found: int
    frames_csv: Path
    plot: Path
    overlay: Path | None
    crops: Path | None
    seconds: dict[str, float] = field(default_factory=dict)


def resolve_runs(cfg: Config | None, runs: list[str]) -> list[Path]:
    """Run folders from folder paths or run names (looked up in ``<release_cache>/runs/``)."""
    out = []
    for r in runs:
        p = Path(r).expanduser()
        if not p.is_dir() and cfg is not None:
            p = cfg.release_cache / "runs" / r
        if not (p / "best.ckpt").is_file() or not (p / "config.yaml").is_file():
            where = f" (nor {cfg.release_cache / 'runs' / r})" if cfg is not None else ""
            raise RunFeaturesError(f"run {r!r}: no finished run folder at {Path(r).expanduser()}{where}; "
                                   "give a run folder holding best.ckpt and config.yaml")
        out.append(p.resolve())
    if not out:
        raise RunFeaturesError("abaw video needs at least one run (--runs RUN [RUN...])")
    return out


# ---- faces ------------------------------------------------------------------------------------------
def _bar(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, mininterval=0.5)


def detect_faces(clip, opts: VideoOptions) -> tuple[np.ndarray, dict]:
    """(decoded frame times, {detection frame: faces}) in one decoding pass."""
    from abaw.video.detect import FaceDetector

    primary = FaceDetector("full" if opts.detector == "full" else "short", opts.threads, opts.min_score)
    fallback = FaceDetector("full", opts.threads, opts.min_score) if opts.detector == "auto" else None
    mesh = None
    if opts.landmarks == "mesh":
        from abaw.video.landmarks import FaceMesh

        mesh = FaceMesh(opts.threads)
    from abaw.video.media import frames

    times, detections = [], {}
    bar = _bar(clip.probe.n_frames, "detect") if opts.progress else None
    for i, t, rgb in frames(clip):
        times.append(t)
        if i % opts.every == 0:
            faces = primary(rgb)
            # The short-range model is made for close-ups; on a small face its box is inflated (a face
            # of 14 % of the frame came out 35 % too large), so small or no faces go to the full range.
            if fallback is not None and (not faces or min(f.size for f in faces) < AUTO_SMALL * max(rgb.shape[:2])):
                faces = fallback(rgb) or faces
            if mesh is not None:  # BlazeFace's keypoints are coarse; the mesh places them on the features
                faces = [mesh.refine(rgb, f) for f in faces]
            detections[i] = faces
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not times:
        raise VideoError(f"{clip.path}: the video stream has no decodable frames")
    return np.asarray(times, np.float64), detections


def write_crops(clip, track, crop_dir: Path, progress: bool, template: np.ndarray | None = None) -> int:
    """Aligned 112x112 crops of the followed face as ``%05d.jpg`` (1-based, the release's naming);
    frames without the face get no file, as in the release."""
    from abaw.data.release import crop_name
    from abaw.video.align import aligned_crop
    from abaw.video.media import frames

    crop_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    bar = _bar(len(track.found), "align") if progress else None
    for i, _, rgb in frames(clip):
        if i < len(track.found) and track.found[i]:
            crop = aligned_crop(rgb, track.keypoints[i], template)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"could not encode the crop of frame {i}")
            (crop_dir / crop_name(i)).write_bytes(buf.tobytes())
            n += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return n


def faces_of(clip, opts: VideoOptions, work: Path, template: np.ndarray | None = None):
    """Detections, track and crops of the clip, from ``work`` when an earlier run left them."""
    from abaw.video.align import crop_box
    from abaw.video.track import Track, follow

    state = work / "track.npz"
    crop_dir = work / "crops" / SUBJECT
    if state.is_file() and (work / "crops.done").is_file():
        z = np.load(state, allow_pickle=False)
        track = Track(z["keypoints"], z["boxes"], z["scores"], z["found"], z["detected"], z["n_faces"],
                      int(z["reference"]), str(z["choice"]))
        return z["times"], track, crop_dir
    times, detections = detect_faces(clip, opts)
    try:
        track = follow(detections, len(times), clip.width, clip.height, opts.face)
    except ValueError as e:
        raise VideoError(f"{clip.path}: {e}") from e
    if not track.found.any():
        runs = sum(1 for _ in detections)
        raise VideoError(f"{clip.path}: no face found on any of the {runs} frames the detector looked at "
                         f"({len(times)} frames; detector {opts.detector}); nothing to predict from")
    track.boxes = np.stack([crop_box(k, template) if f else np.full(4, np.nan, np.float32)
                            for k, f in zip(track.keypoints, track.found, strict=True)]).astype(np.float32)
    if crop_dir.exists():
        shutil.rmtree(crop_dir)
    write_crops(clip, track, crop_dir, opts.progress, template)
    with atomic_path(state) as tmp, open(tmp, "wb") as f:
        np.savez(f, times=times, keypoints=track.keypoints, boxes=track.boxes, scores=track.scores,
                 found=track.found, detected=track.detected, n_faces=track.n_faces,
                 reference=track.reference, choice=track.choice)
    (work / "crops.done").write_text("complete\n")
    return times, track, crop_dir


# ---- the whole thing --------------------------------------------------------------------------------
def train_template(run_cfg: Config, opts: VideoOptions) -> np.ndarray | None:
    """The [4, 2] alignment template of the crops the run was trained on (``--template release``), or
    None (the standard template) when asked for or when those crops are not on this machine."""
    if opts.template != "release" or opts.landmarks != "mesh":
        return None
    from abaw.video.landmarks import FaceMesh, crop_template

    crops = Path(run_cfg.data_root) / run_cfg.data.crops
    dirs = [d for d in crops.iterdir() if d.is_dir()] if crops.is_dir() else []
    template = crop_template(dirs, FaceMesh(opts.threads)) if dirs else None
    if template is None:
        log.warning("%s: no training crops with faces to take the crop layout from; using the standard "
                    "112x112 template", crops)
    return template


def work_dir(out: Path, video: Path, opts: VideoOptions, template: np.ndarray | None = None) -> Path:
    key = {"template": None if template is None else np.round(template, 2).tolist(),
           "video": file_digest(video), "face": opts.face, "every": opts.every, "detector": opts.detector,
           "min_score": opts.min_score, "landmarks": opts.landmarks, "align_version": ALIGN_VERSION, "jpeg_quality": JPEG_QUALITY}
    return out / ".work" / stable_hash(key)


def run_video(video: str | Path, run_dirs: list[Path], out: str | Path | None = None,
              opts: VideoOptions | None = None) -> VideoResult:
    from abaw.video import features as vf
    from abaw.video import outputs
    from abaw.video.media import open_clip
    from abaw.video.predict import gate_columns, predict_clip

    opts = opts or VideoOptions()
    opts.validate()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    clip = open_clip(video)
    out = Path(out) if out else Path.cwd() / f"{clip.path.stem}_abaw"
    out.mkdir(parents=True, exist_ok=True)
    # Refuse disagreeing runs before any decoding: that is the cheap check.
    recorded = vf.common_settings(run_dirs)
    run_cfg = load_config(run_dirs[0] / "config.yaml")
    template = train_template(run_cfg, opts)
    work = work_dir(out, clip.path, opts, template)
    work.mkdir(parents=True, exist_ok=True)
    ext_cfg = vf.extraction_config(run_dirs[0], run_cfg, recorded, work, opts.device)

    t = time.perf_counter()
    times, track, crop_dir = faces_of(clip, opts, work, template)
    seconds["faces"] = time.perf_counter() - t
    n = len(times)
    log.info("%s: %d frames, face on %d (%s)", clip.path, n, int(track.found.sum()), track.choice)

    t = time.perf_counter()
    table = vf.subject_table(SUBJECT, crop_dir, clip.path, times)
    caches = vf.extract(ext_cfg, table)
    seconds["features"] = time.perf_counter() - t

    t = time.perf_counter()
    result = predict_clip(run_dirs, table, caches, device=opts.device, progress=opts.progress)
    seconds["predict"] = time.perf_counter() - t

    t = time.perf_counter()
    gates = gate_columns(result.gates)
    df = outputs.frames_table(times, result.pred, track.found, track.detected, track.boxes, gates)
    csv = outputs.write_csv(df, out / "frames.csv")
    env = outputs.audio_envelope(clip.path, times)
    title = (f"{clip.path.name}: {n} frames, face on {int(track.found.sum())}; "
             f"{len(run_dirs)} run(s) ({', '.join(r.name for r in run_dirs)})")
    plot = outputs.write_plot(out / "plot.png", times, result.pred, track.found, env, gates, title)
    crops_out = None
    if opts.crops:
        crops_out = out / "crops"
        if crops_out.exists():
            shutil.rmtree(crops_out)
        shutil.copytree(crop_dir, crops_out)
    overlay = None
    if opts.overlay:
        overlay = outputs.write_overlay(out / "overlay.mp4", clip, times, result.pred, track.boxes,
                                        track.found, opts.progress)
    seconds["outputs"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    atomic_write_json(out / "video.json", {
        "video": str(clip.path), "video_sha256": file_digest(clip.path),
        "frames": n, "faces_found": int(track.found.sum()), "faces_detected": int(track.detected.sum()),
        "identity": track.choice, "reference_frame": track.reference,
        "fps": clip.fps, "vfr": clip.vfr, "has_audio": clip.has_audio,
        "options": asdict(opts), "template": None if template is None else np.round(template, 2).tolist(),
        "runs": [str(r) for r in run_dirs],
        "features": {k: {"trained_dir": str(d), "clip_dir": str(caches[k])} for k, d in
                     ((k, vf.read_record(run_dirs[0])[k]["dir"]) for k in vf.KINDS)},
        "postprocess": result.postprocess, "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "code_version": code_version(),
    })
    return VideoResult(out, n, int(track.found.sum()), csv, plot, overlay, crops_out, seconds)


def cli_video(cfg: Config, args) -> int:
    """``abaw video FILE --runs RUN [RUN...] [--out DIR] [--face N] [--every K] [--overlay] [--crops]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = VideoOptions(face=args.face, every=args.every, detector=args.detector, crops=args.crops,
                        landmarks=getattr(args, "landmarks", "mesh"),
                        template=getattr(args, "template", "release"),
                        overlay=args.overlay, device=args.device, progress=not args.no_progress)
    try:
        runs = resolve_runs(cfg, list(args.runs or []))
        res = run_video(args.file, runs, args.out, opts)
    except AbawError as e:
        print(f"abaw video: {e}", file=sys.stderr)
        return 2
    print(f"{res.n_frames} frames, face on {res.faces_found} -> {res.frames_csv}, {res.plot}"
          + (f", {res.overlay}" if res.overlay else ""))
    return 0
