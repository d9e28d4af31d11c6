"""Post-processing settings: what the validation search may choose from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PostprocessConfig:
    smooth: str = "mean"  # centred moving average; "none" disables smoothing
    windows: list[int] = field(default_factory=lambda: [1, 3, 5, 9, 15, 21, 31, 45, 61, 91])  # odd, frames
    clip: bool = True
