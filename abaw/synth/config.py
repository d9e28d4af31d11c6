"""Settings of the synthetic release generator."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SynthConfig:
    seed: int = 0
    scale: float = 1.0  # multiplies subject count and lengths (benchmarks use 10-100)
    face_cues: str = "shape+colour"  # what the face shows of valence: "shape+colour" | "shape" (mouth, brows)
