"""Optuna study settings. The search space itself is declared in configs/tune/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TuneConfig:
    study: str = "demo"
    space: str = "configs/tune/default.yaml"
    storage: str = ""  # any Optuna storage URL; empty = sqlite:///cache/<release>/studies/<study>.db
    n_trials: int = 12
    timeout: float = 0.0  # seconds; 0 = no limit
    workers: int = 1  # worker processes on this machine against the one study
    sampler: str = "tpe"
    pruner: str = "median"  # median | halving | none
    pruner_warmup_epochs: int = 2
    max_epochs: int = 0  # 0 = train.max_epochs
