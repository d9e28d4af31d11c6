"""Concordance correlation coefficient, exact in float64 and one pass over memory.

    CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)

computed over all counted frames pooled (the challenge protocol: every annotated frame of every video in
one set, not a mean of per-video scores). ``x`` is the prediction, ``y`` the gold label.

Population vs sample variance: ``ddof=0`` (default) divides var and cov by n, ``ddof=1`` by n - 1
(torchmetrics' ``ConcordanceCorrCoef`` does the latter). The mean-difference term is never rescaled, so
the two differ by O(1/n) — nothing at Aff-Wild2 size, but tests compare like with like.

How it stays exact: the frames are cut into blocks of ``BLOCK`` rows. Inside a block, values are
shifted by the block's first counted value and summed in float64 (the shift keeps sum-of-squares
cancellation to the data's spread, not its magnitude: data around 1e4 is as exact as data around 0).
Each block becomes central statistics (n, means, centred sums of squares and cross-products) merged into
the running total with Chan et al.'s pairwise update, so rounding grows with the number of blocks, not
frames. Still one read of every value, vectorised by LLVM (fastmath allows reassociation only, never
"no NaN", so a NaN or inf reaches the result and is reported, not silently dropped).

Edge cases (documented here, tested in tests/test_metrics.py):

- only one side constant over the counted frames: cov = 0 and the denominator is positive, CCC = 0.
- both constant: CCC = 1.0 when they are identical (denominator 0: perfect agreement), else 0.0.
- no counted frames (empty input, or every frame masked out): ``ValueError``. A pooled score over
  nothing is a pipeline bug, and a NaN would quietly poison a tuning objective. (The per-subject table
  reports NaN for such a subject instead: it describes, it does not score.)
- ``ddof=1`` with a single counted frame: ``ValueError``.
- NaN or inf at a counted frame: ``ValueError`` naming the first one. Masked-out frames are not part of
  the metric, so whatever they hold (NaN, -5) is ignored.
- mismatched shapes, a mask of the wrong length, a non-numeric dtype: ``ValueError`` / ``TypeError``.
- float16, float32, float64 and integer inputs are all accumulated in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from abaw.metrics._checks import as_mask, as_values, check_pair, nonfinite_error

BLOCK = 2048
# Reassociation lets LLVM vectorise the sums; "nnan"/"ninf" are left out on purpose (see above).
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

# Column order of a statistics row: count, means, centred sums of squares and of cross-products.
N, MEAN_X, MEAN_Y, M2_X, M2_Y, C_XY = range(6)


@njit(cache=True, nogil=True)
def merge_central(a, b):
    """Chan's pairwise merge of two (n, mean_x, mean_y, m2_x, m2_y, c_xy) tuples."""
    if b[0] == 0.0:
        return a
    if a[0] == 0.0:
        return b
    n = a[0] + b[0]
    dx = b[1] - a[1]
    dy = b[2] - a[2]
    w = b[0] / n
    f = a[0] * w
    return (
        n,
        a[1] + dx * w,
        a[2] + dy * w,
        a[3] + b[3] + dx * dx * f,
        a[4] + b[4] + dy * dy * f,
        a[5] + b[5] + dx * dy * f,
    )


