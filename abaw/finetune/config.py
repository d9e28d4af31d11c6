"""Settings of ``abaw finetune``: the visual backbone (``features.visual``) with a small valence-arousal
head, trained on face crops of the training split only, before its features are cached."""

from __future__ import annotations

from dataclasses import dataclass

LAYER_STRATEGIES = ("all", "decay", "gradual")
LOSSES = ("ccc", "ccc+mse", "mse")
AUGMENTS = ("face", "flip", "none")
MONITORS = ("p_va", "ccc_v", "ccc_a")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed")


@dataclass
class FinetuneConfig:
    img_size: int = 0  # 0 = features.visual's input size (the features are extracted at the same size)
    stride: int = 2  # every stride-th annotated frame with a crop (neighbours are near duplicates)
    samples_per_epoch: int = 0  # frames drawn per epoch, equally many per subject; 0 = the strided pool
    val_stride: int = 4  # validation frames: every val_stride-th annotated frame with a crop
    batch_size: int = 64
    max_epochs: int = 3
    lr: float = 1e-3  # head and top layer group (lower groups get less under `decay`)
    weight_decay: float = 0.05
    warmup_epochs: float = 0.3  # linear warm-up (fractions of an epoch allowed), then cosine decay
    min_lr_ratio: float = 0.01
    # all: one learning rate; decay: layer-wise LR decay (layer_decay per group, from the top);
    # gradual: head first, then one more layer group (from the top) every `unfreeze_every` epochs.
    layers: str = "decay"
    layer_decay: float = 0.8
    unfreeze_every: float = 1.0
    loss: str = "ccc+mse"  # masked 1 - CCC (pooled over the batch), optionally + MSE
    mse_weight: float = 1.0
    dropout: float = 0.1  # before the linear head
    augment: str = "face"  # face: flip, colour jitter, small affine, random erasing | flip | none
    grad_clip: float = 1.0
    monitor: str = "p_va"  # validation CCC that picks the best checkpoint: p_va | ccc_v | ccc_a
    shuffle_labels: bool = False  # control: permute label tracks across training subjects
    num_workers: int = 2  # DataLoader workers decoding and augmenting JPEGs
    precision: str = "auto"  # auto: bf16/fp16 mixed on GPU, fp32 on CPU
    accelerator: str = "auto"
    channels_last: bool = True
    resume: bool = True  # continue from last.ckpt of the same fine-tuning
    plot_subjects: int = 3
    progress_bar: bool = True  # rate and ETA per epoch (Lightning's progress bar)

    def validate(self) -> None:
        w = "finetune"
        if self.layers not in LAYER_STRATEGIES:
            raise ValueError(f"{w}.layers: {self.layers!r} is not one of {LAYER_STRATEGIES}")
        if self.loss not in LOSSES:
            raise ValueError(f"{w}.loss: {self.loss!r} is not one of {LOSSES}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"{w}.augment: {self.augment!r} is not one of {AUGMENTS}")
        if self.monitor not in MONITORS:
            raise ValueError(f"{w}.monitor: {self.monitor!r} is not one of {MONITORS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{w}.precision: {self.precision!r} is not one of {PRECISIONS}")
        if self.stride < 1 or self.val_stride < 1 or self.samples_per_epoch < 0:
            raise ValueError(f"{w}: stride and val_stride must be >= 1 and samples_per_epoch >= 0")
        if self.batch_size < 1 or self.max_epochs < 1 or self.lr <= 0 or self.img_size < 0:
            raise ValueError(f"{w}: batch_size, max_epochs must be >= 1, lr > 0, img_size >= 0")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"{w}.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.unfreeze_every <= 0:
            raise ValueError(f"{w}.unfreeze_every must be > 0 epochs, got {self.unfreeze_every}")
        if self.warmup_epochs < 0 or self.mse_weight < 0 or self.grad_clip < 0 or self.num_workers < 0:
            raise ValueError(f"{w}: warmup_epochs, mse_weight, grad_clip, num_workers must be >= 0")
        if not 0 <= self.dropout < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"{w}: dropout must be in [0, 1) and min_lr_ratio in [0, 1]")
