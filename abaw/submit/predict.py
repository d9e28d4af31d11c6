"""Predictions of trained runs: one run on any subjects, or an ensemble of runs on a whole split.

Ensembles (folds and/or seeds) average the runs' raw predictions frame by frame, then apply ONE
post-processing choice, searched on out-of-sample validation predictions of the ensemble: for every
subject that some run validated on, the mean of those runs' validation predictions (for K folds that is
each subject's out-of-fold prediction; for seeds on the official split it is exactly the ensemble's
validation prediction). Applying each run's own choice before averaging would smooth twice and tune
each window for a single model, while the thing that gets smoothed is the average. With one run this is
the run's own postprocess.json. Values are clipped to [-1, 1] last.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from abaw.config import Config, load_config, stable_hash, to_dict, with_overrides
from abaw.utils import atomic_path, atomic_write_json, file_digest

log = logging.getLogger(__name__)


def load_run(run_dir: str | Path, checkpoint: str = "best.ckpt") -> tuple[torch.nn.Module, Config]:
    """The run's network (weights of ``checkpoint``, eval mode, on CPU) and its resolved config."""
    from abaw.training.module import build_network

    run_dir = Path(run_dir)
    path = run_dir / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {checkpoint}; train the run first (`abaw train`)")
    cfg = load_config(run_dir / "config.yaml")
    # Our own checkpoint (it also holds config dicts and callback state), so full unpickling is fine.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters") or {}
    if not {"model_cfg", "in_audio", "in_visual"} <= set(hp):
        raise ValueError(f"{path}: not an abaw training checkpoint (hyper_parameters lack model_cfg/in_*)")
    model = build_network(hp["model_cfg"], hp["in_audio"], hp["in_visual"])
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.eval()
    return model, cfg


def _release_cfg(run_cfg: Config, cfg: Config | None) -> Config:
    """The run's model and feature settings on ``cfg``'s release and cache (a run may be applied to a
    release other than the one it trained on; its features must then be extracted the same way)."""
    if cfg is None:
        return run_cfg
    return with_overrides(run_cfg, {"data": to_dict(cfg.data), "cache_root": cfg.cache_root})


def _check_features(run_dir: Path, source) -> None:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return
    trained = json.loads(summary.read_text()).get("features", {})
    for kind, d in source.feature_dirs().items():
        want = (trained.get(kind) or {}).get("name")
        if want and d and Path(d).name != want:
            raise ValueError(f"{run_dir}: trained on {kind} features {want!r} but would predict from "
                             f"{Path(d).name!r}; features.{kind} settings differ from the run's")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predict_subjects(run_dir: str | Path, subjects: Sequence[str], cfg: Config | None = None, *,
                     audio_shift_s: float | None = None, table=None) -> dict[str, np.ndarray]:
    """Raw (not post-processed) float32[N, 2] predictions of one run for whole subjects, stitched from
    the run's evaluation windows. ``cfg`` locates the release (default: the run's own);
    ``audio_shift_s`` overrides the run's audio shift (alignment checks)."""
    from abaw.training.datamodule import SubjectSource
    from abaw.training.inference import predict_windows

    run_dir = Path(run_dir)
    model, run_cfg = load_run(run_dir)
    eff = _release_cfg(run_cfg, cfg)
    audio, visual = _recorded_caches(run_dir, eff)
    source = SubjectSource(eff, table=table, audio_cache=audio, visual_cache=visual, audio_shift_s=audio_shift_s)
    _check_features(run_dir, source)
    data = source.open(list(subjects), labels=False)
    tc = eff.train
    device = _device()
    model.to(device)
    stitcher = predict_windows(model, data, tc.eval_window_size, tc.eval_hop_size, tc.batch_size, device=device)
    return {s: stitcher.mean(s, "pred") for s in subjects}


def _recorded_caches(run_dir: Path, eff: Config):
    """The feature caches the run trained on, from its features.json, when they belong to the release
    being predicted (the usual case): handed on as the features stage wrote them, never re-resolved
    from the backbone config. ``(None, None)`` otherwise (another release: resolved there, and
    ``_check_features`` insists they were made the same way)."""
    from abaw.features.cache import FeatureCache
    from abaw.training.runs import read_features_record

    record = read_features_record(run_dir) or {}
    here = (eff.release_cache / "features").resolve()
    dirs = [Path((record.get(kind) or {}).get("dir") or "") for kind in ("audio", "visual")]
    if all(str(d) not in ("", ".") and d.parent == here and d.is_dir() for d in dirs):
        return FeatureCache(dirs[0]), FeatureCache(dirs[1])
    return None, None


