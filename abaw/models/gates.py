"""The two GRJCA gates: per iteration (attended vs unattended features) and over iterations (stage).

Both projections start at zero, so every gate opens as an even mix: with tau = 0.1 a random
initialisation would hand each frame a near one-hot choice before any training signal arrived.

Why the paper's gates saturate, and what the options change (measured in the README, "GRJCA's gates"):
- the logits are W [X^(0); X_att] / tau with tau = 0.1 on *unnormalised* ReLU features whose scale
  grows during training, so a small weight change is a large logit change: ``gate_norm`` puts a
  LayerNorm (no affine) on each gate input, so the logit scale is set by W and tau alone, and
  ``learn_tau`` lets the temperature itself be learnt (from the configured value);
- ``gate_dropout`` (training only): per frame, with this probability the gate is replaced by an
  even mix, so the head never learns to rely on one branch being always on.

Reliability (``model.face_presence``): the gate is meant to act where a modality fails, but a frame
whose face crop is missing carries the previous frame's features (``features.visual.fill``), which
nothing in [X^(0); X_att] tells apart from a real one. So the gates can take per-frame reliability
channels (the face-missing flag) straight into their logits, through their own zero-initialised
weights: at the start they change nothing, and the gate learns what a missing face is worth.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from abaw.models.shapes import expect_shape


class _Temperature(nn.Module):
    """A fixed tau, or a learnt one (parametrised by log tau, kept in [0.05, 20])."""

    def __init__(self, tau: float, learn: bool):
        super().__init__()
        self.learn = learn
        if learn:
            self.log_tau = nn.Parameter(torch.tensor(math.log(tau)))
        else:
            self.register_buffer("log_tau", torch.tensor(math.log(tau)), persistent=False)

    def forward(self) -> Tensor:
        return self.log_tau.float().clamp(math.log(0.05), math.log(20.0)).exp()


def _normed(x: Tensor, on: bool) -> Tensor:
    return F.layer_norm(x.float(), x.shape[-1:]) if on else x


def _gate_dropout(g: Tensor, p: float, training: bool) -> Tensor:
    """With probability p per frame (training only), the gate is an even mix instead."""
    if not training or p <= 0:
        return g
    drop = torch.rand(g.shape[:-1], device=g.device) < p
    return torch.where(drop.unsqueeze(-1), torch.full_like(g, 1.0 / g.shape[-1]), g)


class _ReliabilityLogits(nn.Module):
    """Adds W_r r to a gate's logits, r [B, L, E] the per-frame reliability channels (E = 0: none)."""

    def __init__(self, extra: int, out: int):
        super().__init__()
        self.extra = extra
        self.proj = nn.Linear(extra, out, bias=False) if extra else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)

    def forward(self, z: Tensor, r: Tensor | None, sizes: dict[str, int], name: str) -> Tensor:
        if self.proj is None:
            return z
        if r is None:
            raise ValueError(f"{name}: built with {self.extra} reliability channel(s) (model.face_presence); "
                             "none were given")
        expect_shape(r, f"{name} reliability", ("B", "L", self.extra), sizes)
        return z + self.proj(r.to(self.proj.weight.dtype)).float()  # float64 runs too (precision=64-true)


class IterationGate(nn.Module):
    """g = softmax(W_g [X^(0); X_att] / tau) in R^{L x 2};  X~ = ReLU(g_0 X^(0) + g_1 X_att).

    g_0 weighs the unattended encoder output X^(0), g_1 the attended features; with
    ``gate_input="att"`` the gate sees X_att alone."""

    def __init__(self, dim: int, gate_input: str, tau: float, norm: bool = False, learn_tau: bool = False,
                 dropout: float = 0.0, extra: int = 0):
        super().__init__()
        if gate_input not in ("concat", "att"):
            raise ValueError(f"IterationGate: gate_input must be 'concat' or 'att', got {gate_input!r}")
        self.dim, self.gate_input, self.norm, self.dropout = dim, gate_input, norm, dropout
        self.temperature = _Temperature(tau, learn_tau)
        self.proj = nn.Linear(2 * dim if gate_input == "concat" else dim, 2)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.reliability = _ReliabilityLogits(extra, 2)

    @property
    def tau(self) -> float:
        return float(self.temperature())

    def forward(self, x0: Tensor, x_att: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> (g [B, L, 2], X~ [B, L, d]); ``extra`` [B, L, E]: the reliability channels, if built with any."""
        sizes = expect_shape(x0, "IterationGate x0", ("B", "L", self.dim))
        expect_shape(x_att, "IterationGate x_att", ("B", "L", self.dim), sizes)
        a, b = _normed(x0, self.norm), _normed(x_att, self.norm)
        z = self.proj((torch.cat([a, b], dim=-1) if self.gate_input == "concat" else b).to(self.proj.weight.dtype))
        z = self.reliability(z.float(), extra, sizes, "IterationGate")
        g = torch.softmax(z / self.temperature(), dim=-1)  # float32: 1/tau = 10 amplifies rounding
        g = _gate_dropout(g, self.dropout, self.training)
        return g, torch.relu(g[..., :1].to(x0.dtype) * x0 + g[..., 1:].to(x0.dtype) * x_att)


class StageGate(nn.Module):
    """Gamma = softmax(W_s [X~^(1); ...; X~^(T)] / tau_s) in R^{L x T};  X^fused = sum_t Gamma_t X~^(t)."""

    def __init__(self, dim: int, stages: int, tau: float, norm: bool = False, learn_tau: bool = False,
                 dropout: float = 0.0, extra: int = 0):
        super().__init__()
        self.dim, self.stages, self.norm, self.dropout = dim, stages, norm, dropout
        self.temperature = _Temperature(tau, learn_tau)
        self.proj = nn.Linear(stages * dim, stages)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.reliability = _ReliabilityLogits(extra, stages)

    @property
    def tau(self) -> float:
        return float(self.temperature())

    def forward(self, xs: list[Tensor], extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> (Gamma [B, L, T], fused [B, L, d]); ``extra`` as for ``IterationGate``."""
        if len(xs) != self.stages:
            raise ValueError(f"StageGate: expected {self.stages} iteration outputs, got {len(xs)}")
        sizes: dict[str, int] = {}
        for t, x in enumerate(xs):
            expect_shape(x, f"StageGate input {t}", ("B", "L", self.dim), sizes)
        stacked = torch.stack(xs, dim=2)  # [B, L, T, d]
        z = self.proj(_normed(stacked, self.norm).flatten(2).to(self.proj.weight.dtype))
        z = self.reliability(z.float(), extra, sizes, "StageGate")
        gamma = torch.softmax(z / self.temperature(), dim=-1)
        gamma = _gate_dropout(gamma, self.dropout, self.training)
        return gamma, (gamma.unsqueeze(-1).to(stacked.dtype) * stacked).sum(dim=2)
