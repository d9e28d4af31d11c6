"""Input checks shared by the metric and post-processing entry points.

Kernels never see an array these functions have not accepted: a real floating dtype numba compiles
for (float32 or float64, native byte order), agreeing shapes, and a boolean mask. Every error names the
function, the argument and what is wrong, so a bad call from a training loop points at its cause.
"""

from __future__ import annotations

import numpy as np

DIM_NAMES = ("valence", "arousal")


def as_values(a, name: str, where: str) -> np.ndarray:
    """``a`` as a float32 or float64 array without copying when it already is one.

    float16 widens to float32 (exact; numba has no CPU float16) and integers to float64, so every
    accepted input is accumulated in float64 by the kernels without having been rounded first.
    """
    arr = np.asarray(a)
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        elif arr.dtype.itemsize > 8:  # longdouble: numba has no such type
            arr = arr.astype(np.float64)
        elif not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
    elif kind in "iu":
        arr = arr.astype(np.float64)
    else:
        raise TypeError(f"{where}: {name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def as_mask(mask, n: int, where: str) -> np.ndarray | None:
    """A boolean mask of length ``n`` (True = the frame counts), or None for "every frame"."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        if m.dtype.kind not in "iu" or (m.size and not np.isin(m, (0, 1)).all()):
            raise TypeError(f"{where}: mask must be boolean (or 0/1 integers), got dtype {m.dtype}")
        m = m.astype(np.bool_)
    if m.ndim != 1 or m.shape[0] != n:
        raise ValueError(f"{where}: mask has shape {m.shape}, expected ({n},) — one flag per frame")
    return np.ascontiguousarray(m)


def check_pair(pred: np.ndarray, gold: np.ndarray, ndim: int, where: str) -> None:
    """Same shape, the expected rank and, for ``ndim == 2``, exactly two columns (valence, arousal)."""
    if pred.shape != gold.shape:
        raise ValueError(f"{where}: pred has shape {pred.shape} but gold has shape {gold.shape}")
    if pred.ndim != ndim or (ndim == 2 and pred.shape[1] != 2):
        want = "(N,)" if ndim == 1 else "(N, 2) with columns (valence, arousal)"
        raise ValueError(f"{where}: expected arrays of shape {want}, got {pred.shape}")


def nonfinite_error(where: str, arrays: dict[str, np.ndarray], mask: np.ndarray | None) -> ValueError:
    """The error for accumulated sums that came out non-finite: name the first offending value.

    Only called after a kernel's result was NaN/inf, so the happy path never pays for this scan.
    Values at masked-out frames are not part of the metric and are not reported.
    """
    for name, a in arrays.items():
        bad = ~np.isfinite(a)
        if mask is not None:
            bad &= mask if a.ndim == 1 else mask[:, None]
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            col = f" ({DIM_NAMES[idx[1]]})" if a.ndim == 2 and a.shape[1] == 2 else ""
            return ValueError(
                f"{where}: {name}[{', '.join(map(str, idx))}]{col} is {a[idx]} at a counted frame; "
                f"{int(bad.sum())} non-finite value(s) in all. The metric needs finite values "
                f"(fix the input or mask those frames out)."
            )
    return ValueError(
        f"{where}: the accumulated sums overflowed although every counted value is finite "
        f"(magnitudes near the float64 limit?)"
    )
