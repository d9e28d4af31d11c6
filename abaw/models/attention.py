"""Joint cross-attention (one step over all modalities) and its recursion with the GRJCA gates.

Per modality m with X_m [B, L, d_m] and the joint J = concat_m X_m [B, L, D]:
    C_m     = tanh( K_m(X_m)^T Q(J) / N )                 [B, d_m, D]   N = valid frames of the row
    A_m     = ReLU( tanh( V_m(X_m) C_m ) )                [B, L, D]
    X_att,m = X_m + Dropout( ReLU( W_m A_m ) )            [B, L, d_m]

Length. C_m contracts over time. The released RJCA code sums over a fixed 300-frame window and divides
by sqrt(D); here the sum is a mean over the row's valid frames instead, so C_m is a correlation whose
scale is the same for a 17-frame window, a 300-frame one and a whole video (the sqrt(D) of the
released code is dropped: the contraction runs over time, not over D, and after the mean the entries
are already in tanh's responsive range). Masked frames are zeroed in both factors, so they add
nothing to C_m whatever they contain. Note C_m summarises the whole input: a model trained on
300-frame windows sees a different C_m on a whole video, so predict with the training windows.

Paper mode keeps the released form: K_m = Linear(L, L) mixing the time axis, the plain time sum and
sqrt(D); it only runs at the length it was built for and says so otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from abaw.models.gates import IterationGate, StageGate
from abaw.models.shapes import as_weights, expect_shape


class JointCrossAttention(nn.Module):
    """One joint cross-attention step: dict of X_m [B, L, d_m] -> dict of X_att,m [B, L, d_m]."""

    def __init__(self, dims: dict[str, int], dropout: float, paper_length: int | None = None,
                 residual: bool = True):
        super().__init__()
        self.dims = dict(dims)
        self.residual = residual
        self.joint_dim = sum(self.dims.values())
        self.paper_length = paper_length
        D = self.joint_dim
        self.query = nn.Linear(D, D)
        self.keys = nn.ModuleDict(
            {m: nn.Linear(paper_length, paper_length) if paper_length else nn.Linear(d, d) for m, d in dims.items()}
        )
        self.values = nn.ModuleDict({m: nn.Linear(d, d) for m, d in dims.items()})
        self.outs = nn.ModuleDict({m: nn.Linear(D, d) for m, d in dims.items()})
        self.drop = nn.Dropout(dropout)

    def _check(self, xs: dict[str, Tensor], mask: Tensor) -> None:
        if list(xs) != list(self.dims):
            raise ValueError(f"JointCrossAttention: expected modalities {list(self.dims)}, got {list(xs)}")
        sizes: dict[str, int] = {}
        for m, x in xs.items():
            expect_shape(x, f"JointCrossAttention {m}", ("B", "L", self.dims[m]), sizes)
        expect_shape(mask, "JointCrossAttention mask", ("B", "L"), sizes)
        if self.paper_length and sizes["L"] != self.paper_length:
            raise ValueError(
                f"paper mode (model.paper_mode=true) welds the window length into the key layers "
                f"Linear(L, L): expected L={self.paper_length} frames, got L={sizes['L']}; "
                f"use windows of {self.paper_length} frames or model.paper_mode=false (length-agnostic keys)"
            )

    def correlation(self, xs: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """C_m [B, d_m, D] for every modality (exposed for tests and inspection)."""
        self._check(xs, mask)
        joint = torch.cat(list(xs.values()), dim=-1)
        w = as_weights(mask, joint)
        q = self.query(joint) * w  # [B, L, D]
        # The normaliser is applied to the keys *before* the time contraction: under float16 autocast
        # a raw sum over a whole video (10^4 frames) could overflow before the division.
        frames = mask.sum(dim=1).clamp(min=1)[:, None, None]
        out = {}
        for m, x in xs.items():
            if self.paper_length:
                k = self.keys[m]((x * w).transpose(1, 2)) * w.transpose(1, 2)  # [B, d_m, L]
                c = (k / math.sqrt(self.joint_dim)) @ q
            else:
                k = self.keys[m](x) * w / frames  # [B, L, d_m]
                c = k.transpose(1, 2) @ q
            out[m] = torch.tanh(c)
        return out

    def forward(self, xs: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        corr = self.correlation(xs, mask)
        out = {}
        for m, x in xs.items():
            a = torch.relu(torch.tanh(self.values[m](x) @ corr[m]))  # [B, L, D]
            update = self.drop(torch.relu(self.outs[m](a)))
            out[m] = ((x + update) if self.residual else update) * as_weights(mask, x)
        return out


class RecursiveJointCrossAttention(nn.Module):
    """T joint cross-attention steps, optionally gated per iteration and over iterations (GRJCA).

    Returns the fused features per modality and the gate values:
      ``"{m}/iter"``  [B, L, T, 2]  per-iteration gate; [..., 0] weighs the unattended encoder output
                                    X_m^(0), [..., 1] the attended X_att,m^(t)   (iteration_gate)
      ``"{m}/stage"`` [B, L, T]     stage gate Gamma over the T gated outputs  (stage_gate)
    Without gates the fused features are X_att of the last step and the dict is empty.
    """

    def __init__(self, dims: dict[str, int], iterations: int, shared_weights: bool, dropout: float,
                 paper_length: int | None = None, iteration_gate: bool = True, stage_gate: bool = True,
                 gate_input: str = "concat", feed: str = "gated", gate_tau: float = 0.1, stage_tau: float = 0.1,
                 gate_norm: bool = False, learn_tau: bool = False, gate_dropout: float = 0.0,
                 residual: bool = True, reliability: int = 0):
        super().__init__()
        if stage_gate and not iteration_gate:
            raise ValueError("RecursiveJointCrossAttention: the stage gate weighs gated outputs; "
                             "it needs iteration_gate=True")
        if feed not in ("gated", "att"):
            raise ValueError(f"RecursiveJointCrossAttention: feed must be 'gated' or 'att', got {feed!r}")
        self.dims, self.iterations, self.shared_weights, self.feed = dict(dims), iterations, shared_weights, feed
        layers = 1 if shared_weights else iterations
        # Without a gate to fall back to X^(0), X_att keeps the residual whatever `residual` says: an
        # ungated rjca without it would lose the unimodal path altogether.
        keep = residual or not iteration_gate
        self.steps = nn.ModuleList(JointCrossAttention(dims, dropout, paper_length, keep) for _ in range(layers))
        self.min_length = paper_length or 0  # paper mode welds its window length into the keys
        # reliability: per-frame channels every gate takes into its logits (abaw.models.gates)
        opts = dict(norm=gate_norm, learn_tau=learn_tau, dropout=gate_dropout, extra=reliability)
        self.gates = nn.ModuleList(
            nn.ModuleDict({m: IterationGate(d, gate_input, gate_tau, **opts) for m, d in dims.items()})
            for _ in range(layers if iteration_gate else 0)
        )
        self.stage = (nn.ModuleDict({m: StageGate(d, iterations, stage_tau, **opts) for m, d in dims.items()})
                      if stage_gate else None)

    def forward(self, xs: dict[str, Tensor], mask: Tensor, reliability: Tensor | None = None
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``reliability`` [B, L, E]: the gates' reliability channels, when built with E > 0."""
        x0, current = xs, xs
        gated: dict[str, list[Tensor]] = {m: [] for m in self.dims}
        gate_values: dict[str, list[Tensor]] = {m: [] for m in self.dims}
        for t in range(self.iterations):
            layer = 0 if self.shared_weights else t
            att = self.steps[layer](current, mask)
            if not len(self.gates):
                current = att
                continue
            for m in self.dims:
                g, x_tilde = self.gates[layer][m](x0[m], att[m], reliability)
                gated[m].append(x_tilde * as_weights(mask, x_tilde))
                gate_values[m].append(g)
            current = {m: gated[m][-1] for m in self.dims} if self.feed == "gated" else att
        if not len(self.gates):
            return current, {}
        gates = {f"{m}/iter": torch.stack(gate_values[m], dim=2) for m in self.dims}
        if self.stage is None:
            return {m: gated[m][-1] for m in self.dims}, gates
        fused = {}
        for m in self.dims:
            gates[f"{m}/stage"], fused[m] = self.stage[m](gated[m], reliability)
        return fused, gates
