"""The release index: one row per subject with its frame axis, timestamps, crops, audio and every
disagreement between label rows, video frames and crop files.

The frame axis of a subject has ``n_frames`` entries: its label rows (train/val) or its row count in the
sample file (test; the decoded frame count when the sample file lacks it). Frame i's timestamp comes from
the video container; where the axis runs past the last video frame, timestamps continue at the median
frame duration and the row says so in ``mismatches``.

The index is written to ``cfg.index_path`` (parquet) with the resolved config and ``index.json`` (the
release fingerprint, errors and warnings) beside it; ``index.json`` is written last, so its presence
means the index is complete. ``load_index`` rebuilds when the fingerprint no longer matches the release.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from abaw.data.annotations import AnnotationError, Annotations, false_runs, read_annotations
from abaw.data.config import DataConfig
from abaw.data.probe import ProbeError, VideoProbe, probe_video
from abaw.data.release import (
    Release,
    ReleaseError,
    crop_name,
    discover,
    read_release_list,
    read_sample_counts,
    source_video,
)

INDEX_VERSION = 1  # bump when the columns or their meaning change: old indexes are rebuilt

_LL = pl.List(pl.List(pl.Int64))
SCHEMA: dict[str, pl.DataType] = {
    "subject": pl.String,
    "video": pl.String,  # raw video name (``_left``/``_right`` stripped)
    "split": pl.String,  # train | val | test
    "label_file": pl.String,
    "label_rows": pl.Int64,
    "valid_labels": pl.Int64,
    "unlabelled_runs": _LL,  # [start, end) runs of -5 rows
    "sample_rows": pl.Int64,  # test: rows in the sample file
    "n_frames": pl.Int64,  # the frame axis
    "crop_dir": pl.String,
    "crops_present": pl.Int64,  # crop files inside the frame axis
    "crops_beyond": pl.Int64,  # crop files past the end of the frame axis
    "missing_crop_runs": _LL,  # [start, end) runs without a crop file
    "crop_size": pl.List(pl.Int64),  # [width, height] of the first crop
    "video_path": pl.String,
    "decoded_frames": pl.Int64,
    "fps": pl.Float64,  # measured from the timestamps
    "fps_nominal": pl.Float64,  # the stream header's claim
    "fps_in_name": pl.Float64,  # from ``<id>-<fps>-<WxH>``
    "vfr": pl.Boolean,
    "video_start": pl.Float64,  # first frame time on the container timeline (s)
    "frame_times": pl.List(pl.Float64),  # length n_frames
    "duration": pl.Float64,
    "width": pl.Int64,
    "height": pl.Int64,
    "has_audio": pl.Boolean,
    "audio_rate": pl.Int64,
    "audio_channels": pl.Int64,
    "audio_start": pl.Float64,
    "audio_codec": pl.String,
    "probe_method": pl.String,  # packets | decode
    "mismatches": pl.List(pl.String),
    "odd": pl.List(pl.String),
    "errors": pl.List(pl.String),  # why the subject is unusable
    "usable": pl.Boolean,
}

_NAME = re.compile(r"^(?P<id>.+?)-(?P<fps>\d+(?:\.\d+)?)-(?P<w>\d+)x(?P<h>\d+)$")
_CROP = re.compile(r"^(\d+)\.jpg$")


@dataclass
class IndexResult:
    table: pl.DataFrame
    errors: list[str] = field(default_factory=list)  # subjects (or the release) unusable
    warnings: list[str] = field(default_factory=list)  # mismatches and odd things, all usable
    root: str = ""
    index_path: str = ""
    built: str = ""  # ISO time of the build
    from_cache: bool = False

    @property
    def usable(self) -> pl.DataFrame:
        return self.table.filter(pl.col("usable"))


@dataclass
class CropListing:
    frames: np.ndarray  # sorted 0-based frame indices that have a crop file named crop_name(frame)
    odd: list[str]
    size: tuple[int, int] | None  # (width, height) of the first crop
    misnamed: int = 0  # <digits>.jpg files not spelled %05d.jpg (e.g. 1.jpg): extraction never reads them


def list_crops(folder: Path) -> CropListing:
    """One listing of a subject's crop folder: ``00001.jpg`` is frame 0.

    Only the official spelling ``crop_name(i)`` counts as frame i's crop, since that is the only name
    feature extraction reads; counting ``1.jpg`` too would let the index promise a face the features lack.
    Other names are reported as odd files.
    """
    frames, misnamed, others = [], [], []
    with os.scandir(folder) as it:
        for entry in it:
            m = _CROP.match(entry.name)
            if m and int(m.group(1)) > 0 and crop_name(int(m.group(1)) - 1) == entry.name:
                frames.append(int(m.group(1)) - 1)
            elif m:
                misnamed.append(entry.name)
            elif not entry.name.startswith("."):
                others.append(entry.name)
    odd = []
    if misnamed:
        odd.append(
            f"{len(misnamed)} crop file(s) not named %05d.jpg (1-based), so never read: {_shown(misnamed)}"
        )
    if others:
        odd.append(f"{len(others)} crop file(s) not named <frame>.jpg (1-based): {_shown(others)}")
    arr = np.sort(np.asarray(frames, dtype=np.int64))
    size = None
    if len(arr):
        first = crop_name(int(arr[0]))
        try:
            from PIL import Image

            with Image.open(folder / first) as im:  # reads the header only
                size = tuple(im.size)
        except Exception as e:  # a broken crop is worth a note, not a failed index
            odd.append(f"crop {first} unreadable: {e}")
    return CropListing(arr, odd, size, len(misnamed))


def _shown(names: list[str], k: int = 3) -> str:
    return ", ".join(sorted(names)[:k]) + (", ..." if len(names) > k else "")


def _workers(cfg: DataConfig) -> int:
    # Probing is mostly waiting on the disk (and PyAV releases the GIL while reading), so threads pay off
    # beyond the core count.
    return cfg.probe_workers or min(16, (os.cpu_count() or 1) + 4)


def _safe(fn, *args):
    """The result, or the exception: one broken file becomes that subject's error, never a crashed index."""
    try:
        return fn(*args)
    except (AnnotationError, ProbeError, ReleaseError, OSError) as e:
        return e
    except Exception as e:  # e.g. a decoder library failing in a way of its own: name it, keep going
        return RuntimeError(f"{type(e).__name__}: {e}")


