"""Lightning callbacks and loggers of a training run: reproducible RNG streams per epoch, a console line
per epoch, a per-invocation epoch budget, and the CSV/TensorBoard loggers writing into the run folder."""

from __future__ import annotations

import csv
import logging
import random
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger("abaw.training")


def stream_seed(*key: int) -> int:
    """A 64-bit seed that depends only on ``key`` (e.g. (seed, step, rank))."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint64)[0] >> 1)


class ReseedEachStep(pl.Callback):
    """Seeds torch (CPU and CUDA), NumPy and Python's ``random`` from (seed, global step, rank) before
    every training batch, so dropout and anything else drawing from the global generators depends only on
    the step.

    Lightning's checkpoint restores weights, optimiser, schedulers and loop counters but not the global
    RNG states, and it does not call ``on_train_epoch_start`` again for an epoch it resumes at its end,
    so a resumed run would draw its dropout masks from wherever the generators happen to be and drift
    from the uninterrupted run. The step count is restored exactly, so keying on it is robust. The
    window order (``EpochShuffleSampler``) and the DataLoader workers' seeds (its generator) depend only
    on (seed, epoch, rank); see ``abaw.training.datamodule``."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        s = stream_seed(self.seed, trainer.global_step, trainer.global_rank)
        torch.manual_seed(s)  # also every CUDA device
        np.random.seed(s % 2**32)
        random.seed(s)


class EpochLine(pl.Callback):
    """One console line per epoch (rank 0): losses, validation P_VA with the best so far, seconds per
    epoch, training rate and the time left, so progress is visible in any log without a progress bar."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self._durations: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not getattr(pl_module, "history", None):
            return
        dt = time.perf_counter() - self._t0
        self._durations.append(dt)
        row = pl_module.history[-1]
        epoch, total = int(row["epoch"]) + 1, trainer.max_epochs
        per_epoch = float(np.mean(self._durations[-5:]))
        left = per_epoch * max(0, total - epoch)
        batches = trainer.num_training_batches if isinstance(trainer.num_training_batches, int) else 0
        log.info("epoch %d/%d  train/loss %.4f  val/p_va %.4f (best %.4f)  %.1f s/epoch, %.1f batches/s, ETA %s",
                 epoch, total, row.get("train/loss", float("nan")), row.get("val/p_va", float("nan")),
                 row.get("val/p_va_best", float("nan")), dt, batches / dt if dt > 0 else 0.0, _duration(left))


class SessionLimit(pl.Callback):
    """``train.session_epochs``: stop after this many epochs in this invocation (last.ckpt is saved at
    every validation), for time-sliced jobs; the next invocation resumes. ``paused`` says it stopped."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.paused = False
        self._start = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.current_epoch + 1
        if self.epochs and done - self._start >= self.epochs and done < trainer.max_epochs and not trainer.should_stop:
            trainer.should_stop = True
            self.paused = True


def loggers(out: Path, resume_step: int | None) -> list:
    """Lightning's CSVLogger writing ``out/metrics.csv`` (and TensorBoard under ``out/tensorboard`` when
    it is installed). A resumed run keeps the rows up to its checkpoint's step: the CSV writer would
    otherwise delete the file it finds."""
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.utilities import rank_zero_only

    kept = _rows_until(out / "metrics.csv", resume_step) if resume_step is not None else []
    csv_logger = CSVLogger(save_dir=str(out), name="", version="")
    if rank_zero_only.rank == 0:
        with warnings.catch_warnings():
            # The run folder already holds config.yaml etc., which the writer warns about.
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            csv_logger.experiment.metrics[:0] = kept
    out_loggers = [csv_logger]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return out_loggers
    from pytorch_lightning.loggers import TensorBoardLogger

    out_loggers.append(TensorBoardLogger(save_dir=str(out), name="", version="tensorboard"))
    return out_loggers


def _rows_until(path: Path, step: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            values = {k: _number(v) for k, v in r.items() if v not in ("", None)}
            if values.get("step", 0) <= step:
                rows.append(values)
    return rows


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
