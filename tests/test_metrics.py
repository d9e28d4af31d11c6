"""CCC metric, per-subject table, subject bootstrap and the torch loss: exactness and edge cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from abaw.metrics import bootstrap_ci, ccc, p_va, pair_stats, per_subject_table, pool_stats, subject_stats
from abaw.metrics.bootstrap import resample_indices, resample_scores

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ref_ccc(x, y, ddof=0):
    """Textbook two-pass CCC in float64."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mx, my = x.mean(), y.mean()
    dx, dy = x - mx, y - my
    dof = len(x) - ddof
    return 2 * (dx @ dy) / dof / ((dx @ dx) / dof + (dy @ dy) / dof + (mx - my) ** 2)


def pair(n, rng, dtype=np.float32, offset=0.0, dims=None):
    shape = (n,) if dims is None else (n, dims)
    g = rng.uniform(-1, 1, shape) + offset
    p = 0.6 * g + 0.4 * rng.standard_normal(shape) + 0.1
    return p.astype(dtype), g.astype(dtype)


# ---- exactness ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 2047, 2048, 2049, 10_001])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ddof", [0, 1])
def test_ccc_matches_two_pass_reference(n, dtype, ddof):
    rng = np.random.default_rng(n)
    p, g = pair(n, rng, dtype, dims=2)
    m = rng.random(n) > 0.3
    m[0] = True
    m[-1] = True
    if m.sum() <= ddof:  # one frame with ddof=1: no sample variance
        with pytest.raises(ValueError, match="ddof=1 needs at least 2"):
            p_va(p, g, m, ddof=ddof)
        return
    got = p_va(p, g, m, ddof=ddof)
    for d, key in enumerate(("ccc_v", "ccc_a")):
        want = ref_ccc(p[m, d], g[m, d], ddof)
        assert got[key] == pytest.approx(want, abs=1e-12)
        assert ccc(p[:, d], g[:, d], m, ddof=ddof) == pytest.approx(want, abs=1e-12)
    assert got["p_va"] == pytest.approx(0.5 * (got["ccc_v"] + got["ccc_a"]), abs=0)


def test_p_va_column_order_is_valence_then_arousal():
    rng = np.random.default_rng(0)
    g = rng.uniform(-1, 1, (500, 2))
    p = g.copy()
    p[:, 1] = rng.uniform(-1, 1, 500)  # arousal unrelated, valence perfect
    s = p_va(p, g)
    assert s["ccc_v"] == 1.0
    assert abs(s["ccc_a"]) < 0.2
    assert set(s) == {"p_va", "ccc_v", "ccc_a"}


def test_matches_torchmetrics_with_sample_variance():
    torch = pytest.importorskip("torch")
    from torchmetrics.regression import ConcordanceCorrCoef

    rng = np.random.default_rng(1)
    p, g = pair(3000, rng, np.float64, dims=2)
    tm = ConcordanceCorrCoef(num_outputs=2)
    # In two updates, to exercise its merge as well.
    tm.update(torch.from_numpy(p[:1200]), torch.from_numpy(g[:1200]))
    tm.update(torch.from_numpy(p[1200:]), torch.from_numpy(g[1200:]))
    want = tm.compute().numpy()
    got = p_va(p, g, ddof=1)  # torchmetrics divides var and cov by n - 1
    assert got["ccc_v"] == pytest.approx(want[0], abs=1e-9)
    assert got["ccc_a"] == pytest.approx(want[1], abs=1e-9)
    # The population choice (our default) differs from it by O(1/n): visible, but tiny.
    pop = p_va(p, g, ddof=0)
    assert 1e-9 < abs(pop["ccc_v"] - want[0]) < 1e-3


def test_large_offset_naive_float32_breaks_ours_stays_exact():
    rng = np.random.default_rng(2)
    n = 200_000
    g = (1e4 + rng.standard_normal(n)).astype(np.float32)
    p = (g + 0.5 * rng.standard_normal(n)).astype(np.float32)
    want = ref_ccc(p, g)

    def naive_f32(x, y):  # E[x^2] - E[x]^2 in one float32 pass: cancels catastrophically
        f = np.float32
        mx, my = x.mean(dtype=f), y.mean(dtype=f)
        vx = (x * x).mean(dtype=f) - mx * mx
        vy = (y * y).mean(dtype=f) - my * my
        c = (x * y).mean(dtype=f) - mx * my
        return float(2 * c / (vx + vy + (mx - my) ** 2))

    with np.errstate(all="ignore"):
        assert not abs(naive_f32(p, g) - want) < 1e-2  # wrong (or NaN)
    assert ccc(p, g) == pytest.approx(want, abs=1e-9)
    # float64 data far from 0: a float64 single-pass sum of squares would lose everything here too.
    g64 = 1e8 + rng.standard_normal(n)
    p64 = g64 + 0.5 * rng.standard_normal(n)
    assert ccc(p64, g64) == pytest.approx(ref_ccc(p64, g64), abs=1e-9)


