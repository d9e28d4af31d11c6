"""Confidence interval of the pooled score by resampling *subjects* (videos), not frames.

Frames of one video are strongly correlated, so resampling frames would give intervals far too narrow;
the unit that varies between validation and test sets is the video. Each resample draws S subjects with
replacement and pools their frames, which is computed from per-subject statistics expressed as sums
around one common shift (the pooled means), so a resample costs O(S), not O(frames), and stays exact.

Reproducible: the resampled subject indices come from ``numpy.random.default_rng(seed)`` before the
Numba loop, so the result depends on the seed only, never on the thread count (parallel == serial, to
the bit). The interval is the percentile interval of the resampled scores; a resample whose pooled
frames are degenerate (no counted frames) yields NaN, is left out and counted in ``n_degenerate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit, prange

from abaw.metrics._threads import torch_threads_kept
from abaw.metrics.concordance import (
    C_XY,
    M2_X,
    M2_Y,
    MEAN_X,
    MEAN_Y,
    N,
    ccc_from_central,
    check_ddof,
    scores_from_stats,
)
from abaw.metrics.subjects import SubjectStats, subject_stats

KEYS = ("p_va", "ccc_v", "ccc_a")


@dataclass(frozen=True)
class BootstrapResult:
    estimate: dict[str, float]  # on all subjects pooled (the point estimate)
    low: dict[str, float]
    high: dict[str, float]
    level: float
    n_resamples: int
    n_degenerate: int
    n_subjects: int
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        parts = [f"{k} {self.estimate[k]:.4f} [{self.low[k]:.4f}, {self.high[k]:.4f}]" for k in KEYS]
        return f"{', '.join(parts)} ({self.level:.0%} CI, {self.n_resamples} subject resamples of {self.n_subjects})"


def resample_indices(n_subjects: int, n_resamples: int, seed: int) -> np.ndarray:
    """``int64[n_resamples, n_subjects]``: the subjects drawn (with replacement) by each resample."""
    return np.random.default_rng(seed).integers(0, n_subjects, size=(n_resamples, n_subjects), dtype=np.int64)


def shifted_sums(stats: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Per-subject central statistics ``[S, 2, 6]`` -> sums around ``shift`` ``[2, 2]`` (x, y per dim):
    ``(n, Σdx, Σdy, Σdx², Σdy², Σdxdy)`` with dx = pred - shift_x. Sums of these add across subjects."""
    n = stats[..., N]
    ox = stats[..., MEAN_X] - shift[None, :, 0]
    oy = stats[..., MEAN_Y] - shift[None, :, 1]
    ox = np.where(n > 0, ox, 0.0)  # a subject without frames has no mean; it contributes nothing
    oy = np.where(n > 0, oy, 0.0)
    return np.stack(
        [
            n,
            n * ox,
            n * oy,
            stats[..., M2_X] + n * ox * ox,
            stats[..., M2_Y] + n * oy * oy,
            stats[..., C_XY] + n * ox * oy,
        ],
        axis=-1,
    )


@njit(cache=True, nogil=True)
def _one_resample(sums, shift, idx, ddof, out):
    for d in range(sums.shape[1]):
        n = sx = sy = sxx = syy = sxy = 0.0
        for s in idx:
            r = sums[s, d]
            n += r[0]
            sx += r[1]
            sy += r[2]
            sxx += r[3]
            syy += r[4]
            sxy += r[5]
        if n == 0.0:
            out[d] = np.nan
            continue
        ox = sx / n
        oy = sy / n
        m2x = max(sxx - sx * ox, 0.0)
        m2y = max(syy - sy * oy, 0.0)
        out[d] = ccc_from_central(n, shift[d, 0] + ox, shift[d, 1] + oy, m2x, m2y, sxy - sx * oy, ddof)


@njit(cache=True, nogil=True, parallel=True)
def _resample_parallel(sums, shift, indices, ddof, out):
    for b in prange(indices.shape[0]):
        _one_resample(sums, shift, indices[b], ddof, out[b])


@njit(cache=True, nogil=True)
def _resample_serial(sums, shift, indices, ddof, out):
    for b in range(indices.shape[0]):
        _one_resample(sums, shift, indices[b], ddof, out[b])


def resample_scores(
    ss: SubjectStats, indices: np.ndarray, ddof: int = 0, parallel: bool = True
) -> np.ndarray:
    """``float64[B, 2]``: (ccc_v, ccc_a) of each resample ``indices[b]`` (subject indices into ``ss``)."""
    pooled = ss.pooled()
    shift = np.ascontiguousarray(pooled[:, [MEAN_X, MEAN_Y]])  # [2 dims, (x, y)]
    sums = np.ascontiguousarray(shifted_sums(ss.stats, shift))
    idx = np.ascontiguousarray(indices, dtype=np.int64)
    if idx.ndim != 2 or (idx.size and (idx.min() < 0 or idx.max() >= len(ss.subjects))):
        raise ValueError(
            f"resample_scores: indices must be [B, k] subject indices in [0, {len(ss.subjects)})"
        )
    out = np.empty((idx.shape[0], 2))
    with torch_threads_kept():
        (_resample_parallel if parallel else _resample_serial)(sums, shift, idx, float(ddof), out)
    return out


def bootstrap_ci(
    preds: Mapping | SubjectStats,
    golds: Mapping | None = None,
    masks: Mapping | None = None,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    ddof: int = 0,
    parallel: bool = True,
) -> BootstrapResult:
    """Point estimate and percentile CI of ``p_va``, ``ccc_v``, ``ccc_a`` under subject resampling.

    ``preds``/``golds``/``masks`` as in ``per_subject_table`` (or pass a ``SubjectStats`` as ``preds``
    and nothing else, to reuse statistics already computed).
    """
    where = "bootstrap_ci"
    ddof = check_ddof(ddof, where)
    if not 0.0 < level < 1.0:
        raise ValueError(f"{where}: level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"{where}: n_resamples must be >= 1, got {n_resamples}")
    if isinstance(preds, SubjectStats):
        ss = preds
    else:
        if golds is None:
            raise ValueError(f"{where}: golds is required with per-subject predictions")
        ss = subject_stats(preds, golds, masks)
    pooled = ss.pooled()
    if pooled[0, N] - ddof <= 0:
        raise ValueError(f"{where}: too few counted frames over all subjects ({int(pooled[0, N])})")
    estimate = scores_from_stats(pooled, ddof)
    res = resample_scores(ss, resample_indices(len(ss.subjects), n_resamples, seed), ddof, parallel)
    scores = np.column_stack([res.mean(axis=1), res])  # p_va, ccc_v, ccc_a
    ok = np.isfinite(scores).all(axis=1)
    alpha = (1.0 - level) / 2.0
    if ok.any():
        lo, hi = np.quantile(scores[ok], [alpha, 1.0 - alpha], axis=0)
    else:
        lo = hi = np.full(3, np.nan)
    return BootstrapResult(
        estimate=estimate,
        low={k: float(v) for k, v in zip(KEYS, lo, strict=True)},
        high={k: float(v) for k, v in zip(KEYS, hi, strict=True)},
        level=level,
        n_resamples=n_resamples,
        n_degenerate=int((~ok).sum()),
        n_subjects=len(ss.subjects),
        seed=seed,
    )