def _frame_times(probe: VideoProbe, n: int) -> np.ndarray:
    t = probe.frame_times
    if n <= len(t):
        return t[:n]
    extra = t[-1] + probe.frame_duration * np.arange(1, n - len(t) + 1)
    return np.concatenate([t, extra])


def _subjects(rel: Release, errors: list[str], warnings: list[str]) -> tuple[list[tuple], dict[str, int]]:
    """(subject, split, label file) in split order, and the sample counts of the test videos."""
    entries: list[tuple[str, str, Path | None]] = []
    for split in ("train", "val"):
        entries += [(s, split, f) for s, f in sorted(rel.label_files.get(split, {}).items())]
    counts: dict[str, int] = {}
    if rel.sample_file is not None:
        try:
            counts = read_sample_counts(rel.sample_file)
        except ReleaseError as e:
            errors.append(f"sample file unreadable: {e}")
    test: list[str] = []
    if rel.test_list is not None:
        try:
            test = read_release_list(rel.test_list)
        except ReleaseError as e:
            errors.append(f"test list unreadable: {e}")
    elif counts:
        test = list(counts)
        warnings.append(f"no test list: the test split is the {len(test)} videos of the sample file")
    if counts and test:
        extra = [s for s in counts if s not in set(test)]
        if extra:
            warnings.append(
                f"{len(extra)} video(s) in the sample file but not in the test list: {_few(extra)}"
            )
    entries += [(s, "test", None) for s in test]
    seen: dict[str, str] = {}
    unique = []
    for subject, split, f in entries:
        if subject in seen:
            errors.append(
                f"{subject}: listed in both {seen[subject]} and {split}; kept in {seen[subject]} only"
            )
            continue
        seen[subject] = split
        unique.append((subject, split, f))
    return unique, counts