@njit(cache=True, nogil=True)
def _central(n, kx, ky, sx, sy, sxx, syy, sxy):
    """Shifted block sums -> central statistics. ``< 0`` guards rounding; a NaN passes through."""
    ox = sx / n
    oy = sy / n
    m2x = sxx - sx * ox
    if m2x < 0.0:
        m2x = 0.0
    m2y = syy - sy * oy
    if m2y < 0.0:
        m2y = 0.0
    return (n, kx + ox, ky + oy, m2x, m2y, sxy - sx * oy)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def pair_stats_1d(x, y, m):
    """Central statistics of 1-D ``x`` against ``y`` over frames where ``m`` (None = all) -> float64[6]."""
    tot = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    size = x.shape[0]
    for start in range(0, size, BLOCK):
        end = min(start + BLOCK, size)
        j = start
        if m is not None:
            while j < end and not m[j]:
                j += 1
            if j == end:
                continue
        kx = np.float64(x[j])
        ky = np.float64(y[j])
        cnt = 0
        sx = sy = sxx = syy = sxy = 0.0
        xb = x[j:end]
        yb = y[j:end]
        mb = m if m is None else m[j:end]
        for i in range(end - j):
            ok = True if mb is None else mb[i]
            dx = np.float64(xb[i]) - kx
            dy = np.float64(yb[i]) - ky
            dx = dx if ok else 0.0
            dy = dy if ok else 0.0
            cnt += 1 if ok else 0
            sx += dx
            sy += dy
            sxx += dx * dx
            syy += dy * dy
            sxy += dx * dy
        tot = merge_central(tot, _central(np.float64(cnt), kx, ky, sx, sy, sxx, syy, sxy))
    out = np.empty(6)
    for k in range(6):
        out[k] = tot[k]
    return out


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def pair_stats_2c(x, y, m):
    """As ``pair_stats_1d`` for two columns (valence, arousal) read in the same pass -> float64[2, 6]."""
    t0 = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    t1 = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    size = x.shape[0]
    # Flat views: numba indexes even C arrays through their runtime strides, and LLVM vectorises only
    # the unit-stride version of the loop, which a [N, 2] row stride never matches.
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for start in range(0, size, BLOCK):
        end = min(start + BLOCK, size)
        j = start
        if m is not None:
            while j < end and not m[j]:
                j += 1
            if j == end:
                continue
        kx0 = np.float64(x[j, 0])
        ky0 = np.float64(y[j, 0])
        kx1 = np.float64(x[j, 1])
        ky1 = np.float64(y[j, 1])
        cnt = 0
        sx0 = sy0 = sxx0 = syy0 = sxy0 = 0.0
        sx1 = sy1 = sxx1 = syy1 = sxy1 = 0.0
        # Slices indexed from 0: LLVM then knows no index is negative (numba's wraparound check
        # would otherwise turn every load into a gather and defeat vectorisation).
        xb = xf[2 * j : 2 * end]
        yb = yf[2 * j : 2 * end]
        mb = m if m is None else m[j:end]
        for i in range(end - j):
            # Load unconditionally, then select: a conditional load would become a masked gather.
            ok = True if mb is None else mb[i]
            dx0 = np.float64(xb[2 * i]) - kx0
            dy0 = np.float64(yb[2 * i]) - ky0
            dx1 = np.float64(xb[2 * i + 1]) - kx1
            dy1 = np.float64(yb[2 * i + 1]) - ky1
            dx0 = dx0 if ok else 0.0
            dy0 = dy0 if ok else 0.0
            dx1 = dx1 if ok else 0.0
            dy1 = dy1 if ok else 0.0
            cnt += 1 if ok else 0
            sx0 += dx0
            sy0 += dy0
            sxx0 += dx0 * dx0
            syy0 += dy0 * dy0
            sxy0 += dx0 * dy0
            sx1 += dx1
            sy1 += dy1
            sxx1 += dx1 * dx1
            syy1 += dy1 * dy1
            sxy1 += dx1 * dy1
        c = np.float64(cnt)
        t0 = merge_central(t0, _central(c, kx0, ky0, sx0, sy0, sxx0, syy0, sxy0))
        t1 = merge_central(t1, _central(c, kx1, ky1, sx1, sy1, sxx1, syy1, sxy1))
    out = np.empty((2, 6))
    for k in range(6):
        out[0, k] = t0[k]
        out[1, k] = t1[k]
    return out


@njit(cache=True, nogil=True)
def ccc_from_central(n, mx, my, m2x, m2y, cxy, ddof):
    """CCC from central statistics; NaN when there are too few frames (callers raise before that)."""
    dof = n - ddof
    if n <= 0.0 or dof <= 0.0:
        return np.nan
    d = mx - my
    den = (m2x + m2y) / dof + d * d
    if den == 0.0:
        # Both sides constant and equal on every counted frame: perfect agreement.
        return 1.0
    return 2.0 * (cxy / dof) / den


def ccc_from_stats(stats, ddof: int = 0):
    """CCC of a statistics row ``[6]`` (-> float) or of a table ``[..., 6]`` (-> array of that shape)."""
    s = np.asarray(stats, dtype=np.float64)
    out = _ccc_rows(np.ascontiguousarray(s.reshape(-1, 6)), float(ddof))
    return float(out[0]) if s.ndim == 1 else out.reshape(s.shape[:-1])


@njit(cache=True, nogil=True)
def _ccc_rows(rows, ddof):
    out = np.empty(rows.shape[0])
    for i in range(rows.shape[0]):
        r = rows[i]
        out[i] = ccc_from_central(r[0], r[1], r[2], r[3], r[4], r[5], ddof)
    return out


