"""Per-subject sufficient statistics and the per-subject CCC table (error analysis).

One pass over each subject's frames gives its central statistics (count, means, centred sums of squares
and cross-products, per dimension). Everything subject-level is computed from those: the table, the
pooled score (merged exactly, as if the frames had been concatenated) and the subject bootstrap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from abaw.metrics.concordance import (
    M2_X,
    M2_Y,
    MEAN_X,
    MEAN_Y,
    N,
    ccc_from_stats,
    check_ddof,
    pair_stats,
    pool_stats,
)


@dataclass(frozen=True)
class SubjectStats:
    """``stats[s, d]`` = (n, mean_pred, mean_gold, m2_pred, m2_gold, c_xy) of subject ``s``, dimension
    ``d`` (0 valence, 1 arousal) over its counted frames; ``frames[s]`` = all its frames."""

    subjects: tuple[str, ...]
    frames: np.ndarray  # int64 [S]
    stats: np.ndarray  # float64 [S, 2, 6]

    def pooled(self) -> np.ndarray:
        """``[2, 6]`` statistics of all subjects' counted frames pooled."""
        return pool_stats(self.stats)


def check_subjects(preds: Mapping, golds: Mapping, masks: Mapping | None, where: str) -> list[str]:
    """The subjects (in ``preds`` order), after checking the three mappings cover the same ones."""
    if not isinstance(preds, Mapping) or not isinstance(golds, Mapping):
        raise TypeError(f"{where}: preds and golds must be mappings subject -> array [N, 2]")
    subjects = list(preds)
    if not subjects:
        raise ValueError(f"{where}: no subjects")
    missing = [s for s in subjects if s not in golds]
    extra = [s for s in golds if s not in preds]
    if missing or extra:
        raise ValueError(
            f"{where}: preds and golds cover different subjects: no gold for {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, no prediction for {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    if masks is not None:
        if not isinstance(masks, Mapping):
            raise TypeError(f"{where}: masks must be a mapping subject -> bool [N] (or None)")
        no_mask = [s for s in subjects if s not in masks]
        if no_mask:
            raise ValueError(
                f"{where}: no mask for subject(s) {no_mask[:5]}{' ...' if len(no_mask) > 5 else ''}"
            )
    return subjects


def subject_stats(preds: Mapping, golds: Mapping, masks: Mapping | None = None) -> SubjectStats:
    """Statistics of every subject (``[N_s, 2]`` arrays; ``masks[s]`` bool ``[N_s]``, None = all count)."""
    where = "subject_stats"
    subjects = check_subjects(preds, golds, masks, where)
    stats = np.empty((len(subjects), 2, 6))
    frames = np.empty(len(subjects), dtype=np.int64)
    for i, s in enumerate(subjects):
        m = None if masks is None else masks[s]
        stats[i] = pair_stats(preds[s], golds[s], m, ndim=2, where=f"{where}[{s!r}]")
        frames[i] = np.shape(preds[s])[0]
    return SubjectStats(tuple(subjects), frames, stats)


def per_subject_table(preds: Mapping, golds: Mapping, masks: Mapping | None = None, ddof: int = 0):
    """One row per subject: ``subject, frames, valid, ccc_v, ccc_a, p_va`` and the mean/std of pred
    and gold per dimension (``pred_mean_v, pred_mean_a, pred_std_v, pred_std_a, gold_mean_v, ...``),
    all over the subject's counted frames, std with the same ``ddof`` as the CCC.

    A subject without counted frames (or with fewer than ``ddof + 1``) gets NaN scores and stats; the
    table describes every subject rather than refusing one. Rows follow ``preds`` order.
    """
    ddof = check_ddof(ddof, "per_subject_table")
    return table_from_stats(subject_stats(preds, golds, masks), ddof)


def table_from_stats(ss: SubjectStats, ddof: int = 0):
    """``per_subject_table`` from already computed statistics."""
    import polars as pl

    st = ss.stats
    n = st[:, 0, N]
    cccs = ccc_from_stats(st, ddof)  # [S, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dof = np.where(n - ddof > 0, n - ddof, np.nan)[:, None]
        has = (n > 0)[:, None]
        pred_mean = np.where(has, st[:, :, MEAN_X], np.nan)
        gold_mean = np.where(has, st[:, :, MEAN_Y], np.nan)
        pred_std = np.sqrt(st[:, :, M2_X] / dof)
        gold_std = np.sqrt(st[:, :, M2_Y] / dof)
    cols = {
        "subject": list(ss.subjects),
        "frames": ss.frames,
        "valid": n.astype(np.int64),
        "ccc_v": cccs[:, 0],
        "ccc_a": cccs[:, 1],
        "p_va": cccs.mean(axis=1),
    }
    for name, arr in (
        ("pred_mean", pred_mean),
        ("pred_std", pred_std),
        ("gold_mean", gold_mean),
        ("gold_std", gold_std),
    ):
        cols[f"{name}_v"] = arr[:, 0]
        cols[f"{name}_a"] = arr[:, 1]
    return pl.DataFrame(cols)
