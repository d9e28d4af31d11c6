"""Gate diagnostics: is a softmax gate alive, and does it move where a modality is degraded?

Pure NumPy on per-frame gate values; knows nothing of models, runs or files. Two gate layouts (those
``abaw.models`` emits, one row per frame after stitching):

  ``"<m>/iter"``  float[N, T, 2]  per-iteration gate; [..., 1] is the weight on the attended features
  ``"<m>/stage"`` float[N, T]     stage gate: a distribution over the T iterations

Every gate row is a probability distribution over K choices (K = 2 for an iteration gate, T for the
stage gate). Per distribution the diagnostics are:

  mean, std            over frames, of each component (for an iteration gate: the attended weight)
  above_99, below_01   fraction of frames where that component is > 0.99 / < 0.01 (saturation)
  one_hot              fraction of frames where some component is > 0.99
  entropy_mean/median  per-frame entropy divided by log K: 0 = one-hot, 1 = uniform

and, given per-frame "degraded" masks per modality, the same on degraded and on clean frames of the
gate's own modality with the difference of the means (``shift`` = degraded - clean), and that
difference split by the *other* modality (``shift_other``). A gate that falls back to its unattended
features where the other modality is useless shows a negative attended-weight ``shift_other``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SATURATED_HI, SATURATED_LO = 0.99, 0.01
_EPS = 1e-12


def entropy(p: np.ndarray) -> np.ndarray:
    """Normalised entropy of distributions along the last axis: float64[...] in [0, 1] (K >= 2)."""
    p = np.asarray(p, dtype=np.float64)
    k = p.shape[-1]
    if k < 2:
        raise ValueError(f"entropy needs distributions over >= 2 choices, got last axis of size {k}")
    q = np.clip(p, _EPS, 1.0)
    return -(p * np.log(q)).sum(axis=-1) / np.log(k)


def distribution_stats(p: np.ndarray, frames: np.ndarray | None = None) -> dict:
    """Diagnostics of distributions ``p`` float[N, K] over the frames selected by ``frames`` (bool[N]).

    Lists run over the K components. With no selected frame every value is NaN (n_frames 0), so a
    split with nothing in it never passes for a gate that does not move."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"distribution_stats: expected [frames, choices], got shape {p.shape}")
    if frames is not None:
        frames = np.asarray(frames, dtype=bool)
        if frames.shape != (len(p),):
            raise ValueError(f"distribution_stats: frame mask of shape {frames.shape} for {len(p)} frames")
        p = p[frames]
    k = p.shape[1]
    if len(p) == 0:
        nan = [float("nan")] * k
        return {"n_frames": 0, "mean": nan, "std": nan, "above_99": nan, "below_01": nan,
                "one_hot": float("nan"), "entropy_mean": float("nan"), "entropy_median": float("nan")}
    h = entropy(p)
    return {
        "n_frames": int(len(p)),
        "mean": p.mean(axis=0).tolist(),
        "std": p.std(axis=0).tolist(),
        "above_99": (p > SATURATED_HI).mean(axis=0).tolist(),
        "below_01": (p < SATURATED_LO).mean(axis=0).tolist(),
        "one_hot": float((p.max(axis=1) > SATURATED_HI).mean()),
        "entropy_mean": float(h.mean()),
        "entropy_median": float(np.median(h)),
    }


def _split(p: np.ndarray, degraded: np.ndarray | None, valid: np.ndarray,
           other: np.ndarray | None = None) -> dict:
    out = {"all": distribution_stats(p, valid)}
    if other is not None:
        # By the *other* modality: a visual gate should fall back to the face where the voice is useless.
        o = np.asarray(other, dtype=bool)
        hi, lo = distribution_stats(p, valid & o), distribution_stats(p, valid & ~o)
        out["shift_other"] = (np.asarray(hi["mean"]) - np.asarray(lo["mean"])).tolist()
    if degraded is not None:
        d = np.asarray(degraded, dtype=bool)
        if d.shape != valid.shape:
            raise ValueError(f"degraded mask of shape {d.shape} for {len(valid)} frames")
        out["degraded"] = distribution_stats(p, valid & d)
        out["clean"] = distribution_stats(p, valid & ~d)
        out["shift"] = (np.asarray(out["degraded"]["mean"]) - np.asarray(out["clean"]["mean"])).tolist()
    return out


