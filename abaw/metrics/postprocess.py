"""Post-processing chosen on validation and applied unchanged to the test set.

``search_windows`` scores every candidate smoothing window per dimension on validation predictions and
keeps the best window for valence and for arousal independently (CCC per dimension is what P_VA
averages, and the two dimensions smooth differently). ``PostprocessChoice`` records the choice and the
scores behind it; ``.save``/``.load`` (JSON) carry it from validation to submission, and ``.apply`` is
the only code path that post-processes predictions, so the submission gets exactly what was scored.

The search reads the predictions once: per subject and dimension it builds the prefix sums once, then
for each window computes the smoothed values into a small per-subject scratch buffer (in cache, not a
full array) and accumulates the CCC sums against gold, in parallel over groups of subjects. Smoothing
restarts at every subject, so nothing crosses a subject boundary. Window 1 (no smoothing) is always a
candidate: on validation the choice can never score below the raw (clipped) predictions. Ties go to the
smaller window.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from abaw.metrics._checks import DIM_NAMES, as_values
from abaw.metrics._threads import torch_threads_kept
from abaw.metrics.concordance import FASTMATH, MEAN_X, MEAN_Y, N, ccc_from_central, check_ddof, require_frames
from abaw.metrics.smoothing import (
    MEAN,
    MEDIAN,
    check_method,
    check_window,
    prefix_sums,
    window_means,
    window_medians,
)
from abaw.metrics.smoothing import smooth as smooth_array
from abaw.metrics.subjects import check_subjects, subject_stats

FORMAT = "abaw-postprocess/1"
N_CHUNKS = 64  # fixed, so the summation order (and the result) does not depend on the thread count


@dataclass(frozen=True)
class PostprocessChoice:
    """What to do to raw predictions: smooth (per dimension window), then clip to [-1, 1].

    ``scores`` is informational: what the search measured on validation (``p_va``, ``ccc_v``, ``ccc_a``
    after post-processing, ``raw`` before, the per-window table, ``ddof``, subject and frame counts).
    """

    window_v: int = 1
    window_a: int = 1
    clip: bool = True
    smooth: str = "mean"
    scores: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_method(self.smooth, "PostprocessChoice")
        check_window(self.window_v, "PostprocessChoice.window_v")
        check_window(self.window_a, "PostprocessChoice.window_a")
        if not isinstance(self.clip, bool):
            raise ValueError(f"PostprocessChoice: clip must be true/false, got {self.clip!r}")

    @property
    def windows(self) -> tuple[int, int]:
        return (self.window_v, self.window_a)

    def apply(self, preds):
        """Post-process ``{subject: [N, 2]}`` (-> dict, same order) or one subject's ``[N, 2]`` array."""
        if isinstance(preds, Mapping):
            return {s: self._apply_one(p, s) for s, p in preds.items()}
        return self._apply_one(preds, None)

    def _apply_one(self, pred, subject):
        arr = np.asarray(pred)
        if arr.ndim != 2 or arr.shape[1] != 2:
            who = f" for subject {subject!r}" if subject is not None else ""
            raise ValueError(
                f"PostprocessChoice.apply: expected [N, 2] predictions{who}, got shape {arr.shape}"
            )
        try:
            return smooth_array(arr, self.windows, self.smooth, self.clip)
        except ValueError as e:
            if subject is None:
                raise
            raise ValueError(f"subject {subject!r}: {e}") from None

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "PostprocessChoice") -> PostprocessChoice:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError(f"{source}: not a post-processing choice (expected format {FORMAT!r})")
        known = {"window_v", "window_a", "clip", "smooth", "scores"}
        unknown = sorted(set(d) - known - {"format"})
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}")
        try:
            return cls(**{k: d[k] for k in known if k in d})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (a crash never leaves a half-written choice)."""
        from abaw.utils import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PostprocessChoice:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=str(path))


def apply_postprocess(choice: PostprocessChoice, preds):
    """``choice.apply(preds)``."""
    return choice.apply(preds)


# ---- the search ---------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _accumulate(v, g, ms, n, cx, cy, out):
    """Add the shifted CCC sums of smoothed ``v`` against gold ``g`` over counted frames to ``out[6]``."""
    cnt = 0
    sx = sy = sxx = syy = sxy = 0.0
    for i in range(n):
        ok = ms[i]
        dx = v[i] - cx
        dy = g[i] - cy
        dx = dx if ok else 0.0
        dy = dy if ok else 0.0
        cnt += 1 if ok else 0
        sx += dx
        sy += dy
        sxx += dx * dx
        syy += dy * dy
        sxy += dx * dy
    out[0] += cnt
    out[1] += sx
    out[2] += sy
    out[3] += sxx
    out[4] += syy
    out[5] += sxy


@njit(cache=True, nogil=True)
def _search_chunk(x, y, m, offsets, s0, s1, maxlen, halves, method, clip, shift, out):
    """``out[w, d]`` += sums (around ``shift[d]``) over subjects ``s0:s1`` smoothed with window ``w``."""
    P = np.empty(maxlen + 1)
    v = np.empty(maxlen)
    g = np.empty(maxlen)
    buf = np.empty(2 * halves.max() + 1)
    for s in range(s0, s1):
        a = offsets[s]
        n = offsets[s + 1] - a
        if n == 0:
            continue
        ms = m[a : a + n]
        for d in range(2):
            col = x[a : a + n, d]
            g[:n] = y[a : a + n, d]  # contiguous copy: the accumulation loop then vectorises
            k = prefix_sums(col, P) if method == MEAN else 0.0
            for w in range(halves.shape[0]):
                if method == MEAN:
                    window_means(col, P, k, halves[w], clip, v)
                else:
                    window_medians(col, halves[w], clip, buf, v)
                _accumulate(v, g, ms, n, shift[d, 0], shift[d, 1], out[w, d])


# The chunk body lives in its own function: compiled inside a parfor it ran several times slower.
@njit(cache=True, nogil=True, parallel=True)
def _search_kernel(x, y, m, offsets, bounds, halves, method, clip, shift, out):
    """``out[c]`` = sums of subjects ``bounds[c]:bounds[c+1]``, one chunk per parallel iteration."""
    maxlen = 0
    for s in range(offsets.shape[0] - 1):
        maxlen = max(maxlen, offsets[s + 1] - offsets[s])
    for c in prange(bounds.shape[0] - 1):
        _search_chunk(x, y, m, offsets, bounds[c], bounds[c + 1], maxlen, halves, method, clip, shift, out[c])


def _chunk_bounds(lengths: np.ndarray, n_chunks: int) -> np.ndarray:
    """Contiguous subject groups of roughly equal frame counts: ``bounds[c]:bounds[c+1]``."""
    s = len(lengths)
    if s == 0:
        return np.zeros(1, dtype=np.int64)
    cum = np.cumsum(lengths)
    targets = cum[-1] * np.arange(1, n_chunks) / n_chunks
    cuts = np.searchsorted(cum, targets, side="left") + 1
    return np.unique(np.concatenate([[0], np.clip(cuts, 1, s), [s]])).astype(np.int64)


def window_scores(
    preds: Mapping,
    golds: Mapping,
    masks: Mapping | None,
    windows: Sequence[int],
    *,
    smooth: str = "mean",
    clip: bool = True,
    ddof: int = 0,
) -> np.ndarray:
    """``float64[W, 2]``: pooled (ccc_v, ccc_a) of the predictions smoothed with each window (each
    subject on its own, both dimensions with that window), then clipped when ``clip``."""
    where = "search_windows"
    ddof = check_ddof(ddof, where)
    check_method(smooth, where)
    halves = np.array([check_window(w, where) // 2 for w in windows], dtype=np.int64)
    if halves.size == 0:
        raise ValueError(f"{where}: no candidate windows")
    # Validates shapes, gold at counted frames, and gives the pooled means used as the common shift.
    ss = subject_stats(preds, golds, masks)
    pooled = ss.pooled()
    require_frames(pooled[0, N], ddof, where)
    subjects = list(ss.subjects)
    xs, ys, ms = [], [], []
    for s in subjects:
        p = as_values(preds[s], "pred", where)
        bad = ~np.isfinite(p)
        if bad.any():  # smoothing reads every frame, counted or not
            i, j = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(
                f"{where}: subject {s!r}: pred[{i}, {j}] ({DIM_NAMES[j]}) is {p[i, j]}; "
                f"smoothing needs finite predictions on every frame"
            )
        xs.append(p)
        ys.append(as_values(golds[s], "gold", where))
        ms.append(np.ones(len(p), dtype=bool) if masks is None else np.asarray(masks[s], dtype=bool))
    # float64 copies: the search is compute-bound, and one compiled variant is enough.
    x = np.concatenate(xs, dtype=np.float64)
    y = np.concatenate(ys, dtype=np.float64)
    m = np.concatenate(ms)
    offsets = np.concatenate([[0], np.cumsum(ss.frames)]).astype(np.int64)
    bounds = _chunk_bounds(ss.frames, N_CHUNKS)
    shift = np.ascontiguousarray(pooled[:, [MEAN_X, MEAN_Y]])
    sums = np.zeros((len(bounds) - 1, len(halves), 2, 6))
    method = MEAN if smooth in ("mean", "none") else MEDIAN
    if smooth == "none":
        halves = np.zeros_like(halves)
    with torch_threads_kept():
        _search_kernel(x, y, m, offsets, bounds, halves, method, bool(clip), shift, sums)
    tot = sums.sum(axis=0)  # [W, 2, 6], chunks added in a fixed order
    if not np.isfinite(tot).all():
        raise ValueError(f"{where}: the accumulated sums overflowed (magnitudes near the float64 limit?)")
    out = np.empty((len(halves), 2))
    for w in range(len(halves)):
        for d in range(2):
            n, sx, sy, sxx, syy, sxy = tot[w, d]
            ox, oy = sx / n, sy / n
            out[w, d] = ccc_from_central(
                n,
                shift[d, 0] + ox,
                shift[d, 1] + oy,
                max(sxx - sx * ox, 0.0),
                max(syy - sy * oy, 0.0),
                sxy - sx * oy,
                float(ddof),
            )
    return out


def search_windows(
    preds: Mapping,
    golds: Mapping,
    masks: Mapping | None = None,
    windows: Sequence[int] | None = None,
    *,
    smooth: str = "mean",
    clip: bool = True,
    ddof: int = 0,
) -> PostprocessChoice:
    """Pick the smoothing window per dimension that maximises validation CCC; see the module notes.

    ``preds``/``golds``: ``{subject: [N, 2]}``; ``masks``: ``{subject: bool [N]}`` or None;
    ``windows``: odd candidates (default: ``PostprocessConfig().windows``); window 1 is always added.
    ``smooth="none"`` skips the search (windows 1, clip only).
    """
    check_subjects(preds, golds, masks, "search_windows")
    if windows is None:
        from abaw.metrics.config import PostprocessConfig

        windows = PostprocessConfig().windows
    cands = sorted({1, *(check_window(w, "search_windows") for w in windows)})
    if smooth == "none":
        cands = [1]
    table = window_scores(preds, golds, masks, cands, smooth=smooth, clip=clip, ddof=ddof)
    best = [int(np.argmax(table[:, d])) for d in range(2)]  # first maximum = smallest window
    wv, wa = cands[best[0]], cands[best[1]]
    cv, ca = float(table[best[0], 0]), float(table[best[1], 1])
    rv, ra = float(table[0, 0]), float(table[0, 1])
    n_valid = int(sum(np.count_nonzero(masks[s]) if masks is not None else len(preds[s]) for s in preds))
    scores = {
        "p_va": 0.5 * (cv + ca),
        "ccc_v": cv,
        "ccc_a": ca,
        "raw": {"p_va": 0.5 * (rv + ra), "ccc_v": rv, "ccc_a": ra},
        "windows": cands,
        "ccc_v_by_window": [float(v) for v in table[:, 0]],
        "ccc_a_by_window": [float(v) for v in table[:, 1]],
        "ddof": ddof,
        "n_subjects": len(preds),
        "n_valid": n_valid,
    }
    return PostprocessChoice(window_v=wv, window_a=wa, clip=bool(clip), smooth=smooth, scores=scores)


def search_from_config(
    cfg, preds: Mapping, golds: Mapping, masks: Mapping | None = None, ddof: int = 0
) -> PostprocessChoice:
    """``search_windows`` with the candidates, method and clipping of a ``PostprocessConfig``."""
    return search_windows(preds, golds, masks, cfg.windows, smooth=cfg.smooth, clip=cfg.clip, ddof=ddof)
