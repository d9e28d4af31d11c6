"""Post-processing settings: what the validation search may choose from."""

from __future__ import annotations

from dataclasses import dataclass, field

SMOOTH_METHODS = ("mean", "median", "none")


@dataclass
class PostprocessConfig:
    # "mean": centred moving average (O(N) per window); "median": centred running median (slower,
    # O(N * window)); "none": no smoothing, clipping only.
    smooth: str = "mean"
    # Odd window lengths in frames that the validation search tries per dimension; 1 (no smoothing)
    # is always tried as well.
    windows: list[int] = field(default_factory=lambda: [1, 3, 5, 9, 15, 21, 31, 45, 61, 91])
    clip: bool = True  # clip to [-1, 1] after smoothing (the submission format requires the range)

    def validate(self) -> None:
        if self.smooth not in SMOOTH_METHODS:
            raise ValueError(f"postprocess.smooth must be one of {SMOOTH_METHODS}, got {self.smooth!r}")
        bad = [
            w for w in self.windows if isinstance(w, bool) or not isinstance(w, int) or w < 1 or w % 2 == 0
        ]
        if bad:
            raise ValueError(f"postprocess.windows must be odd integers >= 1, got {bad}")
