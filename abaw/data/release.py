"""Find the parts of an Aff-Wild2 release on disk: annotation sets, crop folders, raw videos, test lists.

Editions differ in folder names (``6th ABAW Annotations``, ``8th ABAW Annotations``, ...) and in where
the videos live (``batch1/``, ``batch2/``, ...), so every location is a pattern from ``DataConfig`` and
the tree is searched once. The crop folders hold millions of files: the search never enters them.
Folders named in ``exclude_dirs`` (the synthetic release's ``ground_truth/``) are never entered either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from abaw.data.config import DataConfig
from abaw.errors import AbawError

_SIDES = ("_left", "_right")


class ReleaseError(ValueError, AbawError):
    """A release file (test list, sample file) that cannot be read; the message names file and line."""


def crop_name(frame: int) -> str:
    """File name of the crop of 0-based frame ``frame``: the release's ``%05d.jpg`` of the 1-based number.

    The one spelling every stage uses: the index counts these names, extraction reads them, the
    submission writes them. A crop saved under another spelling (``1.jpg``) is never read."""
    return f"{frame + 1:05d}.jpg"


def source_video(subject: str) -> str:
    """The raw video of a subject: ``X_left``/``X_right`` share video ``X``; other names are unchanged."""
    for side in _SIDES:
        if subject.endswith(side) and len(subject) > len(side):
            return subject[: -len(side)]
    return subject


@dataclass
class Release:
    root: Path
    annotations: Path | None = None  # the folder holding Train_Set/ and Validation_Set/
    label_files: dict[str, dict[str, Path]] = field(default_factory=dict)  # split -> subject -> file
    crops: Path | None = None  # cropped_aligned/
    crops_unaligned: Path | None = None  # cropped/, when the release has it
    videos: dict[str, Path] = field(default_factory=dict)  # video name (file stem) -> file
    test_list: Path | None = None
    sample_file: Path | None = None
    problems: list[str] = field(default_factory=list)  # make (part of) the release unusable
    notes: list[str] = field(default_factory=list)  # odd but harmless

    def video_for(self, subject: str) -> Path | None:
        """The raw video of ``subject`` (``_left``/``_right`` stripped; the full name as a last resort)."""
        return self.videos.get(source_video(subject)) or self.videos.get(subject)


def _rel(path: Path, root: Path) -> PurePosixPath:
    try:
        return PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        return PurePosixPath(path.as_posix())


def _under(path: Path, folders: list[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def discover(cfg: DataConfig, root: str | os.PathLike) -> Release:
    """Locate every part of the release below ``root`` in one pruned walk (plus outside video folders).

    Missing or ambiguous parts are listed in ``Release.problems`` (all of them, not just the first);
    only a missing root raises.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ReleaseError(
            f"release root {root} is not a folder (set data.root or --data; `make data` writes the demo release)"
        )
    rel = Release(root=root)
    exclude = set(cfg.exclude_dirs)
    video_dirs = [(root / d).resolve() for d in cfg.video_dirs]
    exts = [e.lower() if e.startswith(".") else f".{e.lower()}" for e in cfg.video_exts]

    found: dict[str, list[Path]] = {
        "annotations": [],
        "crops": [],
        "crops_unaligned": [],
        "test_list": [],
        "sample_file": [],
    }
    videos: dict[str, list[Path]] = {}
    dir_patterns = {
        "annotations": cfg.annotations,
        "crops": cfg.crops,
        "crops_unaligned": cfg.crops_unaligned,
    }
    for d in video_dirs:
        if not d.is_dir():
            rel.problems.append(f"video folder {d} (data.video_dirs) does not exist")
    tops = [root] + [d for d in video_dirs if d.is_dir() and not _under(d, [root])]
    seen: set[Path] = set()
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            here = Path(dirpath)
            real = here.resolve()
            if real in seen:  # a symlink loop or a folder reached twice
                dirnames[:] = []
                continue
            seen.add(real)
            keep = []
            for d in sorted(dirnames):
                if d.startswith(".") or d in exclude:
                    continue
                sub = _rel(here / d, root)
                kind = next((k for k, pat in dir_patterns.items() if pat and sub.match(pat)), None)
                if kind:
                    found[kind].append(here / d)
                # The crop folders hold millions of files and nothing else: never walk them. (The
                # annotation folder is small and may hold the test lists, so it is walked.)
                if kind not in ("crops", "crops_unaligned"):
                    keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                path = here / name
                sub = _rel(path, root)
                if cfg.test_list and sub.match(cfg.test_list):
                    found["test_list"].append(path)
                elif cfg.sample_file and sub.match(cfg.sample_file):
                    found["sample_file"].append(path)
                elif path.suffix.lower() in exts and _under(path, video_dirs):
                    videos.setdefault(path.stem, []).append(path)

    what = {
        "annotations": f"annotation folder (data.annotations={cfg.annotations!r})",
        "crops": f"crop folder (data.crops={cfg.crops!r})",
        "crops_unaligned": f"unaligned crop folder (data.crops_unaligned={cfg.crops_unaligned!r})",
        "test_list": f"test set release list (data.test_list={cfg.test_list!r})",
        "sample_file": f"sample prediction file (data.sample_file={cfg.sample_file!r})",
    }
    for kind, paths in found.items():
        paths = sorted(set(paths))
        if len(paths) > 1:
            listed = ", ".join(str(_rel(p, root)) for p in paths)
            rel.problems.append(f"several matches for the {what[kind]}: {listed}; set the pattern to one")
        elif paths:
            setattr(rel, kind, paths[0])
        elif kind in ("annotations", "crops"):
            rel.problems.append(f"no {what[kind]} below {root}")
        elif kind in ("test_list", "sample_file"):  # a release without a test split is still usable
            rel.notes.append(f"no {what[kind]} below {root}")

    if rel.annotations is not None:
        for split, sub in (("train", cfg.train_set), ("val", cfg.validation_set)):
            rel.label_files[split] = _label_files(rel, rel.annotations / sub, split)

    for stem, paths in sorted(videos.items()):
        # Earlier extensions win (.mp4 before .avi); within one extension, the first path in sorted order.
        paths.sort(key=lambda p: (exts.index(p.suffix.lower()), str(p)))
        rel.videos[stem] = paths[0]
        if len(paths) > 1:
            others = ", ".join(str(_rel(p, root)) for p in paths[1:])
            rel.notes.append(f"video {stem}: using {_rel(paths[0], root)}, ignoring {others}")
    return rel


