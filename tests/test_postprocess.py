"""Smoothing, the validation window search and the saved post-processing choice."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from abaw.metrics import PostprocessChoice, apply_postprocess, p_va, search_windows, smooth, window_scores
from abaw.metrics.config import PostprocessConfig
from abaw.metrics.postprocess import search_from_config


def brute_mean(x, w):
    """Truncated centred moving mean by an independent implementation (polars)."""
    if len(x) == 0:
        return np.zeros(0)
    return pl.Series(np.asarray(x, np.float64)).rolling_mean(w, center=True, min_samples=1).to_numpy()


def brute_median(x, w):
    h = w // 2
    n = len(x)
    return np.array([np.median(x[max(0, i - h) : min(n, i + h + 1)]) for i in range(n)])


def brute_smooth(pred, w, method, clip):
    f = brute_mean if method == "mean" else brute_median
    out = np.column_stack([f(pred[:, 0].astype(np.float64), w), f(pred[:, 1].astype(np.float64), w)])
    return np.clip(out, -1, 1) if clip else out


def subjects(n_subjects=9, seed=0, lengths=None):
    rng = np.random.default_rng(seed)
    lengths = lengths or [int(rng.integers(1, 300)) for _ in range(n_subjects)]
    preds, golds, masks = {}, {}, {}
    for i, n in enumerate(lengths):
        g = np.tanh(np.cumsum(rng.standard_normal((n, 2)), axis=0) * 0.1 + rng.uniform(-0.5, 0.5, 2))
        # Noisy and sometimes beyond [-1, 1], as a linear head may be: clipping matters.
        preds[f"s{i}"] = (1.1 * g + 0.4 * rng.standard_normal((n, 2))).astype(np.float32)
        golds[f"s{i}"] = g.astype(np.float32)
        masks[f"s{i}"] = rng.random(n) > 0.2
    return preds, golds, masks


def cat(d):
    return np.concatenate(list(d.values()))


# ---- smoothing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4, 9, 10, 250])
@pytest.mark.parametrize("w", [1, 3, 5, 9, 21])
def test_smooth_mean_and_median_match_brute_force(n, w):
    rng = np.random.default_rng(n * 100 + w)
    x = rng.standard_normal((n, 2)) * 3
    np.testing.assert_allclose(
        smooth(x, w), np.column_stack([brute_mean(x[:, 0], w), brute_mean(x[:, 1], w)]), rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        smooth(x, w, "median"),
        np.column_stack([brute_median(x[:, 0], w), brute_median(x[:, 1], w)]),
        rtol=0,
        atol=0,
    )
    np.testing.assert_allclose(
        smooth(x[:, 0], w, clip=True), np.clip(brute_mean(x[:, 0], w), -1, 1), atol=1e-12
    )


def test_smooth_details():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 2)).astype(np.float32)
    assert smooth(x, 1).dtype == np.float32
    np.testing.assert_array_equal(smooth(x, 1), x)  # window 1 is the identity, bit for bit
    both = smooth(x, (3, 15))  # one window per column
    np.testing.assert_allclose(both[:, 0], smooth(x[:, 0], 3), atol=1e-6)
    np.testing.assert_allclose(both[:, 1], smooth(x[:, 1], 15), atol=1e-6)
    np.testing.assert_array_equal(smooth(np.full(50, 1e4 + 0.1), 9), np.full(50, 1e4 + 0.1))  # exact constant
    np.testing.assert_array_equal(smooth(x * 5, 1, "none", clip=True), np.clip(x * 5, -1, 1))
    assert smooth(np.zeros((0, 2)), 5).shape == (0, 2)
    for bad in (0, 2, -3, 4.0, True):
        with pytest.raises(ValueError, match="odd integer"):
            smooth(x, bad)
    with pytest.raises(ValueError, match="method"):
        smooth(x, 3, "gaussian")
    with pytest.raises(ValueError, match="3 window"):
        smooth(x, (3, 5, 7))
    y = x.copy()
    y[40, 1] = np.nan
    with pytest.raises(ValueError, match=r"x\[40, 1\] \(arousal\) is nan"):
        smooth(y, 5)


# ---- the search -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mean", "median"])
@pytest.mark.parametrize("clip", [True, False])
def test_search_equals_brute_force(method, clip):
    preds, golds, masks = subjects(seed=2, lengths=[1, 3, 40, 250, 120, 7, 300, 64])
    windows = [1, 3, 5, 9, 15, 31, 45]
    table = window_scores(preds, golds, masks, windows, smooth=method, clip=clip)
    brute = np.empty_like(table)
    for i, w in enumerate(windows):
        sm = {s: brute_smooth(p, w, method, clip) for s, p in preds.items()}  # each subject on its own
        r = p_va(cat(sm), cat(golds), cat(masks))
        brute[i] = r["ccc_v"], r["ccc_a"]
    np.testing.assert_allclose(table, brute, rtol=0, atol=1e-9)
    choice = search_windows(preds, golds, masks, windows, smooth=method, clip=clip)
    assert choice.window_v == windows[int(np.argmax(brute[:, 0]))]
    assert choice.window_a == windows[int(np.argmax(brute[:, 1]))]
    assert (choice.smooth, choice.clip) == (method, clip)
    assert choice.scores["ccc_v"] == pytest.approx(brute[:, 0].max(), abs=1e-9)
    assert choice.scores["raw"]["ccc_a"] == pytest.approx(brute[0, 1], abs=1e-9)
    # The scores are what applying the choice gives (float64 predictions: to rounding).
    p64 = {s: p.astype(np.float64) for s, p in preds.items()}
    applied = choice.apply(p64)
    assert p_va(cat(applied), cat(golds), cat(masks))["p_va"] == pytest.approx(
        choice.scores["p_va"], abs=1e-12
    )


def test_smoothing_never_crosses_subjects():
    preds = {"a": np.zeros((30, 2)), "b": np.full((30, 2), 0.9)}
    golds = {"a": np.linspace(-0.5, 0.5, 60).reshape(30, 2), "b": np.linspace(0.2, 0.8, 60).reshape(30, 2)}
    choice = PostprocessChoice(window_v=21, window_a=21, clip=True, smooth="mean")
    out = choice.apply(preds)
    np.testing.assert_array_equal(out["a"], 0.0)
    np.testing.assert_array_equal(out["b"], 0.9)
    # The search scores per-subject smoothing; smoothing the concatenation instead would differ.
    table = window_scores(preds, golds, None, [21])
    per_subject = p_va(cat(out), cat(golds))
    crossing = p_va(smooth(cat(preds), 21), cat(golds))
    assert table[0, 0] == pytest.approx(per_subject["ccc_v"], abs=1e-12)
    assert abs(crossing["ccc_v"] - per_subject["ccc_v"]) > 1e-3


def test_window_one_always_tried_and_never_beaten_by_smoothing_on_validation():
    rng = np.random.default_rng(3)
    golds = {f"s{i}": rng.uniform(-1, 1, (200, 2)) for i in range(4)}  # white noise: smoothing hurts
    preds = {s: g + 0.05 * rng.standard_normal(g.shape) for s, g in golds.items()}
    choice = search_windows(preds, golds, None, [5, 9])
    assert choice.scores["windows"] == [1, 5, 9]
    assert choice.windows == (1, 1)
    assert choice.scores["p_va"] == choice.scores["raw"]["p_va"]
    none = search_windows(preds, golds, None, [5, 9], smooth="none")
    assert none.windows == (1, 1) and none.smooth == "none"


def test_search_is_independent_of_thread_count():
    import numba

    preds, golds, masks = subjects(n_subjects=70, seed=4)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = window_scores(preds, golds, masks, [1, 5, 11])
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = window_scores(preds, golds, masks, [1, 5, 11])
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


def test_search_input_errors():
    preds, golds, masks = subjects(3, seed=5, lengths=[50, 60, 70])
    preds["s1"][10, 1] = np.nan
    masks["s1"][10] = False  # even at an unannotated frame: smoothing would spread it
    with pytest.raises(ValueError, match=r"subject 's1': pred\[10, 1\] \(arousal\) is nan"):
        search_windows(preds, golds, masks, [3])
    preds, golds, masks = subjects(3, seed=5, lengths=[50, 60, 70])
    with pytest.raises(ValueError, match="odd integer"):
        search_windows(preds, golds, masks, [4])
    with pytest.raises(ValueError, match="no counted frames"):
        search_windows(preds, golds, {s: np.zeros(len(m), bool) for s, m in masks.items()}, [3])
    with pytest.raises(ValueError, match="no prediction for"):
        search_windows({"s0": preds["s0"]}, golds, None, [3])


# ---- the saved choice -----------------------------------------------------------------------------------
def test_choice_save_load_apply(tmp_path):
    preds, golds, masks = subjects(seed=6)
    choice = search_windows(preds, golds, masks, [3, 7, 15])
    path = choice.save(tmp_path / "run" / "postprocess.json")
    assert not list(path.parent.glob("*.tmp"))
    loaded = PostprocessChoice.load(path)
    assert loaded == choice
    a = loaded.apply(preds)
    b = apply_postprocess(choice, preds)
    assert list(a) == list(preds)
    for s in preds:
        np.testing.assert_array_equal(a[s], b[s])
        np.testing.assert_array_equal(a[s], smooth(preds[s], choice.windows, clip=True))
        assert a[s].dtype == np.float32 and np.abs(a[s]).max() <= 1.0
    single = loaded.apply(preds["s0"])
    np.testing.assert_array_equal(single, a["s0"])
    with pytest.raises(ValueError, match=r"\[N, 2\].*'s0'"):
        loaded.apply({"s0": preds["s0"][:, 0]})


def test_choice_load_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        PostprocessChoice.load(bad)
    bad.write_text(json.dumps({"window_v": 3}))
    with pytest.raises(ValueError, match="format"):
        PostprocessChoice.load(bad)
    d = PostprocessChoice(window_v=3, window_a=5).to_dict()
    d["window_a"] = 4
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="bad.json.*odd integer"):
        PostprocessChoice.load(bad)
    d["window_a"] = 5
    d["extra"] = 1
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="unknown key"):
        PostprocessChoice.load(bad)


def test_config_drives_the_search():
    preds, golds, masks = subjects(seed=7)
    cfg = PostprocessConfig(smooth="median", windows=[3, 9], clip=False)
    cfg.validate()
    choice = search_from_config(cfg, preds, golds, masks)
    assert (choice.smooth, choice.clip, choice.scores["windows"]) == ("median", False, [1, 3, 9])
    for bad in (PostprocessConfig(windows=[1, 4]), PostprocessConfig(smooth="gauss")):
        with pytest.raises(ValueError, match="postprocess"):
            bad.validate()
