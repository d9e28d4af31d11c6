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


def validation_curve(run: Path, monitor: str = "val/p_va") -> list[tuple[int, float]]:
    """(epoch, value) of every validation epoch a finished run logged to its metrics.csv (CSVLogger rows
    without the monitor, e.g. training steps, are skipped); [] when there is no such file or column."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        return []
    df = pl.read_csv(path, infer_schema_length=None)
    if monitor not in df.columns or "epoch" not in df.columns:
        return []
    rows = df.select(pl.col("epoch").cast(pl.Int64), pl.col(monitor).cast(pl.Float64)).drop_nulls()
    return [(int(e), float(v)) for e, v in rows.unique("epoch", keep="last", maintain_order=True).iter_rows()]


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


# ---- gate diagnostics ----------------------------------------------------------------------------------
SILENCE_DBFS = -45.0  # RMS over half a second below this: nobody is talking (real releases)


def _runs_to_mask(n: int, runs: Sequence) -> np.ndarray:
    m = np.zeros(n, bool)
    for r in runs:
        m[int(r[0]) : int(r[1])] = True
    return m


def near_silent(video_path: str | None, frame_times: Sequence[float] | None, n: int,
                window_s: float = 0.5, dbfs: float = SILENCE_DBFS) -> np.ndarray:
    """bool[n]: the soundtrack around each frame (``window_s`` centred) is below ``dbfs`` RMS, or
    there is no soundtrack. Frames without a timestamp count as not silent."""
    from abaw.features.audio_decode import AudioDecodeError, NoAudioStreamError, decode_audio

    if not video_path or frame_times is None or len(frame_times) != n:
        return np.zeros(n, bool)
    try:
        wave, rate, start = decode_audio(video_path, 16000)
    except NoAudioStreamError:
        return np.ones(n, bool)
    except AudioDecodeError:
        return np.zeros(n, bool)
    power = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    t = np.asarray(frame_times, dtype=np.float64)
    a = np.clip(np.round((t - window_s / 2 - start) * rate).astype(np.int64), 0, len(wave))
    b = np.clip(np.round((t + window_s / 2 - start) * rate).astype(np.int64), 0, len(wave))
    rms = np.sqrt((power[b] - power[a]) / np.maximum(b - a, 1))
    return (b - a == 0) | (rms < 10 ** (dbfs / 20))


def degraded_frames(release_root: Path, subjects: Sequence[SubjectData], rows: dict[str, dict]
                    ) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """Per subject, where each modality is degraded: ``({subject: {"visual": bool[N], "audio": bool[N],
    "no_crop": bool[N]}}, source)``. A synthetic release knows (its ground truth says what it planted
    where; read only for this diagnosis); on a real one, frames without a face crop, and frames with
    near-silent audio. ``no_crop`` (frames without a face crop, what every release records) is there
    either way."""
    from abaw.synth.generate import planted_degradation

    planted = planted_degradation(release_root)
    no_crop = {s.name: ~np.asarray(s.face, bool) for s in subjects}
    if planted is not None and all(s.name in planted for s in subjects):
        return ({s.name: {**{m: _runs_to_mask(s.n_frames, planted[s.name][m]) for m in ("visual", "audio")},
                          "no_crop": no_crop[s.name]} for s in subjects}, "ground_truth")
    out = {}
    for s in subjects:
        r = rows.get(s.name, {})
        out[s.name] = {"visual": no_crop[s.name], "no_crop": no_crop[s.name],
                       "audio": near_silent(r.get("video_path"), r.get("frame_times"), s.n_frames)}
    return out, "no face crop / near-silent audio"


def gate_report(stitcher: Stitcher, subjects: Sequence[str], degraded: dict[str, dict[str, np.ndarray]],
                source: str) -> dict:
    """Gate diagnostics (``abaw.metrics.gates``) over every frame the windows covered, pooled over
    ``subjects``, split by ``degraded`` (``degraded_frames``); empty for a model without gates. Where
    ``degraded`` also holds ``no_crop`` masks, the visual gates are split by that alone too, as
    ``visual/iter/shift_nocrop`` (attended weight without a crop minus with one), ``.../nocrop`` and
    ``.../crop``: the one degradation a real release records."""
    from abaw.metrics.gates import gate_diagnostics, headline

    keys = sorted({k for s in subjects for k in stitcher.averaged_keys(s) if k.startswith(GATE_PREFIX)})
    if not keys:
        return {}
    gates = {k[len(GATE_PREFIX):]: np.concatenate([stitcher.mean(s, k, allow_gaps=True) for s in subjects])
             for k in keys}
    covered = np.concatenate([stitcher.covered(s) for s in subjects])
    masks = {m: np.concatenate([degraded[s][m] for s in subjects]) for m in ("visual", "audio")}
    diag = gate_diagnostics(gates, masks, covered)
    head = headline(diag)
    if all("no_crop" in degraded[s] for s in subjects):
        nc = np.concatenate([degraded[s]["no_crop"] for s in subjects])
        if (nc & covered).any() and (~nc & covered).any():
            visual = {k: v for k, v in gates.items() if k.startswith("visual/")}
            names = {"shift": "shift_nocrop", "degraded": "nocrop", "clean": "crop"}
            for k, v in headline(gate_diagnostics(visual, {"visual": nc}, covered)).items():
                stem, _, leaf = k.rpartition("/")
                if leaf in names:
                    head[f"{stem}/{names[leaf]}"] = v
    return {"degraded_source": source,
            "degraded_fraction": {m: float(masks[m][covered].mean()) if covered.any() else float("nan")
                                  for m in masks},
            "headline": head, "gates": diag}


def gate_summary(release_root: Path, stitcher: Stitcher, subjects: Sequence[SubjectData], rows: dict,
                 path: Path) -> dict:
    """The validation gate diagnostics of a run: written to ``path`` (gates.json) when the model has
    gates, returned either way (empty without gates)."""
    from abaw.utils import atomic_write_json

    names = [s.name for s in subjects]
    report = gate_report(stitcher, names, *degraded_frames(release_root, subjects, rows)) if names else {}
    if report:
        atomic_write_json(path, report)
    return report


def format_gates(report: dict) -> str:
    """A few lines for the terminal: per gate, the headline numbers."""
    if not report:
        return ""
    lines = [f"  gates (validation; degraded = {report['degraded_source']}, "
             + ", ".join(f"{m} {f:.0%}" for m, f in report["degraded_fraction"].items()) + "):"]
    h = report["headline"]
    for name in sorted({k.rsplit("/", 1)[0] for k in h}):
        parts = []
        for key, label in (("attended", "attended"), ("entropy_median", "median entropy"),
                           ("above_99", ">0.99"), ("shift", "degraded-clean")):
            if f"{name}/{key}" in h:
                parts.append(f"{label} {h[f'{name}/{key}']:+.3f}" if key == "shift" else f"{label} {h[f'{name}/{key}']:.3f}")
        lines.append(f"    {name:14s} " + ", ".join(parts))
    return "\n".join(lines)
