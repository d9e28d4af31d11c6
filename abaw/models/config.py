"""Fusion model settings (see shared/reference/fusion-model.md for the equations)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    variant: str = "grjca_hier"  # grjca_hier | grjca | rjca | concat | audio | visual
    encoder: str = "tcn"  # tcn | blstm : per-modality temporal encoder
    d_audio: int = 128  # encoder output width per modality
    d_visual: int = 128
    tcn_layers: int = 3
    tcn_kernel: int = 3
    iterations: int = 3  # recursion depth T
    shared_weights: bool = True  # one attention layer reused across iterations
    gate_input: str = "concat"  # concat: [X; X_att] | att: X_att alone
    feed: str = "gated"  # gated: feed X~ into the next iteration | att: feed X_att
    gate_tau: float = 0.1
    stage_tau: float = 0.1
    head: str = "blstm"  # blstm | tcn
    head_hidden: int = 64
    dropout: float = 0.2
    paper_mode: bool = False  # time-mixing keys Linear(L, L), as in the released RJCA code
    paper_length: int = 300  # the only window length paper mode accepts
