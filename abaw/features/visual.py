"""Visual backbone: a timm model and the JPEG -> tensor path that feeds it.

Decoding and resizing run in DataLoader workers (``CropFrames``), so the backbone's forward pass overlaps
with the next batches' JPEG work; the main process only runs the model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from abaw.data.release import crop_name
from abaw.features.config import VisualBackboneConfig
from abaw.features.registry import RANDOM_INIT_SEED, VisualSpec, WeightsError, resolve_visual

log = logging.getLogger(__name__)
# Model building swaps process-wide state (the torch RNG, Module.load_state_dict): one thread at a time.
_BUILD_LOCK = threading.Lock()

_CV2_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "area": cv2.INTER_AREA,
}


def build_transform(spec: VisualSpec):
    """albumentations pipeline: resize the whole crop to the model's input, normalise with its mean/std."""
    import albumentations as A

    h, w = spec.input_size
    return A.Compose(
        [
            A.Resize(h, w, interpolation=_CV2_INTERP.get(spec.interpolation, cv2.INTER_LINEAR)),
            A.Normalize(mean=spec.mean, std=spec.std, max_pixel_value=255.0),
        ]
    )


def decode_crop(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] of one crop, at whatever size it was saved; OSError if it cannot be decoded.

    OpenCV decodes (about 2.5x faster than PIL here), but it returns a half-grey image for a truncated
    JPEG instead of failing; so a JPEG that does not end in its end-of-image marker is handed to PIL,
    which raises for a truncated file and accepts harmless trailing bytes.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise OSError("empty file")
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return _decode_pil(path)
    try:
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    except cv2.error as e:
        raise OSError(str(e).strip()) from e
    if rgb is None:
        raise OSError("not a decodable image")
    return rgb


def _decode_pil(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _worker_init(_: int) -> None:
    # One thread per decoding worker: the workers already run in parallel with each other.
    cv2.setNumThreads(1)


class CropFrames(Dataset):
    """Frames of many subjects, addressed by one flat index.

    Item ``g`` is frame ``frames[g]`` of subject ``subjects[g]`` (numpy arrays, so forked workers share
    them without copy-on-write churn). It returns ``(image float32 [3, H, W], error)``: a crop that cannot
    be decoded gives zeros and a message naming the file, so one bad JPEG fails its subject, not the run.
    """

    def __init__(self, dirs: list[str], subjects: np.ndarray, frames: np.ndarray, transform, size):
        self.dirs, self.subjects, self.frames = dirs, subjects, frames
        self.transform = transform
        self.size = size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, g: int) -> tuple[torch.Tensor, str]:
        path = os.path.join(self.dirs[self.subjects[g]], crop_name(int(self.frames[g])))
        try:
            rgb = decode_crop(path)
        # Crops are untrusted files: any decoder failure (OSError, SyntaxError, ValueError...) is reported
        # for this file and the run goes on.
        except Exception as e:  # noqa: BLE001
            return torch.zeros((3, *self.size)), f"{path}: cannot decode ({type(e).__name__}: {e})"
        x = self.transform(image=rgb)["image"]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), ""