def check_ddof(ddof: int, where: str) -> int:
    if isinstance(ddof, bool) or ddof not in (0, 1):
        raise ValueError(f"{where}: ddof must be 0 (population) or 1 (sample), got {ddof!r}")
    return int(ddof)


def pair_stats(pred, gold, mask=None, *, ndim: int = 2, where: str = "pair_stats") -> np.ndarray:
    """Validated central statistics of ``pred`` against ``gold`` over the counted frames.

    ``ndim=1``: 1-D inputs -> ``float64[6]``; ``ndim=2``: ``[N, 2]`` inputs -> ``float64[2, 6]`` (rows
    valence, arousal; columns ``N, MEAN_X, MEAN_Y, M2_X, M2_Y, C_XY``). Raises on malformed input and on
    NaN/inf at counted frames. Zero counted frames is *not* an error here (n = 0 in the result), so each
    caller decides: the pooled metric raises, the per-subject table reports NaN.
    """
    x = as_values(pred, "pred", where)
    y = as_values(gold, "gold", where)
    check_pair(x, y, ndim, where)
    m = as_mask(mask, x.shape[0], where)
    # One dtype and contiguous memory for both sides keeps the compiled variants few (each costs
    # seconds of compilation on a fresh machine); a copy happens only for mixed or strided input.
    if x.dtype != y.dtype:
        x, y = x.astype(np.float64), y.astype(np.float64)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    stats = pair_stats_1d(x, y, m) if ndim == 1 else pair_stats_2c(x, y, m)
    if not np.isfinite(stats).all():
        raise nonfinite_error(where, {"pred": x, "gold": y}, m)
    return stats


def require_frames(n: float, ddof: int, where: str) -> None:
    """The pooled metric's rule: at least one counted frame, and more than ``ddof``."""
    if n == 0:
        raise ValueError(f"{where}: no counted frames (empty input, or every frame masked out)")
    if n - ddof <= 0:
        raise ValueError(f"{where}: ddof={ddof} needs at least {ddof + 1} counted frames, got {int(n)}")


def ccc(pred, gold, mask=None, ddof: int = 0) -> float:
    """CCC of 1-D ``pred`` against 1-D ``gold`` over the frames where ``mask`` is True (all if None)."""
    ddof = check_ddof(ddof, "ccc")
    s = pair_stats(pred, gold, mask, ndim=1, where="ccc")
    require_frames(s[N], ddof, "ccc")
    return float(ccc_from_central(s[0], s[1], s[2], s[3], s[4], s[5], float(ddof)))


def p_va(pred, gold, mask=None, ddof: int = 0) -> dict[str, float]:
    """The challenge score of ``[N, 2]`` arrays (column 0 valence, 1 arousal), all counted frames pooled.

    ``mask``: bool ``[N]``, True where the frame is annotated (both dimensions share it, as in the
    annotation files). Returns ``{"p_va": (ccc_v + ccc_a) / 2, "ccc_v": ..., "ccc_a": ...}``.
    """
    ddof = check_ddof(ddof, "p_va")
    s = pair_stats(pred, gold, mask, ndim=2, where="p_va")
    require_frames(s[0, N], ddof, "p_va")
    return scores_from_stats(s, ddof)


def scores_from_stats(stats2: np.ndarray, ddof: int = 0) -> dict[str, float]:
    """``{"p_va", "ccc_v", "ccc_a"}`` from a ``[2, 6]`` statistics table."""
    cv, ca = (float(c) for c in ccc_from_stats(stats2, ddof))
    return {"p_va": 0.5 * (cv + ca), "ccc_v": cv, "ccc_a": ca}


def pool_stats(stats: np.ndarray) -> np.ndarray:
    """Merge statistics ``[S, ..., 6]`` (e.g. one table per subject) into ``[..., 6]``, exactly as if the
    frames had been pooled (Chan's merge, in the given order)."""
    s = np.asarray(stats, dtype=np.float64)
    return _pool(np.ascontiguousarray(s.reshape(s.shape[0], -1, 6))).reshape(s.shape[1:])


@njit(cache=True, nogil=True)
def _pool(s):
    out = np.zeros((s.shape[1], 6))
    for d in range(s.shape[1]):
        t = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        for i in range(s.shape[0]):
            r = s[i, d]
            t = merge_central(t, (r[0], r[1], r[2], r[3], r[4], r[5]))
        for k in range(6):
            out[d, k] = t[k]
    return out