def gate_diagnostics(gates: Mapping[str, np.ndarray], degraded: Mapping[str, np.ndarray] | None = None,
                     valid: np.ndarray | None = None) -> dict:
    """Diagnostics of every gate in ``gates`` (name -> per-frame values, layouts above).

    ``degraded``: modality -> bool[N], True where that modality is degraded (the gate ``"<m>/..."`` is
    split by its own modality's mask); ``valid``: bool[N] frames to count (default all).

    Returns ``{name: {"kind": "iter"|"stage", ...}}``: an iteration gate holds ``"iterations"``, one
    entry per t, each with "all" (and "degraded", "clean", "shift") distribution stats over the two
    choices [unattended, attended]; a stage gate holds those splits directly, over the T iterations.
    """
    out: dict = {}
    for name, values in sorted(gates.items()):
        g = np.asarray(values, dtype=np.float64)
        n = len(g)
        v = np.ones(n, bool) if valid is None else np.asarray(valid, dtype=bool)
        if v.shape != (n,):
            raise ValueError(f"gate {name!r}: valid mask of shape {v.shape} for {n} frames")
        modality, _, kind = name.partition("/")
        d = None if degraded is None else degraded.get(modality)
        others = [m for m in (degraded or {}) if m != modality]
        o = degraded[others[0]] if len(others) == 1 else None
        if kind == "iter":
            if g.ndim != 3 or g.shape[2] != 2:
                raise ValueError(f"gate {name!r}: expected [frames, iterations, 2], got shape {g.shape}")
            out[name] = {"kind": "iter", "iterations": [_split(g[:, t], d, v, o) for t in range(g.shape[1])]}
        elif kind == "stage":
            if g.ndim != 2:
                raise ValueError(f"gate {name!r}: expected [frames, iterations], got shape {g.shape}")
            if g.shape[1] < 2:  # over a single iteration the stage gate has nothing to choose
                continue
            out[name] = {"kind": "stage", **_split(g, d, v, o)}
        else:
            raise ValueError(f"gate {name!r}: expected a name '<modality>/iter' or '<modality>/stage'")
    return out


def headline(diagnostics: Mapping[str, dict]) -> dict[str, float]:
    """A few numbers per gate for tables: for an iteration gate the attended weight averaged over the
    iterations (mean, median entropy, fraction above 0.99, its mean on degraded and on clean frames and
    their difference, the shift); for a stage gate
    the median entropy and the fraction of frames where one iteration takes > 0.99."""
    out: dict[str, float] = {}
    for name, d in diagnostics.items():
        if d["kind"] == "iter":
            its = d["iterations"]
            out[f"{name}/attended"] = float(np.mean([i["all"]["mean"][1] for i in its]))
            out[f"{name}/entropy_median"] = float(np.mean([i["all"]["entropy_median"] for i in its]))
            out[f"{name}/above_99"] = float(np.mean([i["all"]["above_99"][1] for i in its]))
            if "shift" in its[0]:
                out[f"{name}/shift"] = float(np.mean([i["shift"][1] for i in its]))
                out[f"{name}/degraded"] = float(np.mean([i["degraded"]["mean"][1] for i in its]))
                out[f"{name}/clean"] = float(np.mean([i["clean"]["mean"][1] for i in its]))
            if "shift_other" in its[0]:
                out[f"{name}/shift_other"] = float(np.mean([i["shift_other"][1] for i in its]))
        else:
            out[f"{name}/entropy_median"] = d["all"]["entropy_median"]
            out[f"{name}/above_99"] = d["all"]["one_hot"]
            if "shift" in d:
                # How far the stage weights move: half the L1 distance between the two mean distributions.
                out[f"{name}/shift"] = float(0.5 * np.abs(np.asarray(d["shift"])).sum())
    return out
