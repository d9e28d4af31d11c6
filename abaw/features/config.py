"""Feature-extraction settings. Everything here that changes a feature value is hashed into the
cache directory name (see ``abaw.features.cache``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class VisualBackboneConfig:
    preset: str = "resnet18"  # a named preset from abaw.features.registry, or "" to use `model`
    model: str = ""  # any timm model name (overrides the preset's model when set)
    weights: str = ""  # local checkpoint file; empty = preset's source
    pretrained: bool = False  # allow fetching weights from the hub (only when online)
    allow_random: bool = False  # random initialisation; only when asked (tests, demo)
    img_size: int = 0  # 0 = the model's own data config
    tta_flip: bool = False  # average with the horizontally flipped crop
    fill: str = "previous"  # missing crops: previous | next | nearest | zeros
    batch_size: int = 64
    num_workers: int = 2  # JPEG decoding happens in DataLoader workers
    dtype: str = "float16"


@dataclass
class AudioBackboneConfig:
    preset: str = "logmel"  # logmel | wav2vec2_base | ...
    weights: str = ""
    pretrained: bool = False
    allow_random: bool = False
    layer: int = -1  # transformer layer to read (wav2vec2 family); -1 = last
    window_s: float = 0.96  # seconds of audio per frame embedding
    anchor: str = "centre"  # centre | end  (window centred on, or ending at, the frame timestamp)
    batch_size: int = 64
    dtype: str = "float16"


@dataclass
class FeaturesConfig:
    visual: VisualBackboneConfig = field(default_factory=VisualBackboneConfig)
    audio: AudioBackboneConfig = field(default_factory=AudioBackboneConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    shard: str = ""  # "I/N": this process extracts subjects with (rank of name) % N == I