def test_pooled_subject_statistics_equal_concatenation():
    rng = np.random.default_rng(3)
    parts = [
        pair(int(n), rng, np.float32, offset=o, dims=2)
        for n, o in zip([5, 3000, 1, 777], [0, 3, -2, 0], strict=True)
    ]
    masks = [rng.random(len(p)) > 0.2 for p, _ in parts]
    stats = np.stack([pair_stats(p, g, m) for (p, g), m in zip(parts, masks, strict=True)])
    pooled = pool_stats(stats)
    direct = pair_stats(
        np.concatenate([p for p, _ in parts]), np.concatenate([g for _, g in parts]), np.concatenate(masks)
    )
    np.testing.assert_allclose(pooled, direct, rtol=1e-12, atol=1e-9)


# ---- properties -----------------------------------------------------------------------------------------
values = arrays(np.int64, st.integers(2, 300), elements=st.integers(-1000, 1000)).map(lambda a: a / 100.0)


@st.composite
def xy(draw):
    x = draw(values)
    y = draw(arrays(np.int64, len(x), elements=st.integers(-1000, 1000))) / 100.0
    return x, y


@PROPS
@given(xy())
def test_symmetric_and_bounded(d):
    x, y = d
    c = ccc(x, y)
    assert c == pytest.approx(ccc(y, x), abs=1e-12)
    assert -1.0 - 1e-12 <= c <= 1.0 + 1e-12


@PROPS
@given(values)
def test_self_agreement_is_one_and_negation_is_not_positive(x):
    assert ccc(x, x) == 1.0
    assume(np.any(x != 0))  # x == -x only when x is all zeros (then identical: 1.0)
    assert ccc(x, -x) <= 0.0


@PROPS
@given(xy(), st.randoms(use_true_random=False))
def test_invariant_to_frame_order(d, rnd):
    x, y = d
    perm = list(range(len(x)))
    rnd.shuffle(perm)
    assert ccc(x[perm], y[perm]) == pytest.approx(ccc(x, y), abs=1e-9)


@PROPS
@given(xy(), st.floats(0.01, 100), st.floats(-100, 100))
def test_common_affine_map_leaves_ccc_unchanged(d, a, b):
    x, y = d
    assert ccc(a * x + b, a * y + b) == pytest.approx(ccc(x, y), abs=1e-7)


@PROPS
@given(values, st.floats(0.1, 10).filter(lambda a: abs(a - 1) > 1e-3))
def test_rescaling_one_side_lowers_agreement(x, a):
    assume(np.ptp(x) > 0)
    assert ccc(a * x, x) < 1.0


# ---- edge cases -----------------------------------------------------------------------------------------
def test_constant_sides():
    y = np.array([0.1, 0.5, -0.3, 0.2])
    assert ccc(np.full(4, 0.3), y) == 0.0  # constant prediction
    assert ccc(y, np.full(4, 0.3)) == 0.0  # constant gold
    assert ccc(np.full(4, 0.3), np.full(4, 0.3)) == 1.0  # both constant and identical
    assert ccc(np.full(4, 0.3), np.full(4, 0.2)) == 0.0  # both constant, different
    assert ccc([0.7], [0.7]) == 1.0  # one frame: both constant
    # Only counted frames matter: constant and identical where the mask is True.
    assert ccc([0.3, 0.3, 9.0], [0.3, 0.3, -4.0], [True, True, False]) == 1.0


def test_no_counted_frames_is_an_error():
    with pytest.raises(ValueError, match="no counted frames"):
        ccc([0.1, 0.2], [0.3, 0.4], [False, False])
    with pytest.raises(ValueError, match="no counted frames"):
        p_va(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="ddof=1 needs at least 2"):
        ccc([0.1, 0.2], [0.3, 0.4], [True, False], ddof=1)
    with pytest.raises(ValueError, match="ddof"):
        ccc([0.1, 0.2], [0.3, 0.4], ddof=2)


