"""Settings of the synthetic release generator."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SynthConfig:
    seed: int = 0
    scale: float = 1.0  # multiplies subject count and lengths (benchmarks use 10-100)
    # What the face shows of valence (abaw.synth.media.FACE_CUES): "shape+colour" (mouth, brows, skin
    # flush); "shape" (no flush, but the mouth opening and its teeth/dark gap still follow valence);
    # "curve" (geometry only: mouth curvature, brow tilt, eye shape; the mouth opens with speech).
    face_cues: str = "shape+colour"
