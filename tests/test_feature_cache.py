"""FeatureCache, SubjectWriter and the missing-crop fill policy: no torch, no models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abaw.features.cache import FeatureCache, fill_sources
from abaw.features.config import FeaturesConfig, parse_shard

# frames:       0  1  2  3  4  5  6  7  8  9
PRESENT = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], bool)


@pytest.mark.parametrize(
    "policy, expected",
    [
        # leading missing frames under `previous` take the first present frame
        ("previous", [2, 2, 2, 3, 3, 3, 3, 7, 7, 7]),
        # trailing missing frames under `next` take the last present frame
        ("next", [2, 2, 2, 3, 7, 7, 7, 7, 7, 7]),
        # 4 is nearer 3, 5 is a tie (3 vs 7: the earlier wins), 6 is nearer 7
        ("nearest", [2, 2, 2, 3, 3, 3, 7, 7, 7, 7]),
        ("zeros", [-1, -1, 2, 3, -1, -1, -1, 7, -1, -1]),
    ],
)
def test_fill_sources_policies(policy, expected):
    assert fill_sources(PRESENT, policy).tolist() == expected


@pytest.mark.parametrize("policy", ["previous", "next", "nearest", "zeros"])
def test_fill_sources_no_crops_all_zeros_and_all_present_identity(policy):
    assert fill_sources(np.zeros(4, bool), policy).tolist() == [-1] * 4
    assert fill_sources(np.ones(4, bool), policy).tolist() == [0, 1, 2, 3]
    assert fill_sources(np.zeros(0, bool), policy).tolist() == []


def test_fill_sources_rejects_unknown_policy():
    with pytest.raises(ValueError, match="fill policy"):
        fill_sources(PRESENT, "learned")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_fill_sources_properties(flags):
    present = np.array(flags, bool)
    idx = np.arange(len(present))
    real = np.flatnonzero(present)
    for policy in ("previous", "next", "nearest"):
        src = fill_sources(present, policy)
        if not len(real):
            assert (src == -1).all()
            continue
        assert (src[present] == idx[present]).all()  # real frames keep their own features
        assert present[src].all()  # every filled frame copies a real one
        dist = np.abs(real[None, :] - idx[:, None]).min(1)
        if policy == "nearest":
            assert (np.abs(src - idx) == dist).all()
        elif policy == "previous":
            after_first = idx >= real[0]
            assert (src[after_first] <= idx[after_first]).all()
            assert (src[~after_first] == real[0]).all()
        else:
            before_last = idx <= real[-1]
            assert (src[before_last] >= idx[before_last]).all()
            assert (src[~before_last] == real[-1]).all()


# ---- writer and reader ---------------------------------------------------------------------------
def _write(
    cache: FeatureCache, subject: str, present: np.ndarray, dim: int = 3, policy="previous", dtype="float16"
):
    n = len(present)
    rows = np.flatnonzero(present)
    feats = np.arange(n * dim, dtype=np.float32).reshape(n, dim)[rows] / 8
    with cache.lock(subject):
        with cache.writer(subject, n, dim, dtype) as w:
            for a in range(0, len(rows), 2):  # in batches, as the extractor does
                w.write(rows[a : a + 2], feats[a : a + 2])
            w.commit(present, fill_sources(present, policy))
    return np.arange(n * dim, dtype=np.float32).reshape(n, dim) / 8


def test_writer_round_trip_fills_from_sources(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    full = _write(cache, "s", PRESENT)
    feats, mask = cache.load("s")
    assert isinstance(feats, np.memmap) and feats.dtype == np.float16 and feats.shape == (10, 3)
    assert not feats.flags.writeable
    assert mask.dtype == bool and (mask == PRESENT).all()
    src = fill_sources(PRESENT, "previous")
    np.testing.assert_array_equal(np.asarray(feats), full[src].astype(np.float16))
    loaded, _ = cache.load("s", mmap=False)
    assert not isinstance(loaded, np.memmap)
    assert cache.has("s") and cache.has("s", 10) and cache.has("s", 10, 3)
    assert not cache.has("s", 11) and not cache.has("s", 10, 4)
    assert cache.subjects() == ["s"] and cache.dim == 3 and not cache.complete
    assert not list(tmp_path.rglob("*.tmp"))


def test_zeros_policy_and_float32(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    full = _write(cache, "s", PRESENT, policy="zeros", dtype="float32")
    feats, _ = cache.load("s")
    assert feats.dtype == np.float32
    np.testing.assert_array_equal(feats[PRESENT], full[PRESENT])
    assert (feats[~PRESENT] == 0).all()


def test_empty_subject(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    _write(cache, "empty", np.zeros(0, bool))
    feats, mask = cache.load("empty")
    assert feats.shape == (0, 3) and mask.shape == (0,)


def test_writer_abort_leaves_nothing(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    with pytest.raises(KeyboardInterrupt):
        with cache.writer("s", 10, 3, "float16") as w:
            w.write(np.array([0, 1]), np.ones((2, 3)))
            raise KeyboardInterrupt
    assert not cache.has("s")
    assert not [p for p in (tmp_path / "c").iterdir() if p.is_file()]


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e6])  # 1e6 overflows float16
def test_non_finite_features_refused(tmp_path, bad):
    cache = FeatureCache(tmp_path / "c")
    with cache.writer("s", 2, 2, "float16") as w:
        with pytest.raises(FloatingPointError, match="subject s"):
            w.write(np.array([0, 1]), np.array([[0.0, bad], [1.0, 2.0]]))
    assert not cache.has("s")


def test_has_rejects_partial_and_inconsistent_files(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    _write(cache, "s", PRESENT)
    feature_bytes = cache.feature_path("s").read_bytes()
    # truncated feature file (e.g. a copy interrupted by a full disk)
    cache.feature_path("s").write_bytes(feature_bytes[:-7])
    assert not cache.has("s")
    with pytest.raises(KeyError, match="no finished features for subject 's'"):
        cache.load("s")
    cache.feature_path("s").write_bytes(feature_bytes)
    assert cache.has("s")
    # a mask that belongs to another length (index changed, crash between the two renames)
    np.save(cache.mask_path("s"), np.ones(9, bool))
    assert not cache.has("s")
    np.save(cache.mask_path("s"), np.ones(10, np.uint8))  # wrong dtype
    assert not cache.has("s")
    cache.mask_path("s").unlink()
    assert not cache.has("s") and cache.subjects() == []
    cache.feature_path("s").write_bytes(b"not a npy file")
    np.save(cache.mask_path("s"), np.ones(10, bool))
    assert not cache.has("s")


def test_stale_tmp_removed_only_for_that_subject(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    cache.path.mkdir()
    mine = [cache.path / ".a.npy.k3j_x9.tmp", cache.path / ".a.mask.npy.zz01ab.tmp"]
    others = [cache.path / ".a_left.npy.k3j_x9.tmp", cache.path / ".[a].npy.abc.tmp", cache.path / "a.npy"]
    for p in mine + others:
        p.write_bytes(b"x")
    cache.remove_stale_tmp("a")
    assert not any(p.exists() for p in mine) and all(p.exists() for p in others)
    cache.remove_stale_tmp("[a]")
    assert not (cache.path / ".[a].npy.abc.tmp").exists()


def test_write_subject_returns_false_when_done(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    feats, mask = np.ones((4, 2), np.float32), np.array([1, 1, 0, 1], bool)
    assert cache.write_subject("s", feats, mask, "float16") is True
    assert cache.write_subject("s", feats * 2, mask, "float16") is False
    assert (cache.load("s")[0] == 1).all()


def test_manifest_makes_cache_complete(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    _write(cache, "b", PRESENT)
    _write(cache, "a", PRESENT)
    assert cache.subjects() == ["a", "b"] and not cache.complete and cache.manifest is None
    cache.write_manifest({"dim": 3, "subjects": {"a": 10, "b": 10}})
    assert cache.complete and cache.dim == 3 and cache.subjects() == ["a", "b"]
    assert json.loads((cache.path / "manifest.json").read_text())["dim"] == 3


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0", "1/2/3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="shard"):
        FeaturesConfig(shard="2/2").validate()
