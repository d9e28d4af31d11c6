"""Named backbones, and the settings of a backbone that decide its features (hashed into the cache key).

A visual preset is a dataclass holding everything that changes what a backbone outputs; the user's config
(``features.visual``) may override the model, the input size and the weights. ``visual_settings`` turns the
merged result into a plain dict: the cache directory is named after its hash, so a cache can only ever be
read back with the settings that wrote it. Batch size, workers and device are deliberately absent: they
change speed, not features.

Importing this module is cheap (no torch); only resolving a timm model's preprocessing imports timm.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from abaw.errors import AbawError
from abaw.features.config import VisualBackboneConfig

# Bump when a change in the extraction code changes feature values (resizing, fill, pooling...):
# every cache written by older code then gets a new directory instead of being silently reused.
EXTRACTOR_VERSION = 1

# Seed of the random initialisation used when a config asks for random weights (allow_random), so that
# two runs (or two shards on two machines) of a random-weight backbone produce the same features.
RANDOM_INIT_SEED = 0

FILL_POLICIES = ("previous", "next", "nearest", "zeros")
FEATURE_DTYPES = ("float16", "float32")


class WeightsError(AbawError, ValueError):
    """A backbone without usable weights (missing file, random weights not allowed, hub unreachable)."""


class FinetunedError(WeightsError, AbawError):
    """``features.visual.finetuned`` names a fine-tuning that is missing, unfinished or of another backbone."""


# What `abaw finetune` leaves in its folder for `features`: the fine-tuned backbone's state dict and a
# record of how it was built (timm name, input size); the record is written last.
FINETUNED_WEIGHTS = "backbone.pth"
FINETUNED_RECORD = "backbone.json"


@dataclass(frozen=True)
class VisualPreset:
    """A timm backbone and how its input is prepared: everything here changes the features."""

    model: str  # timm name, with the pretrained tag that names its weights (``arch.tag``)
    img_size: int  # square input side in pixels; crops of any size are resized to it
    note: str = ""  # where good weights come from (shown in the error when none are configured)


VISUAL_PRESETS: dict[str, VisualPreset] = {
    # Fast default: ImageNet ResNet-18 at the crops' native ~112 px (the CPU demo backbone).
    "resnet18": VisualPreset(
        "resnet18.a1_in1k", 112, "ImageNet weights: pretrained=true or a local .pth/.safetensors"
    ),
    # The challenge baseline's ImageNet ResNet-50, at its training resolution.
    "resnet50": VisualPreset("resnet50.a1_in1k", 224, "ImageNet weights: pretrained=true or a local file"),
    # A ViT; 16-px patches on 224 px input (faces upsampled from ~112 px).
    "vit_small": VisualPreset(
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
        224,
        "ImageNet-21k weights: pretrained=true or a local file",
    ),
    # Face-friendly: the timm EfficientNet-B0 architecture that HSEmotion trained on VGGFace2 + AffectNet;
    # convert their checkpoint to a state dict and point `weights:` at it (ImageNet weights also load).
    "efficientnet_b0": VisualPreset(
        "efficientnet_b0.ra_in1k", 224, "face weights: HSEmotion enet_b0 state dict via weights=FILE"
    ),
    # The backbones ABAW's placing teams fine-tuned, at the resolution their weights were trained at.
    # OpenAI CLIP ViT-B/16 image tower (CLIP mean/std), loadable with pretrained=true when online.
    "clip_vit_b16": VisualPreset(
        "vit_base_patch16_clip_224.openai", 224, "CLIP weights: pretrained=true (hub) or a local file"
    ),
    # MAE-pretrained ViT-B/16 (ABAW6 1st and 3rd place fine-tuned MAE ViTs, the 1st on face data).
    "mae_vit_b16": VisualPreset(
        "vit_base_patch16_224.mae",
        224,
        "MAE weights: pretrained=true (hub), or a face-MAE state dict via weights=FILE",
    ),
    # DINOv2 ViT-S/14 at 224 px (16 x 16 patches; timm resamples its 518 px position embeddings).
    "dinov2_vit_s14": VisualPreset(
        "vit_small_patch14_dinov2.lvd142m", 224, "DINOv2 weights: pretrained=true (hub) or a local file"
    ),
}


@dataclass(frozen=True)
class VisualSpec:
    """A preset merged with the user's overrides: what ``VisualExtractor`` builds."""

    name: str  # cache directory prefix
    model: str  # timm name (possibly with a pretrained tag)
    input_size: tuple[int, int]  # (height, width) fed to the network
    create_kwargs: tuple[tuple[str, Any], ...]  # extra timm.create_model kwargs (e.g. img_size for ViTs)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    weights: str  # "file" | "hub" | "random"
    weights_file: str  # resolved path when weights == "file"
    weights_id: str  # file digest, hub id or random seed: what identifies the weights
    note: str = ""

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.create_kwargs)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "backbone"


