"""What a run leaves beside its checkpoints once training ends: the best model's stitched validation
predictions, per-subject scores, the post-processing chosen on them, plots and a summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from abaw.training.inference import GATE_PREFIX, pooled
from abaw.training.store import SubjectData
from abaw.training.windows import Stitcher
from abaw.utils import atomic_path


def write_parquet(df: pl.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return path


def write_csv(df: pl.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.write_csv(tmp)
    return path


def write_history(history: Sequence[dict], path: Path) -> Path:
    """metrics.csv: one row per validation epoch (columns may appear later, e.g. gates)."""
    df = pl.from_dicts(list(history), infer_schema_length=None) if history else pl.DataFrame()
    return write_csv(df, path)


def predictions_frame(stitcher: Stitcher, subjects: Sequence[SubjectData]) -> pl.DataFrame:
    """val_predictions.parquet: one row per frame of every validation subject. ``gold_*`` is null where
    the frame is not annotated (never the -5 sentinel or a fake 0); ``valid`` marks the frames that
    count in the metric (annotated, and with a face under ``train.mask_missing_face``)."""
    parts = []
    for s in subjects:
        pred = stitcher.mean(s.name, "pred")
        n = len(pred)
        gold = np.where(s.valid[:, None], s.gold, np.nan)
        parts.append(pl.DataFrame({
            "subject": [s.name] * n,
            "frame": np.arange(n, dtype=np.int32),
            "pred_v": pred[:, 0], "pred_a": pred[:, 1],
            "gold_v": gold[:, 0], "gold_a": gold[:, 1],
            "valid": stitcher.fixed(s.name, "mask"),
        }).with_columns(pl.col("gold_v").fill_nan(None), pl.col("gold_a").fill_nan(None)))
    return pl.concat(parts) if parts else pl.DataFrame()


def read_predictions(path: Path) -> tuple[dict, dict, dict]:
    """Per-subject pred[N,2], gold[N,2] (0 where not annotated) and the metric mask from
    ``predictions_frame``'s file."""
    df = pl.read_parquet(path).sort("subject", "frame", maintain_order=True)
    preds, golds, masks = {}, {}, {}
    for (subject,), part in df.group_by("subject", maintain_order=True):
        preds[subject] = part.select("pred_v", "pred_a").to_numpy().astype(np.float32)
        golds[subject] = part.select("gold_v", "gold_a").fill_null(0.0).to_numpy().astype(np.float32)
        masks[subject] = part["valid"].to_numpy().astype(bool)
    return preds, golds, masks


def per_subject(stitcher: Stitcher, subjects: Sequence[str]) -> tuple[dict, dict, dict]:
    preds = {s: stitcher.mean(s, "pred") for s in subjects}
    golds = {s: stitcher.fixed(s, "gold") for s in subjects}
    masks = {s: stitcher.fixed(s, "mask") for s in subjects}
    return preds, golds, masks


def score(stitcher: Stitcher, subjects: Sequence[str]) -> dict[str, float]:
    from abaw.metrics import p_va

    pred, gold, mask = pooled(stitcher, subjects)
    return {k: float(v) for k, v in p_va(pred, gold, mask).items()}


def score_dicts(preds: dict, golds: dict, masks: dict) -> dict[str, float]:
    from abaw.metrics import p_va

    names = sorted(preds)
    return {k: float(v) for k, v in p_va(np.concatenate([preds[s] for s in names]),
                                         np.concatenate([golds[s] for s in names]),
                                         np.concatenate([masks[s] for s in names])).items()}


def plot_subjects(stitcher: Stitcher, subjects: Sequence[str], k: int) -> list[dict]:
    """The ``k`` validation subjects with the most annotated frames (the most to look at)."""
    ranked = sorted(subjects, key=lambda s: (-int(stitcher.fixed(s, "mask").sum()), s))[:k]
    out = []
    for s in ranked:
        gates = {key[len(GATE_PREFIX):]: stitcher.mean(s, key)
                 for key in stitcher.averaged_keys(s) if key.startswith(GATE_PREFIX)}
        out.append({"name": s, "pred": stitcher.mean(s, "pred"), "gold": stitcher.fixed(s, "gold"),
                    "valid": stitcher.fixed(s, "mask"), "gates": gates})
    return out