def _few(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def _index(rel: Release, cfg: DataConfig, progress: Callable[[int, int], None] | None) -> IndexResult:
    errors, warnings = list(rel.problems), list(rel.notes)
    entries, sample_counts = _subjects(rel, errors, warnings)

    crop_dirs: set[str] = set()
    if rel.crops is not None:
        with os.scandir(rel.crops) as it:
            crop_dirs = {e.name for e in it if e.is_dir()}
        strays = sorted(crop_dirs - {s for s, _, _ in entries})
        if strays:
            warnings.append(f"{len(strays)} crop folder(s) belong to no split: {_few(strays)}")

    # Keyed by subject: where a release has no shared X.mp4 but X_left.mp4 and X_right.mp4, each side
    # must get its own file (keyed by X, one would silently take the other's audio).
    videos = {s: rel.video_for(s) for s, _, _ in entries}
    used = {p for p in videos.values() if p is not None}
    unused = sorted(name for name, p in rel.videos.items() if p not in used)
    if unused:
        warnings.append(f"{len(unused)} raw video(s) belong to no subject: {_few(unused)}")

    jobs: dict[tuple[str, str], object] = {}
    with ThreadPoolExecutor(_workers(cfg)) as pool:
        for path in sorted(used):  # each raw video once, however many subjects it serves
            jobs["probe", str(path)] = pool.submit(_safe, probe_video, path)
        for subject, _, label_file in entries:
            if label_file is not None:
                jobs["labels", subject] = pool.submit(_safe, read_annotations, label_file)
            if subject in crop_dirs:
                jobs["crops", subject] = pool.submit(_safe, list_crops, rel.crops / subject)
        done = 0
        results = {}
        for key, fut in jobs.items():
            results[key] = fut.result()
            done += 1
            if progress is not None:
                progress(done, len(jobs))

    rows = []
    for subject, split, label_file in entries:
        row = _row(subject, split, label_file, rel, results, sample_counts, videos, cfg)
        rows.append(row)
        errors += [f"{subject}: {e}" for e in row["errors"]]
        warnings += [f"{subject}: {m}" for m in row["mismatches"] + row["odd"]]
    table = pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)
    return IndexResult(table, errors, warnings, root=str(rel.root))


def _row(subject, split, label_file, rel, results, sample_counts, videos, cfg) -> dict:
    """One subject's index row from the parsed labels, the probe of its video and its crop listing."""
    row: dict = dict.fromkeys(SCHEMA)
    row.update(subject=subject, video=source_video(subject), split=split, mismatches=[], odd=[], errors=[])
    if label_file is not None:
        _labels_part(row, label_file, results.get(("labels", subject)))
    path = videos.get(subject)
    if path is not None:
        row["video"] = path.stem  # the raw video actually used: the audio grouping key downstream
    probe = results.get(("probe", str(path)))
    _video_part(row, path, probe, cfg)
    if split == "test":
        if subject in sample_counts:
            row["sample_rows"] = row["n_frames"] = sample_counts[subject]
        elif isinstance(probe, VideoProbe):
            row["n_frames"] = probe.n_frames
            row["odd"].append("not in the sample file: frame axis = decoded video frames")
        else:
            row["errors"].append("not in the sample file and no readable video: frame count unknown")
    if isinstance(probe, VideoProbe) and row["n_frames"] is not None:
        _axis_times(row, probe)
    _crops_part(row, rel, results.get(("crops", subject)))
    if row["n_frames"] == 0:
        row["errors"].append("the frame axis is empty")
    row["usable"] = not row["errors"]
    return row


def _labels_part(row: dict, label_file: Path, ann) -> None:
    row["label_file"] = str(label_file)
    if not isinstance(ann, Annotations):
        row["errors"].append(f"annotation file unusable: {ann}")
        return
    row.update(
        label_rows=len(ann),
        valid_labels=ann.n_valid,
        unlabelled_runs=false_runs(ann.valid),
        n_frames=len(ann),
    )
    row["odd"] += [f"label file: {n}" for n in ann.notes]


def _video_part(row: dict, path: Path | None, probe, cfg: DataConfig) -> None:
    if path is None:
        where = ", ".join(cfg.video_dirs)
        exts = "/".join(cfg.video_exts)
        _media_problem(row, f"no raw video {row['video']} ({exts}) below data.video_dirs ({where})", "audio")
        return
    row["video_path"] = str(path)
    if not isinstance(probe, VideoProbe):
        _media_problem(row, f"raw video unreadable: {probe}", "audio")
        return
    if path.stem != source_video(row["subject"]):
        row["odd"].append(f"raw video found under the subject's own name {path.name}")
    row.update(
        decoded_frames=probe.n_frames,
        fps=probe.fps,
        fps_nominal=probe.nominal_fps,
        vfr=probe.vfr,
        video_start=probe.video_start,
        duration=probe.duration,
        width=probe.width,
        height=probe.height,
        has_audio=probe.has_audio,
        audio_rate=probe.audio_rate,
        audio_channels=probe.audio_channels,
        audio_start=probe.audio_start,
        audio_codec=probe.audio_codec,
        probe_method=probe.method,
    )
    row["odd"] += list(probe.notes)
    if probe.start_offset > 0.5 * probe.frame_duration:
        audio = f", audio starts at {probe.audio_start:.3f} s" if probe.audio_start is not None else ""
        row["odd"].append(
            f"video stream starts at {probe.video_start:.3f} s, after the container start "
            f"{probe.container_start:.3f} s{audio}"
        )
    row["odd"] += _name_fps_check(path.stem, probe, row)


