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
import dataclasses
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
import yaml

from abaw.data.annotations import AnnotationError, Annotations, false_runs, read_annotations
from abaw.data.config import DataConfig
from abaw.data.crops import CropListing, list_crops
from abaw.data.probe import ProbeError, VideoProbe, probe_video
from abaw.data.release import (
    Release,
    ReleaseError,
    discover,
    read_release_list,
    read_sample_counts,
    source_video,
)
from abaw.data.summary import few, summary_text

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


def _subjects(
    rel: Release, errors: list[str], warnings: list[str]
) -> tuple[list[tuple], dict[str, int] | ReleaseError]:
    """(subject, split, label file) in split order, and the sample counts of the test videos (the error
    when the sample file exists but cannot be read)."""
    entries: list[tuple[str, str, Path | None]] = []
    for split in ("train", "val"):
        entries += [(s, split, f) for s, f in sorted(rel.label_files.get(split, {}).items())]
    counts: dict[str, int] | ReleaseError = {}
    if rel.sample_file is not None:
        try:
            counts = read_sample_counts(rel.sample_file)
        except ReleaseError as e:
            errors.append(f"sample file unreadable: {e}")
            counts = e  # unknown, not empty: no test subject may fall back to another frame axis
    test: list[str] = []
    if rel.test_list is not None:
        try:
            test = read_release_list(rel.test_list)
        except ReleaseError as e:
            errors.append(f"test list unreadable: {e}")
    elif isinstance(counts, dict) and counts:
        test = list(counts)
        warnings.append(f"no test list: the test split is the {len(test)} videos of the sample file")
    if isinstance(counts, dict) and counts and test:
        extra = [s for s in counts if s not in set(test)]
        if extra:
            warnings.append(
                f"{len(extra)} video(s) in the sample file but not in the test list: {few(extra)}"
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


def _index(rel: Release, cfg: DataConfig, progress: Callable[[int, int], None] | None) -> IndexResult:
    errors, warnings = list(rel.problems), list(rel.notes)
    entries, sample_counts = _subjects(rel, errors, warnings)

    crop_dirs: set[str] = set()
    if rel.crops is not None:
        with os.scandir(rel.crops) as it:
            crop_dirs = {e.name for e in it if e.is_dir()}
        strays = sorted(crop_dirs - {s for s, _, _ in entries})
        if strays:
            warnings.append(f"{len(strays)} crop folder(s) belong to no split: {few(strays)}")

    # Keyed by subject: where a release has no shared X.mp4 but X_left.mp4 and X_right.mp4, each side
    # must get its own file (keyed by X, one would silently take the other's audio).
    videos = {s: rel.video_for(s) for s, _, _ in entries}
    used = {p for p in videos.values() if p is not None}
    unused = sorted(name for name, p in rel.videos.items() if p not in used)
    if unused:
        warnings.append(f"{len(unused)} raw video(s) belong to no subject: {few(unused)}")

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
        if isinstance(sample_counts, ReleaseError):
            # The frame axis of a test subject is its sample-file row count; guessing it from the video
            # would give features (and predictions) of another length, so the subject stops here.
            row["errors"].append(f"frame axis unknown, the sample file is unreadable: {sample_counts}")
        elif subject in sample_counts:
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
    h = hashlib.sha256()
    settings = {
        k: v for k, v in dataclasses.asdict(cfg).items() if k != "probe_workers"
    }  # workers change no result
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
    from abaw.utils import atomic_path, atomic_write_json, atomic_write_text, code_version

    fingerprint = _fingerprint(rel, cfg.data)  # before reading: a file changed meanwhile forces a rebuild
    result = _index(rel, cfg.data, progress)
    result.index_path = str(cfg.index_path)
    result.built = datetime.datetime.now().isoformat(timespec="seconds")
    with atomic_path(cfg.index_path) as tmp:
        result.table.write_parquet(tmp)
    # The resolved config beside the index. Written here as plain YAML of the dataclasses, so that the
    # data layer never imports the config composer above it (the layers import downward only).
    atomic_write_text(
        cfg.index_path.with_name("config.yaml"), yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
    )
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


# ---- command line ----------------------------------------------------------------------------------
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
