"""Settings of the synthetic release generator."""

from __future__ import annotations

from dataclasses import dataclass, field

FACE_KINDS = ("occluded", "blurred", "missing")  # a hand over the face, motion blur, no crop at all
VOICE_KINDS = ("silence", "noise", "speaker")  # the subject stops talking, a loud appliance, someone else talks


@dataclass
class SynthConfig:
    seed: int = 0
    scale: float = 1.0  # multiplies subject count and lengths (benchmarks use 10-100)
    # What the face shows of valence (abaw.synth.media.FACE_CUES): "shape+colour" (mouth, brows, skin
    # flush); "shape" (no flush, but the mouth opening and its teeth/dark gap still follow valence);
    # "curve" (geometry only: mouth curvature, brow tilt, eye shape; the mouth opens with speech).
    face_cues: str = "shape+colour"
    # Complementarity on demand: beyond the planted traps, the fraction of every subject's frames where
    # the face (resp. the voice) carries no emotion, in runs of `degrade_run_s` seconds on average, of
    # kinds drawn from the lists. The two modalities are drawn independently (their own random streams),
    # so a degraded face and a degraded voice coincide only by chance; 0 keeps today's release exactly.
    face_degraded: float = 0.0
    face_kinds: list[str] = field(default_factory=lambda: list(FACE_KINDS))
    voice_degraded: float = 0.0
    voice_kinds: list[str] = field(default_factory=lambda: list(VOICE_KINDS))
    degrade_run_s: float = 2.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, kinds, allowed in (("face", self.face_kinds, FACE_KINDS), ("voice", self.voice_kinds, VOICE_KINDS)):
            frac = getattr(self, f"{name}_degraded")
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"synth.{name}_degraded={frac}: must be in [0, 1)")
            bad = [k for k in kinds if k not in allowed]
            if bad or (frac > 0 and not kinds):
                raise ValueError(f"synth.{name}_kinds={kinds}: expected a non-empty list of {list(allowed)}")
        if not self.degrade_run_s > 0:
            raise ValueError(f"synth.degrade_run_s={self.degrade_run_s}: must be > 0")

    def degradation(self) -> dict:
        """The degradation settings as the generator takes (and traps.json records) them."""
        return {"face_degraded": float(self.face_degraded), "face_kinds": list(self.face_kinds),
                "voice_degraded": float(self.voice_degraded), "voice_kinds": list(self.voice_kinds),
                "degrade_run_s": float(self.degrade_run_s)}
