"""Training settings: windows, splits, optimiser, Lightning trainer."""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULERS = ("cosine", "none")
FEATURE_NORMS = ("auto", "subject", "none", "audio")
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "64-true")


@dataclass
class TrainConfig:
    name: str = ""  # run folder; empty = "<variant>-fold<k>-<hash8>" / "<variant>-official-<hash8>" (run identity)
    window: int = 300  # training window (frames)
    hop: int = 200  # stride between training windows; the last window of a subject is end-aligned
    eval_window: int = 0  # validation/prediction window; 0 = `window`, -1 = whole subjects
    eval_hop: int = 0  # 0 = `hop` (overlaps are averaged when stitched back)
    batch_size: int = 16
    max_epochs: int = 30
    lr: float = 3e-4
    weight_decay: float = 1e-2
    # Learning-rate multiplier of the GRJCA gates' parameters. They start at zero (an even mix) and Adam
    # moves a parameter by about lr per step, so at lr 3e-4 a few hundred steps leave a gate logit where
    # it started: on the demo (about 40 steps) the gates barely trained at all (README: the gates).
    gate_lr_mult: float = 10.0
    warmup_epochs: float = 1.0  # linear warm-up from lr/100, in epochs (fractions allowed)
    scheduler: str = "cosine"  # cosine (to min_lr_ratio * lr at max_epochs) | none (constant)
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    loss_mse: float = 0.0  # weight of MSE mixed into 1 - CCC
    # subject: z-score every feature dim over each video's frames | none | audio: the audio only | auto:
    # "audio" when the visual features are fine-tuned (features.visual.finetuned), else "subject". A
    # fine-tuned backbone was trained to map a face to valence and arousal, so a video's mean visual feature
    # is its mean emotion, which z-scoring would remove; frozen features carry identity there instead.
    feature_norm: str = "auto"
    mask_missing_face: bool = False  # also drop frames without a face crop from loss/metric
    folds: int = 0  # 0 = official train/validation split; K>1 = K folds over train+val by source video
    fold: int = 0
    fold_seed: int = 0  # folds stay fixed when `seed` changes (seed ensembles over the same folds)
    patience: int = 8  # early stopping on val/p_va (epochs without improvement); 0 = off
    num_workers: int = 0
    precision: str = "auto"  # auto = bf16-mixed (or 16-mixed) on GPU, 32-true on CPU
    accelerator: str = "auto"
    devices: str = "auto"  # "auto", a count ("2") or a list ("0,1")
    strategy: str = "auto"  # Lightning strategy; "auto" picks DDP for several devices
    deterministic: bool = False
    resume: bool = True  # continue a partial run of the same identity from its last.ckpt
    session_epochs: int = 0  # > 0: stop after this many epochs per invocation (time-sliced jobs; rerun continues)
    shuffle_labels: bool = False  # sanity control: permute training label tracks across subjects
    audio_shift_s: float = 0.0  # sanity control: audio features of frame t come from time t - shift
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10
    plot_subjects: int = 3  # validation subjects drawn in val_plot.png
    progress_bar: bool = True  # Lightning's bar (rate, ETA); a one-line summary per epoch is logged either way

    def validate(self) -> None:
        if self.window < 2 or self.hop < 1 or self.hop > self.window:
            raise ValueError(f"train.window/hop must satisfy 2 <= window and 1 <= hop <= window, "
                             f"got window={self.window}, hop={self.hop}")
        if self.eval_window < -1 or self.eval_window == 1 or self.eval_hop < 0:
            raise ValueError(f"train.eval_window must be -1, 0 or >= 2 and eval_hop >= 0, "
                             f"got {self.eval_window}, {self.eval_hop}")
        if self.eval_window > 0 and self.eval_hop > self.eval_window:
            raise ValueError(f"train.eval_hop ({self.eval_hop}) exceeds eval_window ({self.eval_window}): "
                             "frames between windows would get no prediction")
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"train.folds must be 0 (official split) or >= 2, got {self.folds}")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ValueError(f"train.fold must be in [0, {self.folds}), got {self.fold}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"train.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"train.feature_norm must be one of {FEATURE_NORMS}, got {self.feature_norm!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.gate_lr_mult > 0:
            raise ValueError(f"train.gate_lr_mult must be > 0, got {self.gate_lr_mult}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.lr <= 0:
            raise ValueError("train.batch_size, max_epochs must be >= 1 and lr > 0")
        if self.loss_mse < 0 or self.grad_clip < 0 or self.warmup_epochs < 0:
            raise ValueError("train.loss_mse, grad_clip and warmup_epochs must be >= 0")
        if self.session_epochs < 0:
            raise ValueError(f"train.session_epochs must be >= 0, got {self.session_epochs}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    @property
    def eval_window_size(self) -> int:
        """Validation/prediction window in frames; 0 means whole subjects."""
        if self.eval_window == -1:
            return 0
        return self.eval_window or self.window

    @property
    def eval_hop_size(self) -> int:
        if self.eval_window == -1:
            return 0
        if self.eval_hop:
            return self.eval_hop
        # An explicit long eval window with the default hop keeps the training window's overlap ratio.
        if self.eval_window:
            return max(1, round(self.eval_window * self.hop / self.window))
        return self.hop


def standardised_kinds(cfg) -> tuple[str, ...]:
    """The modalities z-scored per video under ``train.feature_norm`` (``auto`` resolved from whether the
    visual features are fine-tuned)."""
    norm = cfg.train.feature_norm
    if norm == "auto":
        norm = "audio" if cfg.features.visual.finetuned else "subject"
    return {"subject": ("audio", "visual"), "audio": ("audio",), "none": ()}[norm]
