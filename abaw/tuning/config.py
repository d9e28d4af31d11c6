"""Optuna study settings. The search space itself is declared in configs/tune/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TuneConfig:
    study: str = "demo"
    space: str = "tune/default.yaml"  # path, or name under configs/
    storage: str = ""  # Optuna storage URL or journal file (*.log); empty = sqlite:///<cache>/studies/<study>.db
    n_trials: int = 12  # finished trials (complete, pruned or failed) the study should hold in total
    timeout: float = 0.0  # seconds per invocation; 0 = no limit
    workers: int = 1  # worker processes on this machine against the one study
    seed: int = -1  # sampler seed; -1 = the run seed
    sampler: str = "tpe"  # tpe | random
    pruner: str = "median"  # median | halving | none
    pruner_warmup_epochs: int = 2  # epochs reported before the median pruner may prune
    pruner_startup_trials: int = 3  # trials completed before pruning starts
    max_epochs: int = 0  # epochs per trial; 0 = train.max_epochs
    heartbeat_s: int = 30  # RDB storages: a RUNNING trial without a heartbeat for 2x this is failed by any worker
    # The best trial goes next to the study: <release cache>/studies/<study>/best.yaml (never into the
    # repository); set export_dir to write <export_dir>/<study>.yaml instead.
    export_dir: str = ""

    def validate(self) -> None:
        if self.sampler not in ("tpe", "random"):
            raise ValueError(f"tune.sampler must be tpe or random, got {self.sampler!r}")
        if self.pruner not in ("median", "halving", "none"):
            raise ValueError(f"tune.pruner must be median, halving or none, got {self.pruner!r}")
        if self.n_trials < 1 or self.workers < 1:
            raise ValueError("tune.n_trials and tune.workers must be >= 1")
