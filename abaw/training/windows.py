"""Cutting subjects into overlapping windows and stitching window outputs back into whole subjects."""

from __future__ import annotations

import numpy as np


def window_starts(n: int, window: int, hop: int) -> np.ndarray:
    """Start frames of the windows covering ``n`` frames: every ``hop`` frames, plus one end-aligned
    window so the tail is covered by a full window rather than a short, padded one. A subject shorter
    than the window gets a single window at 0 (padded by the collate function)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if window <= 0 or n <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n - window + 1, hop, dtype=np.int64)
    if starts[-1] != n - window:
        starts = np.append(starts, n - window)
    return starts


class Stitcher:
    """Averages per-frame window outputs back onto each subject's frame axis.

    Overlapping windows are averaged (sum / count): each frame gets the mean of the windows that see
    it. ``averaged`` arrays (predictions, gate values) are summed; ``fixed`` arrays (gold, masks) are the
    same in every window that covers a frame and are simply written. Arrays are allocated when a subject
    is first seen, so no subject list is needed up front.
    """

    def __init__(self) -> None:
        self._count: dict[str, np.ndarray] = {}
        self._sum: dict[str, dict[str, np.ndarray]] = {}
        self._fixed: dict[str, dict[str, np.ndarray]] = {}

    def add(self, subject: str, start: int, n_frames: int, averaged: dict[str, np.ndarray],
            fixed: dict[str, np.ndarray] | None = None) -> None:
        """Add window outputs for frames ``start..start+L``; rows past ``n_frames`` are padding."""
        if subject not in self._count:
            self._count[subject] = np.zeros(n_frames, dtype=np.int32)
            self._sum[subject], self._fixed[subject] = {}, {}
        elif len(self._count[subject]) != n_frames:
            raise ValueError(f"{subject}: a window claims {n_frames} frames, earlier ones "
                             f"{len(self._count[subject])}")
        length = None
        for store, arrays, dtype in ((self._sum[subject], averaged, np.float64),
                                     (self._fixed[subject], fixed or {}, None)):
            for key, arr in arrays.items():
                n = max(0, min(len(arr), n_frames - start))
                if length is None:
                    length = n
                if key not in store:
                    store[key] = np.zeros((n_frames, *arr.shape[1:]), dtype=dtype or arr.dtype)
                if dtype is None:
                    store[key][start:start + n] = arr[:n]
                else:
                    store[key][start:start + n] += arr[:n]
        if length:
            self._count[subject][start:start + length] += 1

    def subjects(self) -> list[str]:
        return list(self._count)

    def state(self) -> dict:
        """Everything added so far (plain dicts of arrays), for gathering across DDP ranks."""
        return {"count": self._count, "sum": self._sum, "fixed": self._fixed}

    def merge(self, state: dict) -> None:
        """Add another stitcher's ``state()``: counts and sums add up, so frames seen on several ranks
        are averaged over every window that covered them, and no frame is counted twice."""
        for subject, count in state["count"].items():
            if subject not in self._count:
                self._count[subject] = np.zeros_like(count)
                self._sum[subject], self._fixed[subject] = {}, {}
            elif len(self._count[subject]) != len(count):
                raise ValueError(f"{subject}: {len(count)} frames on one rank, {len(self._count[subject])} on another")
            self._count[subject] += count
            for key, arr in state["sum"][subject].items():
                mine = self._sum[subject]
                mine[key] = mine[key] + arr if key in mine else arr.copy()
            seen = count > 0
            for key, arr in state["fixed"][subject].items():
                mine = self._fixed[subject]
                if key not in mine:
                    mine[key] = np.zeros_like(arr)
                mine[key][seen] = arr[seen]

    def covered(self, subject: str) -> np.ndarray:
        """bool[N]: frames that at least one window reached (all of them after a full pass)."""
        return self._count[subject] > 0

    def mean(self, subject: str, key: str = "pred", allow_gaps: bool = False) -> np.ndarray:
        """float32[N, ...]: the mean over the windows covering each frame. A frame no window reached is
        an error unless ``allow_gaps`` (partial passes: Lightning's sanity check, limit_val_batches);
        it is then 0 and ``covered`` says so."""
        count = self._count[subject]
        if not allow_gaps and (count == 0).any():
            missing = np.flatnonzero(count == 0)
            raise ValueError(f"{subject}: {len(missing)} frame(s) covered by no window "
                             f"(first {int(missing[0])}); window/hop leave gaps")
        total = self._sum[subject][key]
        scale = np.maximum(count, 1).reshape(-1, *([1] * (total.ndim - 1)))
        return (total / scale).astype(np.float32)

    def fixed(self, subject: str, key: str) -> np.ndarray:
        return self._fixed[subject][key]

    def averaged_keys(self, subject: str) -> list[str]:
        return list(self._sum[subject])


def frame_gates(gates: dict, batch_size: int, length: int) -> dict[str, np.ndarray]:
    """Per-frame gate values as float32[B, L, ...] numpy arrays. Gates without a time axis are left
    out: they cannot be stitched along one."""
    out = {}
    for name, g in gates.items():
        if g is None or g.ndim < 2 or g.shape[0] != batch_size or g.shape[1] != length:
            continue
        out[name] = g.detach().float().cpu().numpy()
    return out