def _axis_times(row: dict, probe: VideoProbe) -> None:
    n = row["n_frames"]
    row["frame_times"] = _frame_times(probe, n).tolist()
    if n != probe.n_frames:
        what = "label rows" if row["split"] != "test" else "sample rows"
        msg = f"{what} {n} vs video frames {probe.n_frames} ({n - probe.n_frames:+d})"
        if n > probe.n_frames:
            msg += (
                f"; timestamps of the last {n - probe.n_frames} frames extrapolated at "
                f"{probe.frame_duration * 1e3:.1f} ms"
            )
        row["mismatches"].append(msg)


def _crops_part(row: dict, rel: Release, crops) -> None:
    if crops is None:
        where = f"no folder {rel.crops / row['subject']}" if rel.crops else "the release has no crop folder"
        _media_problem(row, f"no crops at all: {where}", "visual")
        if row["n_frames"]:  # every frame of the axis is a frame without a face
            row.update(crops_present=0, crops_beyond=0, missing_crop_runs=[[0, row["n_frames"]]])
        return
    if not isinstance(crops, CropListing):
        _media_problem(row, f"crop folder unreadable: {crops}", "visual")
        return
    row["crop_dir"] = str(rel.crops / row["subject"])
    row["crop_size"] = list(crops.size) if crops.size else None
    row["odd"] += crops.odd
    n = row["n_frames"]
    if n is None:
        return
    inside = crops.frames[crops.frames < n]
    beyond = crops.frames[crops.frames >= n]
    present = np.zeros(n, dtype=bool)
    present[inside] = True
    row.update(crops_present=len(inside), crops_beyond=len(beyond), missing_crop_runs=false_runs(present))
    if len(beyond):
        row["mismatches"].append(
            f"{len(beyond)} crop file(s) past the frame axis of {n} frames (up to {int(beyond[-1]) + 1:05d}.jpg)"
        )
    if not len(inside):
        _media_problem(
            row,
            f"no crops at all within the {n} frames ({len(crops.frames)} file(s) in {row['crop_dir']})",
            "visual",
        )


def _media_problem(row: dict, what: str, kind: str) -> None:
    """A missing video or crop folder: a train/val subject cannot be learned from, so it is unusable.
    A test subject must be predicted whatever is missing (the submission needs every frame of every
    listed video), so it stays usable and is predicted from the other modality."""
    if row["split"] != "test":
        row["errors"].append(what)
    else:
        row["odd"].append(f"{what}; test subject predicted anyway: {kind} features are zeros (mask False)")


def _name_fps_check(stem: str, probe: VideoProbe, row: dict) -> list[str]:
    """Compare the fps in a ``<id>-<fps>-<WxH>`` name with the container's timestamps."""
    m = _NAME.match(stem)
    if not m:
        return []
    named = float(m.group("fps"))
    row["fps_in_name"] = named
    # A variable-rate video has no single rate for its name to get right; its VFR note says enough.
    # Names carry whole numbers (30 for 29.97): allow that rounding plus a 2 % slack.
    if not probe.vfr and abs(named - probe.fps) > max(0.51, 0.02 * probe.fps):
        return [
            f"wrong fps in file name: the name says {m.group('fps')} fps, the timestamps {probe.fps:.2f} fps"
        ]
    return []