@functools.lru_cache(maxsize=32)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    from abaw.utils import file_digest

    return file_digest(path)


_DIGESTED: list[list[str]] = []  # open ``digested_files`` blocks


@contextlib.contextmanager
def digested_files() -> Iterator[list[str]]:
    """Collect the (resolved) paths of every file ``weights_digest`` hashes inside the block: the files the
    settings resolved there depend on, which the features stage records for its hand-off."""
    files: list[str] = []
    _DIGESTED.append(files)
    try:
        yield files
    finally:
        _DIGESTED.remove(files)


def weights_digest(path: str | os.PathLike) -> str:
    """sha256 prefix of a weights file, remembered per (path, size, mtime) within one process."""
    st = os.stat(path)
    resolved = str(Path(path).resolve())
    for files in _DIGESTED:
        files.append(resolved)
    return _digest_cached(resolved, st.st_size, st.st_mtime_ns)


def _pretrained_cfg(model: str) -> dict[str, Any]:
    import timm
    from timm.models import get_pretrained_cfg

    arch, _ = timm.models.split_model_name_tag(model)
    if not timm.is_model(arch):
        raise ValueError(f"features.visual: {model!r} is not a timm model (timm {timm.__version__})")
    try:
        pcfg = get_pretrained_cfg(model, allow_unregistered=False)
    except RuntimeError as e:  # an unknown pretrained tag
        raise ValueError(f"features.visual: {model!r}: {e}") from e
    # An architecture without registered weights gets timm's defaults (224 px, ImageNet mean/std).
    return pcfg.to_dict() if pcfg is not None else {"input_size": (3, 224, 224)}


def is_finetune_name(ref: str) -> bool:
    """Whether ``features.visual.finetuned`` is a name (a fine-tuning of this release, under its cache)
    rather than a path to one made elsewhere."""
    return bool(ref) and os.sep not in ref and not ref.startswith((".", "~"))


def finetuned_dir(vcfg: VisualBackboneConfig, release_cache: str | os.PathLike | None = None) -> Path | None:
    """The folder ``features.visual.finetuned`` names (None when it is empty): a path as given, or a name
    under ``<release_cache>/finetune/``."""
    ref = vcfg.finetuned
    if not ref:
        return None
    if not is_finetune_name(ref):
        return Path(ref).expanduser().resolve()
    if release_cache is None:
        raise FinetunedError(
            f"features.visual.finetuned={ref!r} is a name; resolving it needs the release's cache folder"
        )
    return Path(release_cache) / "finetune" / ref


def _apply_finetuned(spec: VisualSpec, folder: Path) -> VisualSpec:
    """The spec with the fine-tuned weights of ``folder``; the record decides the network's input."""
    import dataclasses
    import json

    record, weights = folder / FINETUNED_RECORD, folder / FINETUNED_WEIGHTS
    if not (record.is_file() and weights.is_file()):
        raise FinetunedError(
            f"features.visual.finetuned: {folder} holds no finished fine-tuning ({FINETUNED_RECORD} and "
            f"{FINETUNED_WEIGHTS} missing): run `abaw finetune` (make finetune) with this config first"
        )
    rec = json.loads(record.read_text())
    if rec["model"] != spec.model:
        raise FinetunedError(
            f"features.visual.finetuned: {folder} fine-tuned {rec['model']!r}, but features.visual asks for "
            f"{spec.model!r}; set the same preset/model as the fine-tuning"
        )
    return dataclasses.replace(
        spec,
        input_size=tuple(rec["input_size"]),
        create_kwargs=tuple(sorted(rec["create_kwargs"].items())),
        weights="finetuned",
        weights_file=str(weights),
        # The digest of the fine-tuned weights: features of two fine-tunings never share a cache.
        weights_id=f"finetuned:{weights_digest(weights)}",
    )


