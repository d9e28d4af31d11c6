"""``train(cfg) -> (metrics, artifacts)``: one training run, from cached features to a run folder.

The run folder ``cfg.release_cache/runs/<name>/`` holds everything needed to trust, reuse or resume it:
best.ckpt, last.ckpt, config.yaml, folds.json, metrics.csv, val_predictions.parquet, per_subject.csv,
postprocess.json, val_plot.png, curves.png and summary.json (written last: it marks the run complete).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from abaw.config import Config, save_config, stable_hash, to_dict
from abaw.training.datamodule import FusionDataModule
from abaw.training.inference import predict_windows
from abaw.training.module import FusionModule
from abaw.training.report import (
    gate_summary,
    per_subject,
    plot_subjects,
    predictions_frame,
    score,
    score_dicts,
    write_csv,
    write_history,
    write_parquet,
)
from abaw.utils import atomic_write_json, code_version, file_digest

log = logging.getLogger(__name__)

CHECKPOINTS = ("best.ckpt", "last.ckpt")


def run_name(cfg: Config) -> str:
    """``train.name``, else ``<variant>-fold<k>`` / ``<variant>-official``; sanity-control runs say so
    in the name, so they are never mistaken for (or overwrite) a real run."""
    tc = cfg.train
    if tc.name:
        return tc.name
    name = f"{cfg.model.variant}-fold{tc.fold}" if tc.folds else f"{cfg.model.variant}-official"
    if tc.shuffle_labels:
        name += "-shuffled-labels"
    if tc.audio_shift_s:
        name += f"-audio-shift{tc.audio_shift_s:+g}s"
    return name


def run_dir(cfg: Config) -> Path:
    return cfg.release_cache / "runs" / run_name(cfg)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 mixed precision on GPUs that have it (no loss scaling needed), fp16 mixed on older
    GPUs, full fp32 on CPU (CPU autocast gains little for these small recurrent models)."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _devices(spec: str):
    spec = str(spec).strip()
    return int(spec) if spec.lstrip("-").isdigit() else spec


class HistoryWriter(pl.Callback):
    """Rewrites metrics.csv after every validation epoch, so an interrupted run keeps its curve."""

    def __init__(self, path: Path):
        self.path = path

    def on_validation_end(self, trainer: pl.Trainer, pl_module: FusionModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        write_history(pl_module.history, self.path)


def build_trainer(cfg: Config, out: Path, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    tc = cfg.train
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=out, filename="best", monitor="val/p_va", mode="max", save_top_k=1, save_last=True,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    cbs: list[pl.Callback] = [checkpoint, HistoryWriter(out / "metrics.csv")]
    if tc.patience > 0:
        cbs.append(pl.callbacks.EarlyStopping(monitor="val/p_va", mode="max", patience=tc.patience))
    cbs.extend(callbacks)
    return pl.Trainer(
        accelerator=tc.accelerator,
        devices=_devices(tc.devices),
        strategy=tc.strategy,
        precision=resolve_precision(tc.precision, tc.accelerator),
        max_epochs=tc.max_epochs,
        gradient_clip_val=tc.grad_clip or None,
        deterministic=tc.deterministic,
        limit_train_batches=tc.limit_train_batches,
        limit_val_batches=tc.limit_val_batches,
        log_every_n_steps=tc.log_every_n_steps,
        callbacks=cbs,
        # metrics.csv (HistoryWriter) is the per-epoch record; no logger folders to clutter the run.
        logger=False,
        default_root_dir=out,
        # The datamodule's sampler shards training windows over ranks itself, with a seeded per-epoch
        # order; Lightning must not wrap it in a DistributedSampler.
        use_distributed_sampler=False,
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
    )


def _feature_info(dm: FusionDataModule) -> dict:
    info = {}
    for kind, d in dm.source.feature_dirs().items():
        entry = {"dir": d, "name": Path(d).name if d else ""}
        manifest = Path(d) / "manifest.json" if d else None
        if manifest and manifest.is_file():
            entry["manifest_sha256"] = file_digest(manifest)
        info[kind] = entry
    return info


def _completed(out: Path, cfg_hash: str) -> dict | None:
    """The summary of a finished run with this exact config, if there is one."""
    summary = out / "summary.json"
    if not (summary.is_file() and (out / "best.ckpt").is_file()):
        return None
    data = json.loads(summary.read_text())
    return data if data.get("config_hash") == cfg_hash else None


def train(cfg: Config, *, datamodule: FusionDataModule | None = None, model: torch.nn.Module | None = None,
          callbacks: Sequence[pl.Callback] = ()) -> tuple[dict, dict[str, Path]]:
    """Train one run and write its artifacts; returns (metrics of the best checkpoint, artifact paths).

    A run folder whose summary.json carries the same config hash is complete and is not retrained.
    ``datamodule``/``model`` replace the configured ones (tests, benchmarks); ``callbacks`` are added to
    the trainer's (e.g. an Optuna pruning callback).
    """
    tc = cfg.train
    out = run_dir(cfg)
    cfg_hash = stable_hash(cfg)
    if tc.resume and (done := _completed(out, cfg_hash)) is not None:
        log.info("run %s is complete for this config; not retraining", out)
        return done["metrics"], _artifact_paths(out)

    pl.seed_everything(cfg.seed, workers=True)
    dm = datamodule or FusionDataModule(cfg)
    last = out / "last.ckpt"
    resume_from = last if tc.resume and last.is_file() else None
    split_path = out / "folds.json"
    # Under DDP every rank runs this function; only the launching process (rank 0) writes files.
    if rank_zero_only.rank == 0:
        if resume_from is None:
            _clear_stale(out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        dm.split.save(split_path)

    lit = FusionModule(to_dict(tc), to_dict(cfg.model), dm.in_audio, dm.in_visual, model=model)
    trainer = build_trainer(cfg, out, callbacks)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # config.yaml and folds.json are written into the run folder first, on purpose.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        trainer.fit(lit, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
    fit_s = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}, {}
    if trainer.interrupted:
        raise RuntimeError(f"training of {out} was interrupted; run again to resume from last.ckpt")

    best_path = Path(trainer.checkpoint_callback.best_model_path or "")
    if not best_path.is_file():
        raise RuntimeError(f"{out}: no best.ckpt was written (validation P_VA never finite?); "
                           f"see {out / 'metrics.csv'}")
    history = list(lit.history)  # every epoch run; the best checkpoint's copy stops at its own epoch
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    lit.load_state_dict(best["state_dict"])

    device = torch.device("cuda") if torch.cuda.is_available() and tc.accelerator != "cpu" else torch.device("cpu")
    lit.model.to(device)
    val_names = [s.name for s in dm.val_subjects]
    stitcher = predict_windows(lit.model, dm.val_subjects, tc.eval_window_size, tc.eval_hop_size,
                               dm.eval_batch_size, tc.mask_missing_face, device)
    lit.model.cpu()
    artifacts = _write_report(cfg, out, dm, stitcher, val_names, history)
    gates = gate_summary(cfg.data_root, stitcher, dm.val_subjects, dm.source.rows, out / "gates.json")
    metrics = score(stitcher, val_names)
    post = _postprocess(cfg, out, stitcher, val_names)
    metrics.update({f"{k}_post": v for k, v in post["metrics"].items()})
    metrics.update(best_epoch=int(best["epoch"]), epochs=int(trainer.current_epoch))

    summary = {
        "run": out.name,
        "metrics": metrics,
        "postprocess": post["choice"],
        "best_checkpoint": str(best_path),
        "stopped_early": bool(trainer.should_stop and trainer.current_epoch < tc.max_epochs),
        "features": _feature_info(dm),
        "split": {"mode": dm.split.mode, "fold": dm.split.fold, "folds": dm.split.folds,
                  "n_train": len(dm.split.train), "n_val": len(dm.split.val),
                  "train_windows": len(dm.train_windows), "val_windows": len(dm.val_windows)},
        "in_audio": dm.in_audio, "in_visual": dm.in_visual,
        "controls": {"shuffle_labels": tc.shuffle_labels, "audio_shift_s": tc.audio_shift_s,
                     "label_sources": dm.label_sources},
        "precision": trainer.precision, "accelerator": type(trainer.accelerator).__name__,
        "world_size": trainer.world_size, "fit_seconds": round(fit_s, 2),
        "gates": gates.get("headline", {}), "gates_degraded_source": gates.get("degraded_source"),
        "config_hash": cfg_hash, "code_version": code_version(),
    }
    atomic_write_json(out / "summary.json", summary)
    artifacts.update(_artifact_paths(out), folds=split_path)
    return metrics, artifacts


def _clear_stale(out: Path) -> None:
    """A fresh (non-resumed) run must not inherit an older run's checkpoints or summary."""
    for name in (*CHECKPOINTS, "summary.json"):
        p = out / name
        if p.exists():
            log.warning("train.resume is off: removing %s from an earlier run", p)
            p.unlink(missing_ok=True)


