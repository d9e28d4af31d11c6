"""One registry for the model variants: ``build_model(cfg.model, in_audio, in_visual)``.

Variants (``model.variant``):
  grjca_hier  recursive joint cross-attention + per-iteration gates + stage gate (default)
  grjca       recursive joint cross-attention + per-iteration gates
  rjca        recursive joint cross-attention, no gates
  concat      encoders -> concatenation -> head (no attention)
  xformer     encoders -> standard multi-head cross-modal transformer blocks over time -> head
  audio       audio encoder -> head (the visual input is ignored)
  visual      visual encoder -> head (the audio input is ignored)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from abaw.models.config import ModelConfig
from abaw.models.fusion import FusionModel

ModelBuilder = Callable[[ModelConfig, int, int], nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model variant {name!r} is already registered")
        MODELS[name] = builder
        return builder

    return add


def build_model(cfg: ModelConfig, in_audio: int, in_visual: int) -> nn.Module:
    """The variant ``cfg.variant``, for cached features of widths ``in_audio`` and ``in_visual``."""
    if cfg.variant not in MODELS:
        raise ValueError(f"model.variant={cfg.variant!r}: registered variants are {sorted(MODELS)}")
    return MODELS[cfg.variant](cfg, in_audio, in_visual)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@register_model("grjca_hier")
def grjca_hier(cfg: ModelConfig, in_audio: int, in_visual: int) -> nn.Module:
    return FusionModel(cfg, in_audio, in_visual, attention=True, iteration_gate=True, stage_gate=True)


@register_model("grjca")
def grjca(cfg: ModelConfig, in_audio: int, in_visual: int) -> nn.Module:
    return FusionModel(cfg, in_audio, in_visual, attention=True, iteration_gate=True, stage_gate=False)


@register_model("rjca")
def rjca(cfg: ModelConfig, in_audio: int, in_visual: int) -> nn.Module:
    return FusionModel(cfg, in_audio, in_visual, attention=True, iteration_gate=False, stage_gate=False)


@register_model("concat")
def concat(cfg: ModelConfig, in_audio: int, in_visual: int) -> nn.Module:
    return FusionModel(cfg, in_audio, in_visual, attention=False)


@register_model("xformer")
def xformer(cfg: ModelConfig, in_audio: int, in_visual: int) -> nn.Module:
    return FusionModel(cfg, in_audio, in_visual, attention=True, fusion="xformer")


@register_model("audio")
def audio(cfg: ModelConfig, in_audio: int, in_visual: int) -> nn.Module:
    return FusionModel(cfg, in_audio, in_visual, modalities=("audio",), attention=False)


@register_model("visual")
def visual(cfg: ModelConfig, in_audio: int, in_visual: int) -> nn.Module:
    return FusionModel(cfg, in_audio, in_visual, modalities=("visual",), attention=False)
