"""Optuna pruning for ``pytorch_lightning``.

``optuna_integration.PyTorchLightningPruningCallback`` is written against the ``lightning`` package and
does not work with ``pytorch_lightning`` objects (the two namespaces must not be mixed), so the few lines
it takes are written here on ``pytorch_lightning.Callback``.
"""

from __future__ import annotations

import math

import optuna
import pytorch_lightning as pl


class OptunaPruning(pl.Callback):
    """Reports ``monitor`` after every validation epoch; stops the trainer when the trial should prune.

    Pruning stops the trainer; when training then ends (checkpoints written by the loop as usual) the
    callback raises ``optuna.TrialPruned``, which Lightning re-raises from ``fit``: ``train`` does not go
    on to the post-training report (best-checkpoint validation, plots) for a trial that is thrown away,
    and the trial ends as PRUNED.
    """

    def __init__(self, trial, monitor: str = "val/p_va") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned = False
        self.reported_epochs = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if not math.isfinite(value):
            value = -1.0  # a diverged epoch is the worst P_VA, not a reason to crash the study
        if self._report(trainer.current_epoch, value):
            trainer.should_stop = True

    def _report(self, epoch: int, value: float) -> bool:
        """Reports one epoch; True when the trial should now be pruned."""
        self.trial.report(value, step=epoch)
        self.reported_epochs += 1
        self.pruned = self.trial.should_prune()
        return self.pruned

    def replay(self, curve: list[tuple[int, float]]) -> None:
        """Reports a reused run's recorded validation curve, epoch by epoch, as if it had trained now:
        the shared pruner sees every finished trial's epochs, and a curve it would have pruned is pruned
        at the same epoch (``optuna.TrialPruned``)."""
        for epoch, value in curve:
            if self._report(epoch, value if math.isfinite(value) else -1.0):
                raise optuna.TrialPruned(f"pruned after {self.reported_epochs} validation epochs (reused run)")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruned:
            raise optuna.TrialPruned(f"pruned after {self.reported_epochs} validation epochs")
