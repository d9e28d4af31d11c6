"""``train(cfg) -> (metrics, artifacts)``: one training run, from cached features to a run folder.

The run folder ``cfg.release_cache/runs/<readable>-<hash8>/`` (``abaw.training.runs``: the hash covers
what changes training) holds everything needed to trust, reuse or resume it: identity.json,
features.json, config.yaml, folds.json (written first), best.ckpt, last.ckpt, metrics.csv (Lightning's
CSVLogger; TensorBoard events under tensorboard/ when it is installed), val_predictions.parquet,
per_subject.csv, postprocess.json, val_plot.png, curves.png and summary.json (written last: it marks the
run complete, and a complete run of the same identity is returned, never retrained).
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
from abaw.errors import AbawError
from abaw.training.callbacks import EpochLine, ReseedEachStep, SessionLimit, loggers
from abaw.training.datamodule import FusionDataModule
from abaw.training.folds import Split
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
    write_parquet,
)
from abaw.training.runs import (
    check_folder,
    feature_dirs,
    run_dir,
    run_name,
    write_features_record,
    write_identity,
)
from abaw.utils import atomic_write_json, code_version, file_digest

__all__ = ["cli_train", "run_dir", "run_name", "train"]

log = logging.getLogger(__name__)

CHECKPOINTS = ("best.ckpt", "last.ckpt")


class TrainingConfigError(AbawError):
    """The config cannot train (refused before anything is written)."""


class RunPaused(AbawError):
    """``train.session_epochs`` stopped this invocation; running it again continues the run."""


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


class FlushLoggers(pl.Callback):
    """Writes the loggers' buffered rows after every validation (before last.ckpt is saved: checkpoint
    callbacks run last), so an interrupted run keeps its curve up to its last checkpoint."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for logger in trainer.loggers:
            logger.save()


def check_trainable(cfg: Config) -> None:
    """Refuse, before any file is written, a config that would fail inside the loop."""
    model, tc = cfg.model, cfg.train
    if model.paper_mode:
        length = model.paper_length
        bad = []
        if tc.window != length:
            bad.append(f"train.window={tc.window}")
        if tc.eval_window_size != length:
            bad.append("train.eval_window=-1 (whole subjects)" if tc.eval_window == -1
                       else f"train.eval_window={tc.eval_window_size}")
        if bad:
            raise TrainingConfigError(
                f"model.paper_mode=true welds the window length into the model: expected L={length} frames "
                f"(model.paper_length), but {' and '.join(bad)}; set train.window={length} and train.eval_window=0 "
                f"(or {length}), or model.paper_mode=false")


def build_trainer(cfg: Config, out: Path, callbacks: Sequence[pl.Callback] = (),
                  resume_step: int | None = None) -> pl.Trainer:
    tc = cfg.train
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=out, filename="best", monitor="val/p_va", mode="max", save_top_k=1, save_last=True,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    cbs: list[pl.Callback] = [checkpoint, ReseedEachStep(cfg.seed), FlushLoggers(), EpochLine()]
    if tc.patience > 0:
        cbs.append(pl.callbacks.EarlyStopping(monitor="val/p_va", mode="max", patience=tc.patience))
    if tc.session_epochs > 0:
        cbs.append(SessionLimit(tc.session_epochs))
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
        logger=loggers(out, resume_step),
        default_root_dir=out,
        # The datamodule's samplers shard training and validation windows over ranks themselves (a
        # seeded per-epoch order; every evaluation window scored once); Lightning must not wrap them.
        use_distributed_sampler=False,
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
    )


def _feature_info(dirs: dict[str, str]) -> dict:
    info = {}
    for kind, d in dirs.items():
        entry = {"dir": d, "name": Path(d).name if d else ""}
        manifest = Path(d) / "manifest.json" if d else None
        if manifest and manifest.is_file():
            entry["manifest_sha256"] = file_digest(manifest)
        info[kind] = entry
    return info