def _label_files(rel: Release, folder: Path, split: str) -> dict[str, Path]:
    if not folder.is_dir():
        rel.problems.append(f"{split} annotation folder {folder} does not exist")
        return {}
    files = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and entry.name.lower().endswith(".txt"):
            files[entry.name[:-4]] = Path(entry.path)
        elif not entry.name.startswith("."):
            rel.notes.append(f"odd entry in {split} annotations: {entry.path} (not a .txt file)")
    if not files:
        rel.problems.append(f"{split} annotation folder {folder} holds no .txt files")
    return files


def _text_lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ReleaseError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    return text.splitlines()


def read_release_list(path: str | os.PathLike) -> list[str]:
    """Test video names, one per line, in file order (blank lines skipped, duplicates refused)."""
    path = Path(path)
    names: list[str] = []
    first: dict[str, int] = {}
    for i, line in enumerate(_text_lines(path), start=1):
        name = line.strip()
        if not name:
            continue
        if "," in name or "/" in name:
            raise ReleaseError(f"{path}:{i}: expected one video name per line, got {line!r}")
        if name in first:
            raise ReleaseError(f"{path}:{i}: {name!r} listed twice (first on line {first[name]})")
        first[name] = i
        names.append(name)
    if not names:
        raise ReleaseError(f"{path}: no video names")
    return names


def read_sample_counts(path: str | os.PathLike) -> dict[str, int]:
    """Rows per video in the sample prediction file (``image_location,valence,arousal``), in file order.

    Each video's rows must be contiguous and number its frames 1..N: the count is the length of the frame
    axis that the test predictions must have. The file has about a million rows: polars counts them, and
    only a file it cannot vouch for goes through the line-by-line check that names the bad line.
    """
    path = Path(path)
    try:
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf").rstrip()
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read: {e.strerror or e}") from e
    counts = _sample_counts_fast(data)
    if counts is not None:
        return counts
    lines = _text_lines(path)
    if not lines or lines[0].split(",")[0].strip().lower() != "image_location":
        got = lines[0] if lines else ""
        raise ReleaseError(f"{path}:1: header must start with 'image_location', got {got!r}")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise ReleaseError(f"{path}: no rows after the header")
    return _sample_counts_exact(path, lines)


def _sample_counts_fast(data: bytes) -> dict[str, int] | None:
    import io

    import numpy as np
    import polars as pl

    try:
        loc = pl.read_csv(io.BytesIO(data), columns=[0], infer_schema=False, quote_char=None).to_series()
    except Exception:  # the exact reader names the problem
        return None
    if loc.name != "image_location" or len(loc) == 0 or loc.null_count():
        return None
    parts = loc.str.split_exact("/", 1).struct.unnest()
    video, image = parts["field_0"], parts["field_1"]
    if image.null_count() or not image.str.ends_with(".jpg").all():
        return None
    frame = image.str.strip_suffix(".jpg").cast(pl.Int64, strict=False)
    if frame.null_count():
        return None
    runs = video.rle()
    names, lengths = runs.struct.field("value"), runs.struct.field("len").to_numpy()
    if names.n_unique() != len(names):
        return None
    starts = np.cumsum(lengths) - lengths
    expected = np.arange(len(video)) - np.repeat(starts, lengths) + 1
    if not np.array_equal(frame.to_numpy(), expected):
        return None
    return dict(zip(names.to_list(), lengths.tolist(), strict=True))


def _sample_counts_exact(path: Path, lines: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    video = None
    for lineno in range(2, len(lines) + 1):
        line = lines[lineno - 1]
        name, sep, image = line.split(",", 1)[0].strip().rpartition("/")
        stem = image[:-4] if image.endswith(".jpg") else ""
        if not sep or not name or not stem.isdigit():
            raise ReleaseError(f"{path}:{lineno}: expected '<video>/<frame>.jpg,...', got {line!r}")
        if name != video:
            if name in counts:
                raise ReleaseError(f"{path}:{lineno}: rows of {name} resume after other videos' rows")
            video = name
            counts[name] = 0
        counts[name] += 1
        if int(stem) != counts[name]:
            raise ReleaseError(
                f"{path}:{lineno}: {name} frame {int(stem)} where frame {counts[name]} was expected "
                "(each video's rows must number its frames 1..N in order)"
            )
    return counts
