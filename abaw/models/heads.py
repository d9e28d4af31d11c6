"""Regression head: fused features [B, L, D] -> (valence, arousal) [B, L, 2] in (-1, 1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from abaw.models.encoders import TemporalConvNet, run_lstm
from abaw.models.shapes import as_weights, expect_shape


class RegressionHead(nn.Module):
    """LayerNorm -> BLSTM (``hidden`` per direction) or TCN (``hidden`` channels) -> Linear -> tanh.

    The norm comes first because the fused features are ReLU outputs whose scale depends on the
    variant and on how far the gates have opened."""

    def __init__(self, in_dim: int, kind: str, hidden: int, layers: int, tcn_kernel: int, dropout: float,
                 outputs: int = 2):
        super().__init__()
        self.in_dim, self.kind = in_dim, kind
        self.norm = nn.LayerNorm(in_dim)
        if kind == "blstm":
            self.lstm = nn.LSTM(in_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                                dropout=dropout if layers > 1 else 0.0)
            width = 2 * hidden
        elif kind == "tcn":
            self.proj = nn.Linear(in_dim, hidden)
            self.tcn = TemporalConvNet(hidden, layers, tcn_kernel, dropout)
            width = hidden
        else:
            raise ValueError(f"head kind {kind!r}: expected 'blstm' or 'tcn'")
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, outputs)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        sizes = expect_shape(x, "RegressionHead input", ("B", "L", self.in_dim))
        expect_shape(mask, "RegressionHead mask", ("B", "L"), sizes)
        h = self.norm(x) * as_weights(mask, x)
        h = run_lstm(self.lstm, h, mask) if self.kind == "blstm" else self.tcn(self.proj(h), mask)
        # float32 out of mixed precision too: the CCC loss takes variances of these values
        return torch.tanh(self.out(self.drop(h)).float())