def completed_run(out: Path, ident: str) -> dict | None:
    """The summary of a finished run of this identity, if there is one."""
    summary = out / "summary.json"
    if not (summary.is_file() and (out / "best.ckpt").is_file()):
        return None
    data = json.loads(summary.read_text())
    return data if data.get("identity") == ident else None


def _report_exclusions(split) -> None:
    """Say on the console which subjects this run leaves out and why (folds.json keeps the list)."""
    if not split.excluded or rank_zero_only.rank != 0:
        return
    log.warning("training excludes %d subject(s) (also listed in folds.json):", len(split.excluded))
    for subject, why in sorted(split.excluded.items()):
        log.warning("  excluded %s: %s", subject, why)


class FinetuneLeakError(AbawError):
    """Visual features from a fine-tuning that saw this run's validation subjects."""


def check_finetuning_split(cfg: Config, split) -> None:
    """Refuse visual features fine-tuned on any subject this run validates on: the backbone has then
    seen those frames' labels, and validation (and the folds' ensemble) would be flattered.

    The fine-tuning's own split.json is the record; a fine-tuning of the official split feeds the
    official split, and each fold needs a fine-tuning of its own fold (``make folds FINETUNED=name``)."""
    from abaw.features.registry import finetuned_dir

    folder = finetuned_dir(cfg.features.visual, cfg.release_cache)
    if folder is None:
        return
    record = folder / "split.json"
    if not record.is_file():
        raise FinetuneLeakError(f"{folder}: no split.json, so which subjects it trained on is unknown; "
                                "run `abaw finetune` with this config")
    seen = set(Split.load(record).train) & set(split.val)
    if seen:
        raise FinetuneLeakError(
            f"features.visual.finetuned={cfg.features.visual.finetuned!r} was fine-tuned on {len(seen)} of "
            f"this run's validation subjects (e.g. {sorted(seen)[0]!r}; {record}); fine-tune on this run's "
            f"split (same train.folds/train.fold) under another name"
        )


def _resume_step(last: Path) -> int:
    return int(torch.load(last, map_location="cpu", weights_only=False).get("global_step", 0))