def _write_report(cfg: Config, out: Path, dm: FusionDataModule, stitcher, names: list[str],
                  history: list[dict]) -> dict[str, Path]:
    from abaw.metrics import per_subject_table
    from abaw.training.plots import plot_curves, plot_validation

    preds, golds, masks = per_subject(stitcher, names)
    return {
        "config": out / "config.yaml",
        "metrics_csv": write_history(history, out / "metrics.csv"),
        "val_predictions": write_parquet(predictions_frame(stitcher, dm.val_subjects), out / "val_predictions.parquet"),
        "per_subject": write_csv(per_subject_table(preds, golds, masks), out / "per_subject.csv"),
        "val_plot": plot_validation(out / "val_plot.png", plot_subjects(stitcher, names, cfg.train.plot_subjects)),
        "curves": plot_curves(out / "curves.png", history),
    }


def _postprocess(cfg: Config, out: Path, stitcher, names: list[str]) -> dict:
    """Choose smoothing on this run's validation predictions (the best model's), save it, and score it."""
    from abaw.metrics import search_from_config

    preds, golds, masks = per_subject(stitcher, names)
    choice = search_from_config(cfg.postprocess, preds, golds, masks)
    choice.save(out / "postprocess.json")
    post = {s: choice.apply(p) for s, p in preds.items()}
    return {"choice": choice.to_dict(), "metrics": score_dicts(post, golds, masks)}


def _artifact_paths(out: Path) -> dict[str, Path]:
    names = {
        "best": "best.ckpt", "last": "last.ckpt", "config": "config.yaml", "folds": "folds.json",
        "metrics_csv": "metrics.csv", "val_predictions": "val_predictions.parquet",
        "per_subject": "per_subject.csv", "postprocess": "postprocess.json", "val_plot": "val_plot.png",
        "curves": "curves.png", "summary": "summary.json", "gates": "gates.json",
    }
    return {k: out / v for k, v in names.items() if (out / v).exists()}


def cli_train(cfg: Config, args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics, artifacts = train(cfg)
    if not metrics:  # a non-zero DDP rank
        return 0
    print(f"run: {run_dir(cfg)}")
    for key in ("p_va", "ccc_v", "ccc_a", "p_va_post", "ccc_v_post", "ccc_a_post", "best_epoch", "epochs"):
        if key in metrics:
            v = metrics[key]
            print(f"  {key:12s} {v:.4f}" if isinstance(v, float) else f"  {key:12s} {v}")
    if "gates" in artifacts:
        from abaw.training.report import format_gates

        print(format_gates(json.loads(artifacts["gates"].read_text())))
    return 0