# ---- building, saving, loading ------------------------------------------------------------------------
def _fingerprint(rel: Release, cfg: DataConfig) -> str:
    """Changes when the data config or any file the index read changes (size/mtime; crop folders by the
    mtime of the folder, which moves whenever a crop is added or removed)."""
    from abaw.config import to_dict

    h = hashlib.sha256()
    settings = {k: v for k, v in to_dict(cfg).items() if k != "probe_workers"}  # workers change no result
    h.update(json.dumps([INDEX_VERSION, str(rel.root), settings], sort_keys=True, default=str).encode())
    paths = [rel.test_list, rel.sample_file, rel.crops, *rel.videos.values()]
    paths += [f for split in rel.label_files.values() for f in split.values()]
    if rel.crops is not None:
        with os.scandir(rel.crops) as it:
            paths += [Path(e.path) for e in it if e.is_dir()]
    for p in sorted(str(p) for p in paths if p is not None):
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    h.update("\n".join(rel.problems + rel.notes).encode())
    return h.hexdigest()[:20]


def _meta_path(cfg) -> Path:
    return cfg.index_path.with_name("index.json")


def _build(cfg, rel: Release, progress) -> IndexResult:
    from abaw.config import save_config
    from abaw.utils import atomic_path, atomic_write_json, code_version

    fingerprint = _fingerprint(rel, cfg.data)  # before reading: a file changed meanwhile forces a rebuild
    result = _index(rel, cfg.data, progress)
    result.index_path = str(cfg.index_path)
    result.built = datetime.datetime.now().isoformat(timespec="seconds")
    with atomic_path(cfg.index_path) as tmp:
        result.table.write_parquet(tmp)
    save_config(cfg, cfg.index_path.with_name("config.yaml"))
    meta = dict(
        version=INDEX_VERSION,
        fingerprint=fingerprint,
        root=str(rel.root),
        built=result.built,
        code=code_version(),
        subjects=result.table.height,
        errors=result.errors,
        warnings=result.warnings,
    )
    atomic_write_json(_meta_path(cfg), meta)  # last: its presence means the index is complete
    return result


def build_index(cfg, progress: Callable[[int, int], None] | None = None) -> IndexResult:
    """Index the release at ``cfg.data_root`` and save it to ``cfg.index_path`` (always rebuilds)."""
    from abaw.utils import file_lock

    rel = discover(cfg.data, cfg.data_root)
    with file_lock(cfg.release_cache / ".index.lock"):
        return _build(cfg, rel, progress)


def load_index(cfg, progress: Callable[[int, int], None] | None = None) -> IndexResult:
    """The saved index when it matches the release and config, else a fresh build.

    Several processes may call this at once: the first builds under a file lock, the others wait and read.
    """
    from abaw.utils import file_lock

    rel = discover(cfg.data, cfg.data_root)
    with file_lock(cfg.release_cache / ".index.lock"):
        meta = _read_meta(cfg)
        if (
            meta is not None
            and meta.get("fingerprint") == _fingerprint(rel, cfg.data)
            and cfg.index_path.is_file()
        ):
            return IndexResult(
                pl.read_parquet(cfg.index_path),
                list(meta["errors"]),
                list(meta["warnings"]),
                root=meta["root"],
                index_path=str(cfg.index_path),
                built=meta["built"],
                from_cache=True,
            )
        return _build(cfg, rel, progress)


