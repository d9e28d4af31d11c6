"""Fusion model settings (see shared/reference/fusion-model.md for the equations).

No torch here: the config system imports this module at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

# The names abaw.models.registry.MODELS registers; listed here so a typo fails when the config is
# loaded rather than when training starts (a test keeps the two in step).
VARIANTS = ("grjca_hier", "grjca", "rjca", "concat", "xformer", "audio", "visual")
ATTENTION_VARIANTS = ("grjca_hier", "grjca", "rjca")
_CHOICES = {
    "encoder": ("tcn", "blstm"),
    "head": ("blstm", "tcn"),
    "gate_input": ("concat", "att"),
    "feed": ("gated", "att"),
    "face_presence": ("none", "encoder", "gates", "both"),
}


@dataclass
class ModelConfig:
    variant: str = "grjca_hier"  # grjca_hier | grjca | rjca | concat | xformer | audio | visual
    encoder: str = "tcn"  # tcn | blstm : per-modality temporal encoder
    d_audio: int = 128  # encoder output width per modality (even for the blstm encoder)
    d_visual: int = 128
    tcn_layers: int = 4  # dilated blocks (dilation 1, 2, 4, ...): receptive field 1 + (k-1)(2^n - 1)
    tcn_kernel: int = 5  # odd, so the convolution is centred on the frame (61 frames with 4 layers)
    blstm_layers: int = 1  # layers of the blstm encoder
    iterations: int = 3  # recursion depth T
    shared_weights: bool = True  # one attention layer (and gate) reused across iterations
    gate_input: str = "concat"  # concat: [X; X_att] | att: X_att alone
    feed: str = "gated"  # gated: feed X~ into the next iteration | att: feed X_att
    # Gates (abaw/models/gates.py; measured in the README, "GRJCA's gates"). The paper's form:
    # gate_tau=0.1 stage_tau=0.1 gate_norm=false (and train.gate_lr_mult=1). At 1/tau = 10 on raw
    # features the gates go one-hot on the demo release; tau = 1 on normalised inputs, with the gates'
    # own learning rate, keeps them alive and lets them move.
    gate_tau: float = 1.0
    stage_tau: float = 1.0
    gate_norm: bool = True  # LayerNorm (no affine) on every gate input: the logit scale is W's alone
    learn_tau: bool = False  # learn the gate temperatures, starting from gate_tau / stage_tau
    gate_dropout: float = 0.0  # training only: per frame, this fraction of gates is an even mix
    # X_att = X + attention update (paper: "attended" then always contains X); false: the update alone,
    # so the gate picks unimodal vs cross-modal features. Gated variants only: rjca keeps the residual.
    att_residual: bool = True
    # The per-frame face-crop flag (the visual cache's mask; abaw/models/fusion.py): none | encoder (one
    # more visual input channel) | gates (into every GRJCA gate's logits; variants without gates: the
    # encoder) | both. "none" here so runs saved before it existed load as they were trained;
    # configs/default.yaml sets it.
    face_presence: str = "none"
    xf_layers: int = 1  # xformer: cross-modal blocks
    xf_heads: int = 4  # xformer: attention heads (must divide d_audio and d_visual)
    xf_ff_mult: int = 2  # xformer: feed-forward width in multiples of the model width
    head: str = "blstm"  # blstm | tcn
    head_hidden: int = 64  # per direction for the blstm head; channels for the tcn head
    head_layers: int = 1  # blstm layers, or dilated blocks of the tcn head
    dropout: float = 0.2
    paper_mode: bool = False  # time-mixing keys Linear(L, L), as in the released RJCA code
    paper_length: int = 300  # the only window length paper mode accepts

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a model."""
        if self.variant not in VARIANTS:
            raise ValueError(f"model.variant={self.variant!r}: expected one of {list(VARIANTS)}")
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"model.{name}={value!r}: expected one of {list(choices)}")
        for name in ("d_audio", "d_visual", "tcn_layers", "tcn_kernel", "blstm_layers", "iterations",
                     "head_hidden", "head_layers", "paper_length", "xf_layers", "xf_heads", "xf_ff_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)}: must be >= 1")
        if self.tcn_kernel % 2 == 0:
            raise ValueError(f"model.tcn_kernel={self.tcn_kernel}: must be odd (a centred 'same' convolution)")
        if self.encoder == "blstm":
            for name in ("d_audio", "d_visual"):
                if getattr(self, name) % 2:
                    raise ValueError(f"model.{name}={getattr(self, name)}: the blstm encoder needs an even "
                                     "width (half per direction)")
        for name in ("gate_tau", "stage_tau"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model.{name}={getattr(self, name)}: must be > 0")
        for name in ("dropout", "gate_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name}={getattr(self, name)}: must be in [0, 1)")
        if self.variant == "xformer":
            for name in ("d_audio", "d_visual"):
                if getattr(self, name) % self.xf_heads:
                    raise ValueError(f"model.xf_heads={self.xf_heads} must divide model.{name}={getattr(self, name)}")