def resolve_visual(vcfg: VisualBackboneConfig, release_cache: str | os.PathLike | None = None) -> VisualSpec:
    """Merge preset and overrides, check the weights source, and resolve the preprocessing.

    Weights, in order: a fine-tuning (``finetuned``: its folder under ``release_cache``, or a path), a
    local file (``weights``), the hub (``pretrained: true``), random initialisation (only with
    ``allow_random: true``). Anything else is an error that says how to provide weights.
    """
    folder = finetuned_dir(vcfg, release_cache)
    if folder is not None:
        import dataclasses

        # The initial weights were the fine-tuning's business: only the architecture is resolved here.
        base = dataclasses.replace(vcfg, finetuned="", weights="", pretrained=False, allow_random=True)
        return _apply_finetuned(resolve_visual(base), folder)
    preset = None
    if vcfg.preset:
        if vcfg.preset not in VISUAL_PRESETS:
            raise ValueError(
                f"features.visual.preset: unknown preset {vcfg.preset!r}; known: {sorted(VISUAL_PRESETS)} "
                "(or set preset: '' and model: <any timm name>)"
            )
        preset = VISUAL_PRESETS[vcfg.preset]
    if not vcfg.model and preset is None:
        raise ValueError("features.visual: set a preset or a timm model name")
    model = vcfg.model or preset.model
    name = vcfg.preset if (preset is not None and not vcfg.model) else _safe_name(model)
    note = preset.note if preset is not None and not vcfg.model else ""

    pcfg = _pretrained_cfg(model)
    from timm.data import resolve_data_config

    data_cfg = resolve_data_config(pretrained_cfg=pcfg)
    _, h, w = data_cfg["input_size"]
    side = vcfg.img_size or (preset.img_size if preset is not None and not vcfg.model else 0)
    kwargs: dict[str, Any] = {}
    if side:
        h = w = int(side)
        # Models with a fixed input size (ViTs) must be built for it; timm resamples position embeddings
        # when it loads weights trained at another size. Convolutional nets take any size as they are.
        if pcfg.get("fixed_input_size"):
            kwargs["img_size"] = int(side)

    if vcfg.weights:
        path = Path(vcfg.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"features.visual.weights: file {path} does not exist")
        weights, weights_file, weights_id = "file", str(path.resolve()), weights_digest(path)
    elif vcfg.pretrained:
        hub = pcfg.get("hf_hub_id") or pcfg.get("url")
        if not hub:
            raise WeightsError(
                f"features.visual: timm has no pretrained weights for {model!r}; set features.visual.weights "
                "to a local checkpoint file"
            )
        weights, weights_file, weights_id = "hub", "", str(hub)
    elif vcfg.allow_random:
        weights, weights_file, weights_id = "random", "", f"seed={RANDOM_INIT_SEED}"
    else:
        hint = f" ({note})" if note else ""
        raise WeightsError(
            f"features.visual: no weights configured for {model!r}{hint}. Provide them with "
            "features.visual.weights=/path/to/checkpoint (.pth/.safetensors state dict), or "
            "features.visual.pretrained=true on a machine that can reach the Hugging Face hub; "
            "features.visual.allow_random=true gives random features (tests and the demo only)."
        )

    return VisualSpec(
        name=name,
        model=model,
        input_size=(int(h), int(w)),
        create_kwargs=tuple(sorted(kwargs.items())),
        mean=tuple(float(v) for v in data_cfg["mean"]),
        std=tuple(float(v) for v in data_cfg["std"]),
        interpolation=str(data_cfg["interpolation"]),
        weights=weights,
        weights_file=weights_file,
        weights_id=weights_id,
        note=note,
    )


def visual_settings(vcfg: VisualBackboneConfig, release_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything that changes the visual features, as a plain dict (the cache key is its hash); with
    ``finetuned`` set, ``weights_id`` is the fine-tuned checkpoint's digest."""
    spec = resolve_visual(vcfg, release_cache)
    d = asdict(spec)
    for k in ("name", "weights_file", "note", "create_kwargs"):
        d.pop(k)  # the file's digest identifies the weights; its path does not
    d["create_kwargs"] = dict(spec.create_kwargs)
    d["input_size"] = list(spec.input_size)
    d["mean"], d["std"] = list(spec.mean), list(spec.std)
    d.update(
        kind="visual",
        resize="direct",  # whole crop resized to input_size (no centre crop: crops are face-aligned)
        tta_flip=bool(vcfg.tta_flip),
        fill=vcfg.fill,
        dtype=vcfg.dtype,
        extractor_version=EXTRACTOR_VERSION,
    )
    if vcfg.precision != "32":  # absent = fp32, so caches written before the setting keep their key
        d["precision"] = vcfg.precision
    return d
