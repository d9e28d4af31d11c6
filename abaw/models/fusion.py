"""The full models: per-modality encoders -> (recursive joint cross-attention) -> regression head.

One class covers every variant (see ``abaw.models.registry``): which modalities it encodes, and
whether the encoded features pass through the recursion, with which gates, before the head.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from abaw.models.attention import RecursiveJointCrossAttention
from abaw.models.config import ModelConfig
from abaw.models.encoders import ModalityEncoder
from abaw.models.heads import RegressionHead
from abaw.models.shapes import expect_shape, resolve_mask
from abaw.models.xformer import CrossModalTransformer

MODALITIES = ("audio", "visual")


class FusionOutput(NamedTuple):
    """pred [B, L, 2] (valence, arousal) in (-1, 1); gates: name -> values, see
    ``RecursiveJointCrossAttention`` ("audio/iter" [B, L, T, 2], "audio/stage" [B, L, T], same for
    visual; empty for variants without gates). Values at masked frames are finite but meaningless:
    average gates over ``mask`` when logging them."""

    pred: Tensor
    gates: dict[str, Tensor]


class FusionModel(nn.Module):
    """forward(audio [B, L, Ia], visual [B, L, Iv], mask bool [B, L] | None) -> FusionOutput.

    Inputs may be any float dtype (float16 from a memmap): they are cast to the parameters' dtype.
    ``mask`` is True on frames that exist (False on padding); frames without labels but with features
    should stay True, since they carry context. A modality the variant does not use may be None.

    ``face`` bool [B, L]: a face crop was found for the frame (the visual cache's mask); required when
    ``model.face_presence`` is on (any variant that encodes the face). The flag joins the visual
    encoder's input, and the GRJCA gates' logits as "face missing", so a frame whose features are a
    fill from its neighbour (``features.visual.fill``) is no longer indistinguishable from a real one."""

    def __init__(self, cfg: ModelConfig, in_audio: int, in_visual: int, modalities: tuple[str, ...] = MODALITIES,
                 attention: bool = True, iteration_gate: bool = True, stage_gate: bool = True,
                 fusion: str = "rjca"):
        super().__init__()
        cfg.validate()
        for name, dim in (("in_audio", in_audio), ("in_visual", in_visual)):
            if dim < 1:
                raise ValueError(f"{name}={dim}: feature width must be >= 1")
        if not modalities or any(m not in MODALITIES for m in modalities):
            raise ValueError(f"modalities {modalities}: expected a non-empty subset of {MODALITIES}")
        if attention and len(modalities) < 2:
            raise ValueError("joint cross-attention needs two modalities")
        if fusion not in ("rjca", "xformer"):
            raise ValueError(f"fusion {fusion!r}: expected 'rjca' or 'xformer'")
        self.cfg, self.modalities = cfg, tuple(modalities)
        self.in_dims = {"audio": in_audio, "visual": in_visual}
        dims = {"audio": cfg.d_audio, "visual": cfg.d_visual}
        self.dims = {m: dims[m] for m in self.modalities}
        gated = attention and fusion == "rjca" and iteration_gate
        where = cfg.face_presence if "visual" in self.modalities else "none"
        if where == "gates" and not gated:  # nothing to gate: the flag goes where the variant can use it
            where = "encoder"
        self.face_presence = where != "none"
        self.encoders = nn.ModuleDict({
            m: ModalityEncoder(m, self.in_dims[m], self.dims[m], cfg.encoder, cfg.tcn_layers, cfg.tcn_kernel,
                               cfg.blstm_layers, cfg.dropout,
                               extra=int(m == "visual" and where in ("encoder", "both")))
            for m in self.modalities
        })
        self.fusion: nn.Module | None = None
        if attention and fusion == "xformer":
            self.fusion = CrossModalTransformer(self.dims, cfg.xf_layers, cfg.xf_heads, cfg.xf_ff_mult, cfg.dropout)
        elif attention:
            self.fusion = RecursiveJointCrossAttention(
                self.dims, cfg.iterations, cfg.shared_weights, cfg.dropout,
                paper_length=cfg.paper_length if cfg.paper_mode else None,
                iteration_gate=iteration_gate, stage_gate=stage_gate, gate_input=cfg.gate_input, feed=cfg.feed,
                gate_tau=cfg.gate_tau, stage_tau=cfg.stage_tau, gate_norm=cfg.gate_norm, learn_tau=cfg.learn_tau,
                gate_dropout=cfg.gate_dropout, residual=cfg.att_residual,
                reliability=int(where in ("gates", "both")),
            )
        self.head = RegressionHead(sum(self.dims.values()), cfg.head, cfg.head_hidden, cfg.head_layers,
                                   cfg.tcn_kernel, cfg.dropout)

    @property
    def min_length(self) -> int:
        """Frames every input must be padded to: paper mode welds its window length into the keys."""
        return self.fusion.min_length if self.fusion is not None else 0

    def forward(self, audio: Tensor | None, visual: Tensor | None, mask: Tensor | None = None,
                face: Tensor | None = None) -> FusionOutput:
        sizes: dict[str, int] = {}
        inputs = {"audio": audio, "visual": visual}
        for m, x in inputs.items():
            # The unused modality is still checked when given: a mismatch there is an upstream bug.
            if x is None and m not in self.modalities:
                continue
            expect_shape(x, m, ("B", "L", self.in_dims[m]), sizes)
            if not x.is_floating_point():
                raise TypeError(f"{m}: expected floating-point features, got {x.dtype}")
        if sizes["L"] < 1:
            raise ValueError("inputs have no frames (L=0)")
        param = next(self.parameters())
        mask = resolve_mask(mask, sizes, param.device)
        missing = None
        if self.face_presence:
            if face is None:
                raise ValueError("model.face_presence: the model needs face [B, L] (True where a face crop "
                                 "was found: the visual cache's mask)")
            expect_shape(face, "face", ("B", "L"), sizes)
            missing = (~face.bool()).unsqueeze(-1).to(param.dtype)  # [B, L, 1]
        xs = {m: self.encoders[m](inputs[m].to(param.dtype), mask, missing if m == "visual" else None)
              for m in self.modalities}
        gates: dict[str, Tensor] = {}
        if self.fusion is not None:
            xs, gates = self.fusion(xs, mask, missing)
        pred = self.head(torch.cat([xs[m] for m in self.modalities], dim=-1), mask)
        return FusionOutput(pred, gates)
