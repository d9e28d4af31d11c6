"""Prediction and submission settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SubmitConfig:
    name: str = ""  # submission name; empty = timestamped
    runs: list[str] = field(default_factory=list)  # run folders to ensemble; empty = the configured run
    split: str = "test"
    float_format: str = "%.6f"
    out_dir: str = "submissions"
