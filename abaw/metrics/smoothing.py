"""Temporal smoothing of one subject's predictions: centred moving mean or median, then clipping.

The window is centred and odd (``2h + 1`` frames). At the edges it is truncated to the frames that
exist (frame 0 with window 5 averages frames 0..2): no zero padding pulling the ends towards 0, no
reflection inventing frames. This is ``rolling(center=True, min_periods=1)`` in pandas/polars terms.
Smoothing runs within one subject; callers with several subjects smooth each separately (see
``postprocess``), so no window ever crosses a subject boundary.

The mean is O(N) per window from float64 prefix sums of ``x - x[0]`` (the shift keeps the prefix small
for data far from 0, and makes a constant input come out exactly constant). The median keeps the window
sorted (binary search, then shifting only the values ranked between the leaving and the entering one):
O(N * window) at worst, about 0.1 us per frame at window 99 on noisy input, so a 50-window median search
over 3 M frames takes tens of CPU seconds where the mean takes under one. The same kernels serve
``smooth()`` and the validation window search, so a submission gets exactly the values the search scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from abaw.metrics._checks import DIM_NAMES, as_values

METHODS = ("mean", "median", "none")
MEAN, MEDIAN = 0, 1


@njit(cache=True, nogil=True)
def prefix_sums(col, P):
    """``P[i] = sum(col[:i] - col[0])`` into ``P[: n + 1]``; returns the shift ``col[0]``."""
    n = col.shape[0]
    k = np.float64(col[0]) if n else 0.0
    acc = 0.0
    P[0] = 0.0
    for i in range(n):
        acc += np.float64(col[i]) - k
        P[i + 1] = acc
    return k


@njit(cache=True, nogil=True)
def window_means(col, P, k, h, clip, out):
    """Truncated centred means of half-width ``h`` of ``col`` (prefix sums ``P``, shift ``k`` from
    ``prefix_sums``) into ``out[:n]``. ``h = 0`` copies ``col`` exactly (no round trip through P)."""
    n = col.shape[0]
    if h == 0:
        for i in range(n):
            out[i] = _clip(np.float64(col[i]), clip)
        return
    # Edges (truncated windows) one by one; the interior, where every window is whole, as a loop over
    # 0-based slices with a constant divisor, which LLVM vectorises.
    n_left = min(h, n)
    for i in range(n_left):
        hi = min(i + h + 1, n)
        out[i] = _clip(k + P[hi] / hi, clip)  # P[0] == 0
    w = 2 * h + 1
    n_mid = n - 2 * h
    if n_mid > 0:
        lower = P[:n_mid]
        upper = P[w : w + n_mid]
        mid = out[h : h + n_mid]
        for j in range(n_mid):
            mid[j] = _clip(k + (upper[j] - lower[j]) / w, clip)
    for i in range(max(n - h, n_left), n):
        lo_i = max(i - h, 0)
        out[i] = _clip(k + (P[n] - P[lo_i]) / (n - lo_i), clip)


@njit(cache=True, nogil=True, inline="always")
def _clip(v, clip):
    if clip:
        v = -1.0 if v < -1.0 else v
        v = 1.0 if v > 1.0 else v
    return v


@njit(cache=True, nogil=True)
def _lower_bound(buf, cnt, v):
    lo, hi = 0, cnt
    while lo < hi:
        mid = (lo + hi) >> 1
        if buf[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _insert(buf, cnt, v):
    pos = _lower_bound(buf, cnt, v)
    for j in range(cnt, pos, -1):
        buf[j] = buf[j - 1]
    buf[pos] = v


@njit(cache=True, nogil=True)
def _remove(buf, cnt, v):
    for j in range(_lower_bound(buf, cnt, v), cnt - 1):
        buf[j] = buf[j + 1]


@njit(cache=True, nogil=True)
def _replace(buf, cnt, old, new):
    """Swap ``old`` for ``new`` in sorted ``buf``, moving only the values ranked between the two."""
    j = _lower_bound(buf, cnt, old)
    while j + 1 < cnt and buf[j + 1] < new:
        buf[j] = buf[j + 1]
        j += 1
    while j > 0 and buf[j - 1] > new:
        buf[j] = buf[j - 1]
        j -= 1
    buf[j] = new


@njit(cache=True, nogil=True)
def window_medians(col, h, clip, buf, out):
    """Truncated centred medians of half-width ``h`` into ``out[:n]`` (``buf``: scratch of 2h + 1).

    An even count (only at the edges) takes the mean of the two middle values. Needs finite input.
    """
    n = col.shape[0]
    cnt = 0
    for j in range(min(h + 1, n)):
        _insert(buf, cnt, np.float64(col[j]))
        cnt += 1
    for i in range(n):
        half = cnt >> 1
        v = buf[half] if cnt & 1 else 0.5 * (buf[half - 1] + buf[half])
        out[i] = _clip(v, clip)
        leaving = i - h >= 0
        entering = i + h + 1 < n
        if leaving and entering:  # the steady state: one value out, one in, window size unchanged
            _replace(buf, cnt, np.float64(col[i - h]), np.float64(col[i + h + 1]))
        elif leaving:
            _remove(buf, cnt, np.float64(col[i - h]))
            cnt -= 1
        elif entering:
            _insert(buf, cnt, np.float64(col[i + h + 1]))
            cnt += 1


@njit(cache=True, nogil=True)
def _smooth_columns(x, halves, method, clip, out):
    n = x.shape[0]
    P = np.empty(n + 1)
    buf = np.empty(2 * max(halves.max(), 0) + 1)
    tmp = np.empty(n)
    for d in range(x.shape[1]):
        col = x[:, d]
        h = halves[d]
        if method == MEAN:
            k = prefix_sums(col, P)
            window_means(col, P, k, h, clip, tmp)
        else:
            window_medians(col, h, clip, buf, tmp)
        out[:, d] = tmp


def check_window(w, where: str) -> int:
    """A window length: an odd integer >= 1 (1 = no smoothing)."""
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 or w % 2 == 0:
        raise ValueError(f"{where}: a smoothing window must be an odd integer >= 1, got {w!r}")
    return int(w)


def check_method(method: str, where: str) -> str:
    if method not in METHODS:
        raise ValueError(f"{where}: smoothing method must be one of {METHODS}, got {method!r}")
    return method


def smooth(x, window: int | Sequence[int], method: str = "mean", clip: bool = False) -> np.ndarray:
    """Smooth one subject's predictions along time (axis 0), each column on its own.

    ``x``: ``[N]`` or ``[N, D]``; ``window``: one odd length for every column, or one per column (e.g.
    ``(window_v, window_a)``); ``method``: "mean", "median" or "none"; ``clip``: clip to [-1, 1]
    afterwards. Returns a new array, float32 for float16/float32 input, else float64. Input must be
    finite (a NaN would spread over a whole window): ``ValueError`` naming the first bad frame.
    """
    where = "smooth"
    check_method(method, where)
    arr = as_values(x, "x", where)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{where}: expected [N] or [N, D], got shape {arr.shape}")
    x2 = arr[:, None] if arr.ndim == 1 else arr
    d = x2.shape[1]
    windows = [window] * d if np.ndim(window) == 0 else list(window)
    if len(windows) != d:
        raise ValueError(f"{where}: {len(windows)} window(s) for {d} column(s)")
    halves = np.array([check_window(w, where) // 2 for w in windows], dtype=np.int64)
    out_dtype = np.float32 if arr.dtype == np.float32 else np.float64
    bad = ~np.isfinite(x2)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        col = f" ({DIM_NAMES[j]})" if d == 2 else ""
        raise ValueError(f"{where}: x[{i}, {j}]{col} is {x2[i, j]}; smoothing needs finite values")
    if method == "none" or arr.shape[0] == 0:
        out = x2.astype(out_dtype, copy=True)
        if clip:
            np.clip(out, -1.0, 1.0, out=out)
        return out.reshape(arr.shape)
    out = np.empty(x2.shape, dtype=np.float64)
    # float64, C order: one compiled variant serves every input.
    _smooth_columns(
        np.ascontiguousarray(x2, dtype=np.float64),
        halves,
        MEAN if method == "mean" else MEDIAN,
        bool(clip),
        out,
    )
    return out.astype(out_dtype, copy=False).reshape(arr.shape)
