"""Feature-extraction settings. Everything here that changes a feature value is hashed into the
cache directory name (see ``abaw.features.cache``)."""

from __future__ import annotations

from dataclasses import dataclass, field

VISUAL_PRECISIONS = ("32", "bf16")


@dataclass
class VisualBackboneConfig:
    preset: str = "resnet18"  # a named preset from abaw.features.registry, or "" to use `model`
    model: str = ""  # any timm model name (overrides the preset's model when set)
    weights: str = ""  # local checkpoint file; empty = preset's source
    pretrained: bool = False  # allow fetching weights from the hub (only when online)
    allow_random: bool = False  # random initialisation; only when asked (tests, demo)
    # A fine-tuning to extract from: a name under <release cache>/finetune/ (written by `abaw finetune`,
    # which trains it from the weights above) or the path of such a folder. Empty = the weights as they are.
    finetuned: str = ""
    img_size: int = 0  # 0 = the model's own data config
    tta_flip: bool = False  # average with the horizontally flipped crop
    fill: str = "previous"  # missing crops: previous | next | nearest | zeros
    batch_size: int = 64
    num_workers: int = 2  # JPEG decoding happens in DataLoader workers
    prefetch_factor: int = 4  # batches decoded ahead per worker, so the backbone never waits
    channels_last: bool = True  # NHWC convolutions: faster on CPU (oneDNN) and on GPU tensor cores
    # The forward pass: "32" (fp32) or "bf16" (bfloat16 autocast; GPUs, and CPUs with AVX512-BF16 or
    # AMX: 1.4-1.9x on the 2-core demo machine). Explicit, not resolved from the hardware, because it is
    # part of the cache key: every machine reading the cache must find the same folder.
    precision: str = "32"
    dtype: str = "float16"

    def validate(self) -> None:
        where = "features.visual"
        if self.precision not in VISUAL_PRECISIONS:
            raise ValueError(f"{where}.precision: {self.precision!r} is not one of {VISUAL_PRECISIONS}")
        if self.fill not in ("previous", "next", "nearest", "zeros"):
            raise ValueError(f"{where}.fill: {self.fill!r} is not one of previous, next, nearest, zeros")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"{where}.dtype: {self.dtype!r} is not float16 or float32")
        if self.batch_size < 1:
            raise ValueError(f"{where}.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0 or self.prefetch_factor < 1:
            raise ValueError(f"{where}: num_workers must be >= 0 and prefetch_factor >= 1")
        if self.img_size < 0:
            raise ValueError(f"{where}.img_size must be >= 0 (0 = the model's own), got {self.img_size}")


@dataclass
class AudioBackboneConfig:
    preset: str = "logmel"  # logmel | vggish | wav2vec2_base | hubert_base | wavlm_base_plus
    weights: str = ""
    pretrained: bool = False
    allow_random: bool = False
    layer: int = -1  # transformer layer to read (wav2vec2 family); -1 = last
    window_s: float = 0.96  # seconds of audio per frame embedding (<= 0: the preset's own)
    anchor: str = "centre"  # centre | end  (window centred on, or ending at, the frame timestamp)
    batch_size: int = 64
    dtype: str = "float16"
    # AAC/MP3 priming in AVI: "container" trusts the timestamps (right for FFmpeg-written files),
    # "compensate" removes the codec's delay (writers that ignore it); see abaw.features.audio_decode.
    codec_delay: str = "container"
    # wav2vec2 family: "track" runs the model over the whole track in segments and averages the frames
    # inside each window; "window" runs it on each window alone (about fps * window_s times slower).
    context: str = "track"
    segment_s: float = 30.0  # track: seconds of audio per model pass ...
    margin_s: float = 3.0  # ... plus this much context on each side, whose frames are discarded

    def validate(self) -> None:
        where = "features.audio"
        if self.anchor not in ("centre", "end"):
            raise ValueError(f"{where}.anchor: {self.anchor!r} is not centre or end")
        if self.codec_delay not in ("container", "compensate"):
            raise ValueError(f"{where}.codec_delay: {self.codec_delay!r} is not container or compensate")
        if self.context not in ("track", "window"):
            raise ValueError(f"{where}.context: {self.context!r} is not track or window")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"{where}.dtype: {self.dtype!r} is not float16 or float32")
        if self.batch_size < 1:
            raise ValueError(f"{where}.batch_size must be >= 1, got {self.batch_size}")
        if self.segment_s <= 0 or self.margin_s < 0:
            raise ValueError(f"{where}: segment_s must be > 0 and margin_s >= 0")


@dataclass
class FeaturesConfig:
    visual: VisualBackboneConfig = field(default_factory=VisualBackboneConfig)
    audio: AudioBackboneConfig = field(default_factory=AudioBackboneConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    shard: str = ""  # "I/N": this process extracts subjects with (rank of name) % N == I

    def validate(self) -> None:
        if self.shard:
            parse_shard(self.shard)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; a clear error otherwise."""
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= I < N")
    return i, n