def train(cfg: Config, *, datamodule: FusionDataModule | None = None, model: torch.nn.Module | None = None,
          callbacks: Sequence[pl.Callback] = ()) -> tuple[dict, dict[str, Path]]:
    """Train one run and write its artifacts; returns (metrics of the best checkpoint, artifact paths).

    The run folder is named by the run's identity (``abaw.training.runs``): a complete run of the same
    identity is returned as it is, a partial one continues from last.ckpt (``train.resume``), and a
    folder of another identity is refused. ``datamodule``/``model`` replace the configured ones (tests,
    benchmarks); ``callbacks`` are added to the trainer's (e.g. an Optuna pruning callback).
    """
    tc = cfg.train
    check_trainable(cfg)
    dirs = datamodule.source.feature_dirs() if datamodule is not None else feature_dirs(cfg)
    out = run_dir(cfg, dirs)
    ident = check_folder(out, cfg, dirs)
    if (done := completed_run(out, ident)) is not None:
        log.info("run %s is complete for this config; not retraining", out)
        return done["metrics"], _artifact_paths(out)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = datamodule or FusionDataModule(cfg)
    _report_exclusions(dm.split)
    check_finetuning_split(cfg, dm.split)
    last = out / "last.ckpt"
    resume_from = last if tc.resume and last.is_file() else None
    split_path = out / "folds.json"
    # Under DDP every rank runs this function; only the launching process (rank 0) writes files.
    if rank_zero_only.rank == 0:
        if resume_from is None:
            _clear_stale(out)
        out.mkdir(parents=True, exist_ok=True)
        write_identity(out, cfg, dirs)
        write_features_record(out, dirs)
        save_config(cfg, out / "config.yaml")
        dm.split.save(split_path)
        log.info("run %s: %s", out, f"resuming from {resume_from.name}" if resume_from else "new")

    lit = FusionModule(to_dict(tc), to_dict(cfg.model), dm.in_audio, dm.in_visual, model=model)
    # Lightning's Trainer sets torch.use_deterministic_algorithms globally and never restores it; in a
    # process that goes on (tests, tuning, the ablation) it would change what later code computes.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    trainer = build_trainer(cfg, out, callbacks, _resume_step(resume_from) if resume_from else None)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # config.yaml and folds.json are written into the run folder first, on purpose.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        try:
            trainer.fit(lit, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
    fit_s = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}, {}
    if trainer.interrupted:
        raise RuntimeError(f"training of {out} was interrupted; run again to resume from last.ckpt")
    if any(isinstance(c, SessionLimit) and c.paused for c in trainer.callbacks):
        raise RunPaused(f"{out}: paused after epoch {trainer.current_epoch} of {tc.max_epochs} "
                        f"(train.session_epochs={tc.session_epochs}); run the same command again to continue")

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
                               dm.eval_batch_size, tc.mask_missing_face, device, pad_to=dm.pad_to)
    lit.model.cpu()
    artifacts = _write_report(cfg, out, dm, stitcher, val_names, history)
    gates = gate_summary(cfg.data_root, stitcher, dm.val_subjects, dm.source.rows, out / "gates.json")
    metrics = score(stitcher, val_names)
    post = _postprocess(cfg, out, stitcher, val_names)
    metrics.update({f"{k}_post": v for k, v in post["metrics"].items()})
    metrics.update(best_epoch=int(best["epoch"]), epochs=int(trainer.current_epoch))

    summary = {
        "run": out.name,
        "identity": ident,
        "metrics": metrics,
        "postprocess": post["choice"],
        "best_checkpoint": str(best_path),
        "stopped_early": bool(trainer.should_stop and trainer.current_epoch < tc.max_epochs),
        "features": _feature_info(dirs),
        "split": {"mode": dm.split.mode, "fold": dm.split.fold, "folds": dm.split.folds,
                  "n_train": len(dm.split.train), "n_val": len(dm.split.val),
                  "train_windows": len(dm.train_windows), "val_windows": len(dm.val_windows),
                  "excluded": dm.split.excluded},
        "in_audio": dm.in_audio, "in_visual": dm.in_visual,
        "controls": {"shuffle_labels": tc.shuffle_labels, "audio_shift_s": tc.audio_shift_s,
                     "label_sources": dm.label_sources},
        "precision": trainer.precision, "accelerator": type(trainer.accelerator).__name__,
        "world_size": trainer.world_size, "fit_seconds": round(fit_s, 2),
        "gates": gates.get("headline", {}), "gates_degraded_source": gates.get("degraded_source"),
        "config_hash": stable_hash(cfg), "code_version": code_version(),
    }
    atomic_write_json(out / "summary.json", summary)
    artifacts.update(_artifact_paths(out), folds=split_path)
    return metrics, artifacts


def _clear_stale(out: Path) -> None:
    """A fresh (non-resumed) run must not inherit an older run's checkpoints or summary."""
    for name in (*CHECKPOINTS, "summary.json", "metrics.csv"):
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
        "metrics_csv": out / "metrics.csv",  # Lightning's CSVLogger wrote it during training
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
        "curves": "curves.png", "summary": "summary.json", "identity": "identity.json",
        "features": "features.json", "gates": "gates.json",
    }
    return {k: out / v for k, v in names.items() if (out / v).exists()}


def cli_train(cfg: Config, args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        metrics, artifacts = train(cfg)
    except RunPaused as e:  # an expected stop of a time-sliced job, not a failure
        print(f"abaw train: {e}")
        return 0
    if not metrics:  # a non-zero DDP rank
        return 0
    print(f"run: {artifacts['summary'].parent}")
    for key in ("p_va", "ccc_v", "ccc_a", "p_va_post", "ccc_v_post", "ccc_a_post", "best_epoch", "epochs"):
        if key in metrics:
            v = metrics[key]
            print(f"  {key:12s} {v:.4f}" if isinstance(v, float) else f"  {key:12s} {v}")
    if "gates" in artifacts:
        from abaw.training.report import format_gates

        print(format_gates(json.loads(artifacts["gates"].read_text())))
    return 0