def ensemble_postprocess(run_dirs: Sequence[Path], pp_cfg):
    """The post-processing for the average of ``run_dirs``, chosen on their pooled out-of-sample
    validation predictions (see the module docstring)."""
    from abaw.metrics import PostprocessChoice, search_from_config
    from abaw.training.report import read_predictions

    if len(run_dirs) == 1 and (Path(run_dirs[0]) / "postprocess.json").is_file():
        return PostprocessChoice.load(Path(run_dirs[0]) / "postprocess.json")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    golds: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for run in run_dirs:
        path = Path(run) / "val_predictions.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no val_predictions.parquet (the run did not finish)")
        p, g, m = read_predictions(path)
        for s in p:
            if s in sums and len(sums[s]) != len(p[s]):
                raise ValueError(f"{path}: subject {s!r} has {len(p[s])} frames, other runs {len(sums[s])}")
            sums[s] = sums.get(s, 0.0) + p[s].astype(np.float64)
            counts[s] = counts.get(s, 0) + 1
            golds[s], masks[s] = g[s], m[s]
    preds = {s: (sums[s] / counts[s]).astype(np.float32) for s in sums}
    return search_from_config(pp_cfg, preds, golds, masks)


def predict_split(cfg: Config, run_dirs: Sequence[str | Path], split: str, *, table=None,
                  return_choice: bool = False):
    """Ensemble predictions for every subject of ``split`` (index order): mean of the runs' raw
    predictions, one post-processing choice, clipped to [-1, 1]."""
    if not run_dirs:
        raise ValueError("predict_split needs at least one run folder")
    run_dirs = [Path(r) for r in run_dirs]
    if table is None:
        from abaw.data.index import load_index

        table = load_index(cfg).table
    subjects = [r["subject"] for r in table.iter_rows(named=True) if r["split"] == split]
    if not subjects:
        raise ValueError(f"the index of {cfg.release_name} has no {split!r} subjects")
    total: dict[str, np.ndarray] = {}
    for run in run_dirs:
        for s, p in predict_subjects(run, subjects, cfg, table=table).items():
            total[s] = total.get(s, 0.0) + p.astype(np.float64)
    choice = ensemble_postprocess(run_dirs, cfg.postprocess)
    out = {}
    for s in subjects:
        mean = (total[s] / len(run_dirs)).astype(np.float32)
        out[s] = np.clip(choice.apply(mean), -1.0, 1.0).astype(np.float32)
    return (out, choice) if return_choice else out


def run_summaries(run_dirs: Sequence[str | Path]) -> list[dict]:
    """What each run of an ensemble is: checkpoint (with digest), validation scores, feature caches and
    post-processing choice, for the metadata written beside predictions and submissions."""
    out = []
    for run in map(Path, run_dirs):
        summary_path = run / "summary.json"
        if not summary_path.is_file():
            raise FileNotFoundError(f"{run}: no summary.json (training did not finish)")
        summary = json.loads(summary_path.read_text())
        ckpt = run / "best.ckpt"
        out.append({
            "run": str(run),
            "checkpoint": str(ckpt),
            "checkpoint_sha256": file_digest(ckpt) if ckpt.is_file() else None,
            "val": summary.get("metrics", {}),
            "features": summary.get("features", {}),
            "postprocess": summary.get("postprocess"),
            "split": summary.get("split"),
            "config_hash": summary.get("config_hash"),
            "code_version": summary.get("code_version"),
        })
    return out


def predictions_frame(preds: dict[str, np.ndarray]) -> pl.DataFrame:
    """One row per frame: subject, frame (0-based, the pipeline's frame axis), valence, arousal."""
    parts = [pl.DataFrame({"subject": [s] * len(p), "frame": np.arange(len(p), dtype=np.int32),
                           "valence": p[:, 0], "arousal": p[:, 1]}) for s, p in preds.items()]
    return pl.concat(parts) if parts else pl.DataFrame()


def output_dir(cfg: Config, run_dirs: Sequence[Path]) -> Path:
    """``<run>/predictions`` for one run; ``<release_cache>/predictions/ensemble-<hash>`` for several."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "predictions"
    key = stable_hash(sorted(str(Path(r).resolve()) for r in run_dirs), n=10)
    return cfg.release_cache / "predictions" / f"ensemble-{key}"


def cli_predict(cfg: Config, args) -> int:
    from abaw.training.train import run_dir

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    runs = [Path(r) for r in (getattr(args, "runs", None) or cfg.submit.runs or [run_dir(cfg)])]
    split = getattr(args, "split", None) or cfg.submit.split
    preds, choice = predict_split(cfg, runs, split, return_choice=True)
    out = output_dir(cfg, runs)
    path = out / f"{split}.parquet"
    with atomic_path(path) as tmp:
        predictions_frame(preds).write_parquet(tmp)
    atomic_write_json(out / f"{split}.json", {
        "split": split, "release": cfg.release_name, "subjects": len(preds),
        "frames": int(sum(len(p) for p in preds.values())),
        "postprocess": choice.to_dict(),
        "runs": run_summaries(runs),
    })
    print(f"{len(preds)} {split} subjects, {sum(len(p) for p in preds.values())} frames -> {path}")
    return 0
