"""Splits: the official split as published, K folds grouped by source video, reproducible."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from abaw.training.folds import Split, assign_folds, make_split


def index_table(n_videos: int = 30, seed: int = 1) -> pl.DataFrame:
    """Videos of varied length; every third one has a _left/_right pair; a few official val/test."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_videos):
        video = f"{i:03d}-30-640x480"
        split = "val" if i % 5 == 0 else "train"
        names = [f"{video}_left", f"{video}_right"] if i % 3 == 0 else [video]
        n = int(rng.integers(500, 20000))
        rows += [{"subject": s, "video": video, "split": split, "n_frames": n, "usable": True} for s in names]
    rows += [{"subject": f"test{i}", "video": f"test{i}", "split": "test", "n_frames": 100, "usable": True}
             for i in range(3)]
    rows.append({"subject": "broken", "video": "broken", "split": "train", "n_frames": 100, "usable": False,
                 "errors": ["no readable video"]})
    # Shuffled rows: the folds must not depend on the order of the table (or of a directory listing).
    return pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=seed)


def test_folds_are_reproducible_and_independent_of_row_order():
    table = index_table()
    a = make_split(table, folds=5, fold=2, seed=7)
    b = make_split(table, folds=5, fold=2, seed=7)
    c = make_split(table.sample(fraction=1.0, shuffle=True, seed=99), folds=5, fold=2, seed=7)
    assert a == b == c
    other = make_split(table, folds=5, fold=2, seed=8)
    assert other.fold_of_video != a.fold_of_video  # the seed does reach the assignment


def test_folds_partition_subjects_by_source_video():
    table = index_table()
    labelled = set(table.filter((pl.col("split") != "test") & pl.col("usable"))["subject"])
    seen_val: list[str] = []
    for k in range(5):
        s = make_split(table, folds=5, fold=k, seed=0)
        assert set(s.train).isdisjoint(s.val)
        assert set(s.train) | set(s.val) == labelled  # test and unusable subjects never appear
        assert s.excluded == {"broken": "marked unusable in the index (no readable video)"}
        seen_val += s.val
        val_videos = {v.split("_")[0] for v in s.val}
        train_videos = {v.split("_")[0] for v in s.train}
        assert val_videos.isdisjoint(train_videos), "a left/right pair was split across train and val"
    assert sorted(seen_val) == sorted(labelled)  # every subject validated exactly once over the folds


def test_folds_keep_both_sides_together_when_each_has_its_own_raw_file():
    """With per-side raw files the index's ``video`` column is ``X_left``/``X_right``; the two people of
    one recording must still share a fold (grouped by the subject name without its side)."""
    rows = []
    for i in range(12):
        for side in ("_left", "_right"):
            rows.append({"subject": f"{i:03d}{side}", "video": f"{i:03d}{side}", "split": "train",
                         "n_frames": 100 + 37 * i, "usable": True})
    table = pl.DataFrame(rows)
    for k in range(3):
        s = make_split(table, folds=3, fold=k, seed=0)
        strip = lambda names: {n.rsplit("_", 1)[0] for n in names}  # noqa: E731
        assert strip(s.train).isdisjoint(strip(s.val)), f"fold {k}: a pair split across train and val"
        assert set(s.fold_of_video) == {f"{i:03d}" for i in range(12)}


def test_folds_balance_frames():
    groups = {f"v{i}": n for i, n in enumerate(np.random.default_rng(0).integers(500, 20000, 60))}
    fold_of = assign_folds(groups, 5, seed=3)
    load = np.zeros(5)
    for g, f in fold_of.items():
        load[f] += groups[g]
    assert load.max() / load.min() < 1.3
    with pytest.raises(ValueError, match="cannot build 5 folds from 3"):
        assign_folds({"a": 1, "b": 2, "c": 3}, 5, seed=0)


def test_official_split_keeps_validation_out_of_training(tmp_path):
    table = index_table()
    s = make_split(table, folds=0)
    official_val = set(table.filter(pl.col("split") == "val")["subject"])
    assert set(s.val) == official_val
    assert official_val.isdisjoint(s.train)
    assert s.mode == "official" and s.official_val_in_train == []
    # K folds do train on official validation subjects, and say which.
    k = make_split(table, folds=4, fold=1, seed=0)
    assert set(k.official_val_in_train) == official_val & set(k.train) != set()
    # The record beside the checkpoint round-trips.
    k.save(tmp_path / "folds.json")
    assert Split.load(tmp_path / "folds.json") == k


def test_bad_split_requests_fail_clearly():
    table = index_table()
    with pytest.raises(ValueError, match="fold 5 is not in"):
        make_split(table, folds=5, fold=5)
    no_val = table.filter(pl.col("split") != "val")
    with pytest.raises(ValueError, match="0 validation"):
        make_split(no_val, folds=0)
