"""Which subjects train and which validate: the official split, or K folds over train+validation that
keep every source video (``<video>_left`` and ``<video>_right``) inside one fold.

Folds are built from a *sorted* list of groups and an explicit ``numpy.random.Generator`` (never from a
directory listing or the global RNG), so the same seed gives the same folds on every machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from abaw.data.release import source_video
from abaw.utils import atomic_write_json

SPLIT_TRAIN, SPLIT_VAL = "train", "val"


@dataclass
class Split:
    mode: str  # "official" | "kfold"
    train: list[str]
    val: list[str]
    fold: int = 0
    folds: int = 0
    seed: int = 0
    # Official validation subjects that this split trains on (only ever in kfold mode, and said so).
    official_val_in_train: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # subject -> why it is in neither list
    fold_of_video: dict[str, int] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Split:
        return cls(**json.loads(Path(path).read_text()))


def assign_folds(groups: dict[str, int], k: int, seed: int) -> dict[str, int]:
    """Fold of every group (source video), balancing frames across folds.

    Groups are visited in a seeded random order of their sorted names, each going to the fold with the
    fewest frames so far (then the fewest videos): folds differ between seeds yet stay within about one
    video's length of each other, and the result depends only on (names, sizes, k, seed).
    """
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    names = sorted(groups)
    if len(names) < k:
        raise ValueError(f"cannot build {k} folds from {len(names)} source video(s)")
    rng = np.random.default_rng(seed)
    load = np.zeros(k, dtype=np.int64)
    count = np.zeros(k, dtype=np.int64)
    out: dict[str, int] = {}
    for i in rng.permutation(len(names)):
        g = names[i]
        f = int(np.lexsort((count, load))[0])
        out[g] = f
        load[f] += groups[g]
        count[f] += 1
    return dict(sorted(out.items()))


def make_split(table, folds: int = 0, fold: int = 0, seed: int = 0) -> Split:
    """Build the split from the index table (polars: subject, split, n_frames, optional video, usable).

    ``folds == 0``: train = official train subjects, val = official validation subjects. ``folds >= 2``:
    fold ``fold`` of K folds over both, by source video; the official validation subjects that end
    up in training are listed in ``official_val_in_train``.
    """
    excluded: dict[str, str] = {}
    rows = []
    for r in table.sort("subject").iter_rows(named=True):
        if r["split"] not in (SPLIT_TRAIN, SPLIT_VAL):
            continue
        if not r.get("usable", True):
            why = "; ".join(r.get("errors") or []) or "no reason recorded"
            excluded[r["subject"]] = f"marked unusable in the index ({why})"
            continue
        if not r.get("n_frames"):
            excluded[r["subject"]] = "no frames"
            continue
        rows.append(r)
    if not rows:
        raise ValueError("the index has no usable train/validation subjects")
    if folds == 0:
        train = [r["subject"] for r in rows if r["split"] == SPLIT_TRAIN]
        val = [r["subject"] for r in rows if r["split"] == SPLIT_VAL]
        if not train or not val:
            raise ValueError(f"official split needs train and validation subjects, got {len(train)} "
                             f"train and {len(val)} validation")
        return Split("official", train, val, seed=seed, excluded=excluded)

    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not in [0, {folds})")
    sizes: dict[str, int] = {}
    video_of: dict[str, str] = {}
    for r in rows:
        # Always the subject name without its side: when ``X_left``/``X_right`` each have their own raw
        # file, the index's ``video`` column names the two files, yet both sides are one recording.
        video = source_video(r["subject"])
        video_of[r["subject"]] = video
        sizes[video] = sizes.get(video, 0) + int(r["n_frames"])
    fold_of_video = assign_folds(sizes, folds, seed)
    train = [r["subject"] for r in rows if fold_of_video[video_of[r["subject"]]] != fold]
    val = [r["subject"] for r in rows if fold_of_video[video_of[r["subject"]]] == fold]
    official_val = {r["subject"] for r in rows if r["split"] == SPLIT_VAL}
    return Split(
        "kfold", train, val, fold=fold, folds=folds, seed=seed,
        official_val_in_train=sorted(official_val.intersection(train)),
        excluded=excluded, fold_of_video=dict(sorted(fold_of_video.items())),
    )