def test_non_finite_values_are_named():
    p = np.linspace(-1, 1, 3000).reshape(-1, 2)
    g = p[::-1].copy()
    bad = p.copy()
    bad[1234, 1] = np.nan
    with pytest.raises(ValueError, match=r"pred\[1234, 1\] \(arousal\) is nan"):
        p_va(bad, g)
    gi = g.copy()
    gi[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"gold\[7, 0\] \(valence\) is inf"):
        p_va(p, gi)
    with pytest.raises(ValueError, match=r"pred\[3\]"):
        ccc([0.1, 0.2, 0.3, np.nan], [0.1, 0.2, 0.3, 0.4])
    # A masked-out frame is not part of the metric: whatever it holds is ignored.
    m = np.ones(len(p), bool)
    m[1234] = False
    assert p_va(bad, g, m) == pytest.approx(p_va(p, g, m))


def test_malformed_inputs():
    with pytest.raises(ValueError, match=r"pred has shape \(3,\) but gold has shape \(4,\)"):
        ccc(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="mask has shape"):
        ccc(np.zeros(3), np.ones(3), np.ones(4, bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        ccc(np.zeros(3), np.ones(3), np.array([0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        p_va(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        ccc(np.zeros((5, 2)), np.zeros((5, 2)))
    with pytest.raises(TypeError, match="real numbers"):
        ccc(np.array(["a", "b"]), np.zeros(2))
    # A 0/1 integer mask is accepted as boolean.
    assert ccc([0.1, 0.5, 0.2], [0.2, 0.4, 0.0], np.array([1, 1, 0])) == ccc([0.1, 0.5], [0.2, 0.4])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, ">f8"])
def test_every_dtype_accumulates_in_float64(dtype):
    rng = np.random.default_rng(4)
    p, g = pair(5000, rng, np.float64, dims=2)
    if np.dtype(dtype).kind == "i":
        p, g = p * 100, g * 100
    p, g = p.astype(dtype), g.astype(dtype)
    got = p_va(p, g)
    # Exact against the float64 reference on the very values given (no intermediate rounding).
    assert got["ccc_v"] == pytest.approx(
        ref_ccc(p[:, 0].astype(np.float64), g[:, 0].astype(np.float64)), abs=1e-12
    )
    assert got["ccc_a"] == pytest.approx(
        ref_ccc(p[:, 1].astype(np.float64), g[:, 1].astype(np.float64)), abs=1e-12
    )


def test_non_contiguous_inputs():
    rng = np.random.default_rng(5)
    p, g = pair(4000, rng, np.float32, dims=4)
    m = rng.random(4000) > 0.5
    got = p_va(p[:, ::2], g[:, ::2], m)
    assert got["ccc_a"] == pytest.approx(ref_ccc(p[m, 2], g[m, 2]), abs=1e-12)
    assert ccc(p[:, 3], g[:, 3], m) == pytest.approx(ref_ccc(p[m, 3], g[m, 3]), abs=1e-12)


# ---- per-subject table and bootstrap --------------------------------------------------------------------
def subjects(n_subjects=12, seed=6):
    rng = np.random.default_rng(seed)
    preds, golds, masks = {}, {}, {}
    for i in range(n_subjects):
        n = int(rng.integers(20, 400))
        g = np.clip(np.cumsum(rng.standard_normal((n, 2)), axis=0) * 0.05 + rng.uniform(-0.5, 0.5, 2), -1, 1)
        preds[f"v{i}"] = (g * rng.uniform(0.3, 1.0) + 0.3 * rng.standard_normal((n, 2))).astype(np.float32)
        golds[f"v{i}"] = g.astype(np.float32)
        masks[f"v{i}"] = rng.random(n) > 0.15
    return preds, golds, masks


def cat(d, keys=None):
    return np.concatenate([d[k] for k in (keys if keys is not None else d)])


def test_per_subject_table():
    preds, golds, masks = subjects()
    masks["v3"][:] = False  # a subject without any annotated frame
    t = per_subject_table(preds, golds, masks, ddof=1)
    assert t.columns == [
        "subject",
        "frames",
        "valid",
        "ccc_v",
        "ccc_a",
        "p_va",
        "pred_mean_v",
        "pred_mean_a",
        "pred_std_v",
        "pred_std_a",
        "gold_mean_v",
        "gold_mean_a",
        "gold_std_v",
        "gold_std_a",
    ]
    assert t["subject"].to_list() == list(preds)
    for row in t.iter_rows(named=True):
        s = row["subject"]
        p, g, m = preds[s], golds[s], masks[s]
        assert row["frames"] == len(p) and row["valid"] == m.sum()
        if s == "v3":
            assert np.isnan(row["ccc_v"]) and np.isnan(row["p_va"]) and np.isnan(row["gold_mean_a"])
            continue
        assert row["ccc_v"] == pytest.approx(ccc(p[:, 0], g[:, 0], m, ddof=1), abs=1e-12)
        assert row["ccc_a"] == pytest.approx(ccc(p[:, 1], g[:, 1], m, ddof=1), abs=1e-12)
        assert row["p_va"] == pytest.approx((row["ccc_v"] + row["ccc_a"]) / 2)
        assert row["pred_mean_a"] == pytest.approx(p[m, 1].astype(np.float64).mean(), abs=1e-12)
        assert row["gold_std_v"] == pytest.approx(g[m, 0].astype(np.float64).std(ddof=1), abs=1e-12)


def test_subject_mappings_must_agree():
    preds, golds, masks = subjects(3)
    del golds["v1"]
    with pytest.raises(ValueError, match=r"no gold for \['v1'\]"):
        per_subject_table(preds, golds)
    preds, golds, masks = subjects(3)
    del masks["v2"]
    with pytest.raises(ValueError, match="no mask for subject"):
        per_subject_table(preds, golds, masks)
    preds, golds, _ = subjects(3)
    preds["v0"][2, 0] = np.nan
    with pytest.raises(ValueError, match=r"'v0'.*pred\[2, 0\]"):
        per_subject_table(preds, golds)


def test_bootstrap_resamples_subjects_exactly_and_reproducibly():
    preds, golds, masks = subjects()
    ss = subject_stats(preds, golds, masks)
    idx = resample_indices(len(ss.subjects), 50, seed=3)
    par = resample_scores(ss, idx, parallel=True)
    ser = resample_scores(ss, idx, parallel=False)
    np.testing.assert_array_equal(par, ser)  # the thread count never changes a bit
    keys = list(preds)
    for b in (0, 17, 49):  # a resample is the pooled score of the drawn subjects' frames
        chosen = [keys[i] for i in idx[b]]
        want = p_va(cat(preds, chosen), cat(golds, chosen), cat(masks, chosen))
        assert par[b, 0] == pytest.approx(want["ccc_v"], abs=1e-12)
        assert par[b, 1] == pytest.approx(want["ccc_a"], abs=1e-12)

    r1 = bootstrap_ci(preds, golds, masks, n_resamples=300, seed=7)
    r2 = bootstrap_ci(ss, n_resamples=300, seed=7)
    assert r1 == r2
    assert r1.estimate == pytest.approx(p_va(cat(preds), cat(golds), cat(masks)), abs=1e-12)
    for k in ("p_va", "ccc_v", "ccc_a"):
        assert r1.low[k] < r1.high[k]
        assert r1.low[k] <= r1.estimate[k] + 0.05 and r1.estimate[k] - 0.05 <= r1.high[k]
    assert bootstrap_ci(ss, n_resamples=300, seed=8).low != r1.low
    assert r1.n_degenerate == 0 and r1.n_resamples == 300 and r1.n_subjects == 12
    assert "95% CI" in str(r1)


def test_bootstrap_degenerate_resamples_and_arguments():
    preds, golds, masks = subjects(2)
    masks["v1"][:] = False  # resamples drawing only v1 have no frames
    r = bootstrap_ci(preds, golds, masks, n_resamples=400, seed=0)
    assert 50 < r.n_degenerate < 150  # about a quarter draw v1 twice
    assert np.isfinite(r.low["p_va"]) and np.isfinite(r.high["p_va"])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(preds, golds, level=1.5)
    with pytest.raises(ValueError, match="golds is required"):
        bootstrap_ci(preds)


# ---- torch loss -----------------------------------------------------------------------------------------
def test_loss_equals_one_minus_metric():
    torch = pytest.importorskip("torch")
    from abaw.metrics.loss import ccc_loss, ccc_per_dim

    rng = np.random.default_rng(9)
    p, g = pair(4 * 50, rng, np.float64, dims=2)
    m = rng.random(200) > 0.25
    for ddof in (0, 1):
        want = 1.0 - p_va(p, g, m, ddof=ddof)["p_va"]
        pt, gt, mt = (
            torch.from_numpy(p).view(4, 50, 2),
            torch.from_numpy(g).view(4, 50, 2),
            torch.from_numpy(m).view(4, 50),
        )
        assert float(ccc_loss(pt, gt, mt, ddof=ddof)) == pytest.approx(want, abs=1e-12)
        assert float(
            ccc_loss(pt.reshape(200, 2), gt.reshape(200, 2), mt.reshape(200), ddof=ddof)
        ) == pytest.approx(want, abs=1e-12)
        f32 = ccc_loss(pt.float(), gt.float(), mt, ddof=ddof)
        assert f32.dtype == torch.float32 and float(f32) == pytest.approx(want, abs=1e-5)
    per_dim = ccc_per_dim(torch.from_numpy(p), torch.from_numpy(g), torch.from_numpy(m))
    s = p_va(p, g, m)
    np.testing.assert_allclose(per_dim.numpy(), [s["ccc_v"], s["ccc_a"]], atol=1e-12)


def test_loss_gradients_and_edge_cases():
    torch = pytest.importorskip("torch")
    from abaw.metrics.loss import ccc_loss, ccc_per_dim

    g = torch.linspace(-1, 1, 40, dtype=torch.float64).view(2, 20, 1).repeat(1, 1, 2)
    mask = torch.ones(2, 20, dtype=torch.bool)
    for pred0 in (torch.full_like(g, 0.3), g.clone()):  # constant prediction; perfect prediction
        pred = pred0.clone().requires_grad_(True)
        loss = ccc_loss(pred, g, mask)
        loss.backward()
        assert torch.isfinite(pred.grad).all()
    assert float(ccc_loss(g, g, mask)) == 0.0
    # Both sides constant and equal: CCC 1 (loss 0), as in the metric, with finite gradients.
    c = torch.full((1, 5, 2), 0.2, dtype=torch.float64, requires_grad=True)
    loss = ccc_loss(c, c.detach().clone())
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(c.grad).all()
    # No valid frame: a zero loss with zero gradients, not a crash or a NaN.
    pred = g.clone().requires_grad_(True)
    loss = ccc_loss(pred, g, torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))
    with pytest.raises(ValueError, match="valid frame"):
        ccc_per_dim(g, g, torch.zeros_like(mask))
    # NaN in a masked-out frame reaches neither the loss nor the gradients.
    pred = g.clone()
    pred[0, 3, 1] = float("nan")
    mask2 = mask.clone()
    mask2[0, 3] = False
    pred.requires_grad_(True)
    loss = ccc_loss(pred, g, mask2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match="mask has shape"):
        ccc_loss(g, g, mask[:, :5])
    with pytest.raises(ValueError, match="gold has shape"):
        ccc_loss(g, g[:, :5])


def test_loss_accumulates_in_float32_under_autocast():
    torch = pytest.importorskip("torch")
    from abaw.metrics.loss import ccc_loss

    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 2)
    x = torch.randn(3, 64, 8)
    gold = torch.tanh(torch.randn(3, 64, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = lin(x)
        assert pred.dtype == torch.bfloat16
        loss = ccc_loss(pred, gold)
    assert loss.dtype == torch.float32
    want = 1 - p_va(pred.detach().float().reshape(-1, 2).numpy(), gold.reshape(-1, 2).numpy())["p_va"]
    assert loss.item() == pytest.approx(want, abs=1e-5)
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_package_import_stays_light():
    code = (
        "import sys, abaw.metrics, abaw.metrics.config\n"
        "assert 'torch' not in sys.modules and 'numba' not in sys.modules, 'heavy import'\n"
        "abaw.metrics.p_va\n"
        "assert 'torch' not in sys.modules, 'torch imported by the metrics'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numba_parallel_kernels_leave_torchs_thread_count_alone():
    """Numba's OpenMP layer shares the runtime with torch and sets every core's worth of threads at each
    parallel launch; after a validation search, torch must still use what the process asked for (an
    in-process feature extraction after training differed from a fresh process in the last bits)."""
    import numba
    import torch

    from abaw.metrics import bootstrap_ci, search_windows

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: Numba's parallel launch cannot change the count")
    rng = np.random.default_rng(0)
    preds = {f"s{i}": rng.normal(size=(300, 2)).astype(np.float32) for i in range(6)}
    golds = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in preds.items()}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        search_windows(preds, golds, windows=[1, 5, 9])
        assert torch.get_num_threads() == 1
        bootstrap_ci(preds, golds, n_resamples=50)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
