"""A standard transformer fusion baseline (``xformer``): what a team would try first today.

Per-frame audio and visual tokens (the encoders' outputs) with sinusoidal time positions go through
pre-norm blocks; in each block every modality attends to the *other* modality's tokens over the whole
window (multi-head cross-attention, padded frames masked out of the keys), then through its own
feed-forward layer, both residual. No gates: the fused features go to the same head as every variant.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from abaw.models.shapes import as_weights, expect_shape


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[L, dim] the usual sin/cos table (any length: nothing welds the window size into weights)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.to(dtype)


class CrossModalBlock(nn.Module):
    """x_m <- x_m + MHA(LN x_m, LN x_other); x_m <- x_m + FFN(LN x_m), for each of two modalities."""

    def __init__(self, dims: dict[str, int], heads: int, ff_mult: int, dropout: float):
        super().__init__()
        if len(dims) != 2:
            raise ValueError(f"CrossModalBlock: needs two modalities, got {list(dims)}")
        self.dims = dict(dims)
        names = list(dims)
        self.other = {names[0]: names[1], names[1]: names[0]}
        for m, d in dims.items():
            if d % heads:
                raise ValueError(f"xformer: model.xf_heads={heads} must divide the {m} width {d}")
        self.norm_q = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in dims.items()})
        self.norm_kv = nn.ModuleDict({m: nn.LayerNorm(dims[self.other[m]]) for m in dims})
        self.attn = nn.ModuleDict({
            m: nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True,
                                     kdim=dims[self.other[m]], vdim=dims[self.other[m]])
            for m, d in dims.items()
        })
        self.norm_ff = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in dims.items()})
        self.ff = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * d, d))
            for m, d in dims.items()
        })
        self.drop = nn.Dropout(dropout)

    def forward(self, xs: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        # A row with no real frame would give every query an empty softmax (NaN); it is zeroed below.
        empty = ~mask.any(dim=1, keepdim=True)
        pad = ~mask & ~empty
        out = {}
        for m, x in xs.items():
            kv = self.norm_kv[m](xs[self.other[m]])
            a, _ = self.attn[m](self.norm_q[m](x), kv, kv, key_padding_mask=pad, need_weights=False)
            x = x + self.drop(a)
            x = x + self.drop(self.ff[m](self.norm_ff[m](x)))
            out[m] = x * as_weights(mask, x)
        return out


class CrossModalTransformer(nn.Module):
    """``layers`` cross-modal blocks over time: dict of X_m [B, L, d_m] -> (fused dict, {} no gates)."""

    def __init__(self, dims: dict[str, int], layers: int, heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.dims = dict(dims)
        self.blocks = nn.ModuleList(CrossModalBlock(dims, heads, ff_mult, dropout) for _ in range(layers))
        self.out_norm = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in dims.items()})
        self.min_length = 0  # any window length

    def forward(self, xs: dict[str, Tensor], mask: Tensor, reliability: Tensor | None = None
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``reliability``: the fusion modules' common argument; no gates here to take it (the face flag
        reaches this variant through its visual encoder)."""
        sizes: dict[str, int] = {}
        for m, x in xs.items():
            expect_shape(x, f"CrossModalTransformer {m}", ("B", "L", self.dims[m]), sizes)
        expect_shape(mask, "CrossModalTransformer mask", ("B", "L"), sizes)
        cur = {}
        for m, x in xs.items():
            pos = sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
            cur[m] = (x + pos) * as_weights(mask, x)
        for block in self.blocks:
            cur = block(cur, mask)
        return {m: self.out_norm[m](x) * as_weights(mask, x) for m, x in cur.items()}, {}
