"""The ablation table from one row per cell (pure: polars/numpy, nothing of training).

A row: level, variant, seed, val_p_va, test_p_va and gate headline numbers (``gate/<name>``). The
table has one line per (level, variant): mean and standard deviation over seeds, and the paired
difference against the reference variant (same level, same seed) with its spread and win count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

GATE_COLUMNS = (
    ("gate/visual/iter/attended", "vis att"),
    ("gate/visual/iter/entropy_median", "vis H"),
    ("gate/visual/iter/above_99", "vis >.99"),
    ("gate/visual/iter/shift", "vis shift"),
    ("gate/visual/iter/shift_nocrop", "vis no-crop shift"),
    ("gate/audio/iter/attended", "aud att"),
    ("gate/audio/iter/shift", "aud shift"),
)


def summarise(rows: Sequence[dict], reference: str = "rjca", metric: str = "test_p_va") -> pl.DataFrame:
    """One line per (level, variant), in the order the rows first name them."""
    if not rows:
        return pl.DataFrame()
    df = pl.from_dicts(list(rows), infer_schema_length=None)
    order_l = list(dict.fromkeys(df["level"].to_list()))
    order_v = list(dict.fromkeys(df["variant"].to_list()))
    out = []
    for level in order_l:
        at = df.filter(pl.col("level") == level)
        ref = {r["seed"]: r[metric] for r in at.filter(pl.col("variant") == reference).iter_rows(named=True)}
        for variant in order_v:
            cell = at.filter(pl.col("variant") == variant)
            if cell.is_empty():
                continue
            line: dict = {"level": level, "variant": variant, "seeds": cell.height}
            for col in ("val_p_va", "test_p_va"):
                x = cell[col].to_numpy().astype(float)
                line[f"{col}_mean"], line[f"{col}_sd"] = _mean_sd(x)
            diffs = np.array([r[metric] - ref[r["seed"]] for r in cell.iter_rows(named=True) if r["seed"] in ref])
            if variant != reference and len(diffs):
                line["diff_mean"], line["diff_sd"] = _mean_sd(diffs)
                line["wins"] = f"{int((diffs > 0).sum())}/{len(diffs)}"
            else:
                line["diff_mean"], line["diff_sd"], line["wins"] = float("nan"), float("nan"), ""
            for col, _ in GATE_COLUMNS:
                vals = cell[col].to_numpy().astype(float) if col in cell.columns else np.array([np.nan])
                line[col] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            out.append(line)
    return pl.from_dicts(out, infer_schema_length=None)


def _mean_sd(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _f(x: float, fmt: str = ".3f") -> str:
    return "" if x is None or not np.isfinite(x) else format(x, fmt)


def markdown(table: pl.DataFrame, reference: str = "rjca") -> str:
    """The table as Markdown: P_VA mean ± sd over seeds, the paired difference to ``reference``."""
    head = ["level", "variant", "seeds", "val P_VA", "test P_VA", f"test diff vs {reference}", "wins"]
    head += [label for _, label in GATE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.iter_rows(named=True):
        cells = [r["level"], r["variant"], str(r["seeds"]),
                 f"{_f(r['val_p_va_mean'])} ± {_f(r['val_p_va_sd'])}",
                 f"{_f(r['test_p_va_mean'])} ± {_f(r['test_p_va_sd'])}",
                 f"{_f(r['diff_mean'], '+.3f')} ± {_f(r['diff_sd'])}" if np.isfinite(r["diff_mean"]) else "",
                 r["wins"]]
        cells += [_f(r[col], "+.3f" if "shift" in col else ".3f") for col, _ in GATE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
