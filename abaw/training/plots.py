"""Figures written beside a run: predictions against labels with gate values, and training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from abaw.utils import atomic_path

MAX_POINTS = 2000


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def plot_validation(path: str | Path, subjects: Sequence[dict]) -> Path:
    """One column per subject: valence and arousal (prediction vs label, unannotated frames left
    blank), then one row per gate of the model (every component, e.g. each iteration's weight on the
    attended branch). Each dict: name, pred[N,2], gold[N,2], valid[N], gates {name: float32[N, ...]}."""
    plt = _pyplot()
    n = max(1, len(subjects))
    gate_names = sorted({g for s in subjects for g in (s.get("gates") or {})})
    rows = 2 + max(1, len(gate_names))
    fig, axes = plt.subplots(rows, n, figsize=(5 * n, 2.0 * rows), squeeze=False, sharex="col")
    # Fixed margins: tight_layout measures every tick label and costs seconds on a busy CPU.
    fig.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.06, wspace=0.25, hspace=0.15)
    for j, s in enumerate(subjects):
        # At most ~2000 points per line: a 20,000-frame video drawn point by point only costs time.
        step = max(1, -(-len(s["pred"]) // MAX_POINTS))
        frames = np.arange(0, len(s["pred"]), step)
        for row, (dim, label) in enumerate(((0, "valence"), (1, "arousal"))):
            ax = axes[row, j]
            gold = np.where(s["valid"], s["gold"][:, dim], np.nan)[::step]
            ax.plot(frames, gold, color="black", lw=1.0, label="label")
            ax.plot(frames, s["pred"][::step, dim], color="tab:red", lw=1.0, label="prediction")
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel(label)
            if row == 0:
                ax.set_title(s["name"], fontsize=9)
                ax.legend(loc="upper right", fontsize=7)
        gates = s.get("gates") or {}
        if not gate_names:
            axes[2, j].text(0.5, 0.5, "no gates in this model", ha="center", va="center",
                            transform=axes[2, j].transAxes)
        for row, name in enumerate(gate_names, start=2):
            ax = axes[row, j]
            if name in gates:
                g = np.asarray(gates[name])[::step]
                if g.ndim >= 2 and g.shape[-1] == 2:
                    # A two-way softmax gate (unimodal vs attended): its second weight says it all.
                    g, suffix = g[..., 1], " attended"
                else:
                    suffix = ""
                shape = g.shape[1:]
                flat = g.reshape(len(frames), -1)
                for c in range(flat.shape[1]):
                    idx = np.unravel_index(c, shape) if shape else ()
                    ax.plot(frames, flat[:, c], lw=0.8, label="[" + ",".join(map(str, idx)) + "]")
                if 1 < flat.shape[1] <= 8:
                    ax.legend(loc="upper right", fontsize=6, ncol=2)
                ax.set_ylabel(name + suffix, fontsize=8)
            ax.set_ylim(-0.05, 1.05)
        axes[-1, j].set_xlabel("frame")
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_curves(path: str | Path, history: Sequence[dict]) -> Path:
    """Training loss, validation P_VA / CCCs and learning rate per epoch."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    fig.subplots_adjust(left=0.05, right=0.98, top=0.9, bottom=0.14, wspace=0.25)
    epochs = [h["epoch"] for h in history]

    def series(key):
        return [h.get(key, np.nan) for h in history]

    axes[0].plot(epochs, series("train/loss"), marker=".")
    axes[0].set_title("train loss (1 - CCC)")
    for key in ("val/p_va", "val/ccc_v", "val/ccc_a"):
        axes[1].plot(epochs, series(key), marker=".", label=key.split("/")[1])
    axes[1].legend(fontsize=8)
    axes[1].set_title("validation")
    axes[2].plot(epochs, series("lr"), marker=".")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_gate_shift(path: str | Path, rows: Sequence[dict]) -> Path:
    """The ablation's gate figure: per level (columns) and modality (rows), each gated variant's mean
    attended weight of its per-iteration gate on clean and on degraded frames of that modality (mean
    over seeds, bar = one standard deviation). A gate that falls back where its modality is degraded
    has a lower degraded bar. Each row: level, variant, ``gate/<m>/iter/clean`` and ``.../degraded``."""
    plt = _pyplot()
    levels = list(dict.fromkeys(r["level"] for r in rows)) or ["-"]
    mods = ("visual", "audio")
    fig, axes = plt.subplots(len(mods), len(levels), figsize=(4.5 * len(levels), 3.2 * len(mods)),
                             squeeze=False, sharey=True)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.14, wspace=0.1, hspace=0.45)
    for j, level in enumerate(levels):
        for i, m in enumerate(mods):
            ax = axes[i, j]
            at = [r for r in rows if r["level"] == level and np.isfinite(r.get(f"gate/{m}/iter/clean", np.nan))]
            variants = list(dict.fromkeys(r["variant"] for r in at))
            for k, (part, colour) in enumerate((("clean", "tab:blue"), ("degraded", "tab:red"))):
                vals = [[r[f"gate/{m}/iter/{part}"] for r in at if r["variant"] == v] for v in variants]
                mean = [float(np.nanmean(v)) for v in vals]
                sd = [float(np.nanstd(v)) for v in vals]
                ax.bar(np.arange(len(variants)) + (k - 0.5) * 0.38, mean, 0.38, yerr=sd, color=colour,
                       label=f"{part} {m} frames")
            ax.set_xticks(np.arange(len(variants)), variants, fontsize=8, rotation=15)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{level}: {m} gate", fontsize=9)
            if j == 0:
                ax.set_ylabel("attended weight")
            if not variants:
                ax.text(0.5, 0.5, "no gated variant", ha="center", va="center", transform=ax.transAxes)
            elif i == 0 and j == 0:
                ax.legend(fontsize=7, loc="lower left")
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
