"""Training settings: windows, splits, optimiser, Lightning trainer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    name: str = ""  # run name; empty = "<variant>-<fold>"
    window: int = 300
    hop: int = 200
    batch_size: int = 16
    max_epochs: int = 30
    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_epochs: int = 1
    scheduler: str = "cosine"  # cosine | none
    grad_clip: float = 1.0
    loss_mse: float = 0.0  # weight of MSE mixed into 1 - CCC
    mask_missing_face: bool = False  # also drop frames without a face crop from loss/metric
    folds: int = 0  # 0 = official train/validation split; K>1 = K folds over train+val by source video
    fold: int = 0
    patience: int = 8  # early stopping on val/p_va
    num_workers: int = 0
    precision: str = "auto"  # auto = 16-mixed on GPU, 32 on CPU
    accelerator: str = "auto"
    devices: str = "auto"
    deterministic: bool = False
    resume: bool = True  # continue from last.ckpt of the same run if present
    shuffle_labels: bool = False  # sanity control: permute label tracks across subjects
    audio_shift_s: float = 0.0  # sanity control: shift audio features in time (seconds)
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10
