"""The two GRJCA gates: per iteration (attended vs unattended features) and over iterations (stage).

Both projections start at zero, so every gate opens as an even mix: with tau = 0.1 a random
initialisation would hand each frame a near one-hot choice before any training signal arrived.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from abaw.models.shapes import expect_shape


class IterationGate(nn.Module):
    """g = softmax(W_g [X^(0); X_att] / tau) in R^{L x 2};  X~ = ReLU(g_0 X^(0) + g_1 X_att).

    g_0 weighs the unattended encoder output X^(0), g_1 the attended features; with
    ``gate_input="att"`` the gate sees X_att alone."""

    def __init__(self, dim: int, gate_input: str, tau: float):
        super().__init__()
        if gate_input not in ("concat", "att"):
            raise ValueError(f"IterationGate: gate_input must be 'concat' or 'att', got {gate_input!r}")
        self.dim, self.gate_input, self.tau = dim, gate_input, tau
        self.proj = nn.Linear(2 * dim if gate_input == "concat" else dim, 2)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x0: Tensor, x_att: Tensor) -> tuple[Tensor, Tensor]:
        """-> (g [B, L, 2], X~ [B, L, d])."""
        sizes = expect_shape(x0, "IterationGate x0", ("B", "L", self.dim))
        expect_shape(x_att, "IterationGate x_att", ("B", "L", self.dim), sizes)
        z = self.proj(torch.cat([x0, x_att], dim=-1) if self.gate_input == "concat" else x_att)
        g = torch.softmax(z.float() / self.tau, dim=-1)  # float32: 1/tau = 10 amplifies rounding
        return g, torch.relu(g[..., :1] * x0 + g[..., 1:] * x_att)


class StageGate(nn.Module):
    """Gamma = softmax(W_s [X~^(1); ...; X~^(T)] / tau_s) in R^{L x T};  X^fused = sum_t Gamma_t X~^(t)."""

    def __init__(self, dim: int, stages: int, tau: float):
        super().__init__()
        self.dim, self.stages, self.tau = dim, stages, tau
        self.proj = nn.Linear(stages * dim, stages)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, xs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """-> (Gamma [B, L, T], fused [B, L, d])."""
        if len(xs) != self.stages:
            raise ValueError(f"StageGate: expected {self.stages} iteration outputs, got {len(xs)}")
        sizes: dict[str, int] = {}
        for t, x in enumerate(xs):
            expect_shape(x, f"StageGate input {t}", ("B", "L", self.dim), sizes)
        stacked = torch.stack(xs, dim=2)  # [B, L, T, d]
        gamma = torch.softmax(self.proj(stacked.flatten(2)).float() / self.tau, dim=-1)
        return gamma, (gamma.unsqueeze(-1) * stacked).sum(dim=2)