def _read_meta(cfg) -> dict | None:
    try:
        meta = json.loads(_meta_path(cfg).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("version") == INDEX_VERSION else None


# ---- summary and command line -------------------------------------------------------------------------
_FPS_BINS = [(0, 15, "<15"), (15, 25, "15-25"), (25, 29, "25-29"), (29, 31, "29-31"), (31, 1e9, ">=31")]


def _lines(title: str, items: list[str], indent: str = "  ") -> list[str]:
    return [f"{title} ({len(items)}):"] + [indent + i for i in items] if items else [f"{title}: none"]


def _runs_text(runs: list[list[int]], k: int = 4) -> str:
    shown = " ".join(f"[{s},{e})" for s, e in runs[:k])
    return shown + (f" ... ({len(runs)} runs)" if len(runs) > k else "")


def summary_text(result: IndexResult) -> str:
    """A human summary: split counts, frame rates, mismatches, audio, missing crops, odd files, errors."""
    t = result.table
    out = [f"Release {result.root}"]
    if result.index_path:
        how = "read from cache" if result.from_cache else "built"
        out.append(f"Index {result.index_path} ({how} {result.built})")
    out.append("")
    out.append(f"{'split':<6}{'subjects':>9}{'usable':>8}{'frames':>11}{'labelled':>11}{'crops':>11}")
    for split in ("train", "val", "test", None):
        part = t if split is None else t.filter(pl.col("split") == split)
        if split is not None and part.is_empty():
            continue
        frames = int(part["n_frames"].fill_null(0).sum())
        labelled = int(part["valid_labels"].fill_null(0).sum())
        crops = int(part["crops_present"].fill_null(0).sum())
        labelled_text = f"{labelled:>11,}" if split != "test" else f"{'-':>11}"
        out.append(
            f"{split or 'all':<6}{part.height:>9}{int(part['usable'].sum()):>8}{frames:>11,}"
            f"{labelled_text}{crops:>11,}"
        )
    videos = t.filter(pl.col("decoded_frames").is_not_null()).unique(
        "video", keep="first", maintain_order=True
    )
    out.append("")
    if videos.height:
        fps = videos["fps"].to_numpy()
        bins = "  ".join(f"{label}: {int(((fps >= lo) & (fps < hi)).sum())}" for lo, hi, label in _FPS_BINS)
        slowest = videos.sort("fps").row(0, named=True)
        out.append(
            f"Raw videos probed: {videos.height} (decoded frames {int(videos['decoded_frames'].sum()):,}); "
            f"fps median {np.median(fps):.2f}, lowest {slowest['fps']:.2f} ({slowest['video']}), "
            f"highest {fps.max():.2f}"
        )
        out.append(f"  fps distribution: {bins}")
    per_video = [
        (r["video"], o)
        for r in videos.iter_rows(named=True)
        for o in r["odd"]
        if o.startswith(("wrong fps", "variable frame rate", "video stream starts"))
    ]
    for key, title in (
        ("wrong fps", "Wrong fps in file names"),
        ("variable frame rate", "Variable frame rate"),
        ("video stream starts", "Video stream starting after the container start"),
    ):
        out += _lines(title, [f"{v}: {o}" for v, o in per_video if o.startswith(key)])
    no_audio = videos.filter(~pl.col("has_audio"))["video"].to_list()
    out += _lines("Videos without audio", [_few(no_audio, 20)] if no_audio else [])
    out.append("")
    out += _lines(
        "Count mismatches (label/sample rows vs video frames vs crop files)",
        [f"{r['subject']}: {'; '.join(r['mismatches'])}" for r in t.iter_rows(named=True) if r["mismatches"]],
    )
    missing = t.filter(pl.col("missing_crop_runs").list.len() > 0)
    total_missing = sum(sum(e - s for s, e in runs) for runs in missing["missing_crop_runs"].to_list())
    out += _lines(
        f"Missing crops (no face detected; {total_missing:,} frames in all)",
        [
            f"{r['subject']}: {sum(e - s for s, e in r['missing_crop_runs'])} of {r['n_frames']} frames: "
            f"{_runs_text(r['missing_crop_runs'])}"
            for r in missing.iter_rows(named=True)
        ],
    )
    unl = t.filter(pl.col("unlabelled_runs").list.len() > 0)
    out += _lines(
        "Unannotated (-5) runs (masked out of every loss and metric)",
        [f"{r['subject']}: {_runs_text(r['unlabelled_runs'])}" for r in unl.iter_rows(named=True)],
    )
    odd_keys = ("wrong fps", "variable frame rate", "video stream starts")
    odd = [
        f"{r['subject']}: {o}"
        for r in t.iter_rows(named=True)
        for o in r["odd"]
        if not o.startswith(odd_keys)
    ]
    subjects = set(t["subject"])
    release_notes = [w for w in result.warnings if w.split(": ", 1)[0] not in subjects]
    out += _lines("Odd files and notes", release_notes + odd)
    out.append("")
    if result.errors:
        out += _lines("ERRORS (these make subjects or the release unusable)", result.errors)
    else:
        out.append("No errors: every subject is usable.")
    return "\n".join(out)


def cli_data(cfg, args: argparse.Namespace) -> int:
    """``abaw data``: index the release (or reuse a fresh index), print the summary; exit 1 on errors."""

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            print(
                f"\rindexing: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True
            )

    t0 = time.perf_counter()
    try:
        if getattr(args, "rebuild", False):
            result = build_index(cfg, progress)
        else:
            result = load_index(cfg, progress)
    except ReleaseError as e:
        print(f"abaw data: {e}", file=sys.stderr)
        return 2
    print(summary_text(result))
    print(f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 1 if result.errors else 0