def resolve_device(name: str) -> torch.device:
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def _recording_loads() -> Iterator[list]:
    """Record what every ``load_state_dict`` inside the block matched.

    timm loads pretrained weights with ``strict=False`` whenever it drops the classifier (always, with
    ``num_classes=0``), so a checkpoint of the wrong architecture would quietly leave random weights.
    """
    results: list = []
    real = torch.nn.Module.load_state_dict

    def load(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        results.append((self, result))
        return result

    torch.nn.Module.load_state_dict = load
    try:
        yield results
    finally:
        torch.nn.Module.load_state_dict = real


def _few(keys: list[str], k: int = 4) -> str:
    return ", ".join(keys[:k]) + (f", ... ({len(keys)} in all)" if len(keys) > k else "")


def load_backbone(spec: VisualSpec) -> torch.nn.Module:
    """The timm model with pooled outputs (``num_classes=0``) and the weights the spec names."""
    import timm

    kwargs = dict(num_classes=0, **spec.kwargs)
    if spec.weights == "finetuned":
        # A state dict `abaw finetune` saved from this very architecture: every tensor must match.
        with _BUILD_LOCK, torch.random.fork_rng(devices=[]):  # its init is overwritten: spare the RNG
            model = timm.create_model(spec.model, pretrained=False, **kwargs)
        try:
            model.load_state_dict(torch.load(spec.weights_file, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError) as e:
            raise WeightsError(f"features.visual.finetuned: cannot load {spec.weights_file}: {e}") from e
        return model
    if spec.weights == "random":
        # allow_random: seeded so shards and reruns agree, without touching the global RNG.
        with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return timm.create_model(spec.model, pretrained=False, **kwargs)
    where = spec.weights_file or spec.weights_id
    try:
        with _BUILD_LOCK, _recording_loads() as loads:
            if spec.weights == "file":
                # Through timm's pretrained path (not checkpoint_path=) so the classifier is dropped and
                # checkpoints are adapted (position embeddings resampled, .npz converted) as for hub weights.
                overlay = dict(
                    file=spec.weights_file, source="", custom_load=spec.weights_file.endswith(".npz")
                )
                model = timm.create_model(
                    spec.model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
                )
            else:
                model = timm.create_model(spec.model, pretrained=True, **kwargs)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        hint = (
            "is it a state dict of this architecture?"
            if spec.weights == "file"
            else "is the machine offline? set features.visual.weights to a local file instead"
        )
        raise WeightsError(
            f"features.visual: cannot load {spec.model} weights from {where}: {e} ({hint})"
        ) from e
    for module, result in loads:
        # Missing buffers can be fine (timm filters drop some and rebuild them); missing weights are not.
        params = {name for name, _ in module.named_parameters()}
        missing = [k for k in result.missing_keys if k in params]
        if missing:
            raise WeightsError(
                f"features.visual: {where} lacks {len(missing)} weight tensor(s) of {spec.model} "
                f"({_few(missing)}): not a checkpoint of this architecture"
            )
        if result.unexpected_keys:
            log.warning("%s: tensors not used by %s: %s", where, spec.model, _few(result.unexpected_keys))
    return model


class VisualExtractor:
    """A backbone on a device, in eval mode; ``embed(batch)`` returns float32 features [B, D]."""

    def __init__(self, vcfg: VisualBackboneConfig, device: str | torch.device = "cpu", release_cache=None):
        import timm

        self.cfg = vcfg
        self.spec = resolve_visual(vcfg, release_cache)
        self.device = resolve_device(str(device))
        self.model = load_backbone(self.spec).eval().to(self.device)
        self.channels_last = bool(vcfg.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        data_cfg = timm.data.resolve_model_data_config(self.model)
        for key in ("mean", "std"):
            # The cache key was computed from the registry's view of the model; refuse to write features
            # under a key that does not describe them.
            if tuple(float(v) for v in data_cfg[key]) != getattr(self.spec, key):
                raise RuntimeError(
                    f"{self.spec.model}: built model's {key} {data_cfg[key]} != resolved {key}"
                )
        self.dim = int(self.model.num_features)
        self.transform = build_transform(self.spec)
        self.bf16 = vcfg.precision == "bf16"
        if self.bf16:
            from abaw.utils import warn_if_bf16_emulated

            warn_if_bf16_emulated("features.visual.precision=bf16", self.device.type, "features.visual.precision=32")

    def dataset(self, dirs: list[str], subjects: np.ndarray, frames: np.ndarray) -> CropFrames:
        return CropFrames(dirs, subjects, frames, self.transform, self.spec.input_size)

    @torch.inference_mode()
    def embed(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # No autocast context at all for fp32: some torch versions refuse autocast on some devices (mps).
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with amp:
            feats = self.model(x).float()
            if self.cfg.tta_flip:
                feats = (feats + self.model(torch.flip(x, dims=[3])).float()) / 2
        return feats.cpu().numpy()
