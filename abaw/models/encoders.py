"""Per-modality temporal encoders: input projection, a dilated 1-D TCN, or a BLSTM.

Masking contract (shared by every temporal layer here and in the head): masked frames are set to zero
at the input of every layer and in every output, so their *content* never reaches a valid frame.
For a right-padded batch (each row's valid frames form a prefix) this goes further: the valid outputs
equal those of running the row alone on its unpadded length, because a centred convolution pads with
zeros anyway and the BLSTM runs on packed sequences. A video therefore gets the same predictions
whatever it is batched with. Masked holes inside a row still count as (zero) time steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from abaw.models.shapes import as_weights, expect_shape


class InputProjection(nn.Module):
    """LayerNorm over the cached backbone features, then a linear map to the model width.

    The norm puts ResNet pooled activations and log-mel embeddings on one scale per frame, whatever
    precision the cache stored them in. ``extra`` per-frame channels (the face-presence flag) join
    *after* the norm: normalised with 512 feature values, a 0/1 flag would shrink to noise."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float, extra: int = 0):
        super().__init__()
        self.in_dim, self.out_dim, self.extra = in_dim, out_dim, extra
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim + extra, out_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, name: str = "input", extra: Tensor | None = None) -> Tensor:
        sizes = expect_shape(x, name, ("B", "L", self.in_dim))
        h = self.norm(x)
        if self.extra:
            if extra is None:
                raise ValueError(f"{name}: this encoder takes {self.extra} extra per-frame channel(s) "
                                 "(model.face_presence); none were given")
            expect_shape(extra, f"{name} extra channels", ("B", "L", self.extra), sizes)
            h = torch.cat([h, extra.to(h.dtype)], dim=-1)
        return self.drop(self.proj(h)) * as_weights(mask, x)


class TemporalConvNet(nn.Module):
    """Residual blocks of centred dilated convolutions (dilation 2^i), width kept constant.

    Pre-norm residual: x + Dropout(ReLU(Conv(LN(x)))). Non-causal: valence/arousal are labelled
    offline, so a frame may look ahead as far as it looks back."""

    def __init__(self, dim: int, layers: int, kernel: int, dropout: float):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"TemporalConvNet: kernel must be odd for a centred convolution, got {kernel}")
        self.dim = dim
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.convs = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel, dilation=2**i, padding=(kernel - 1) // 2 * 2**i) for i in range(layers)
        )
        self.drop = nn.Dropout(dropout)
        self.receptive_field = 1 + (kernel - 1) * (2**layers - 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        sizes = expect_shape(x, "TemporalConvNet input", ("B", "L", self.dim))
        expect_shape(mask, "TemporalConvNet mask", ("B", "L"), sizes)
        m = as_weights(mask, x)
        x = x * m
        for norm, conv in zip(self.norms, self.convs, strict=True):
            # Zero after the norm too: LN maps a zero frame to its bias, which the convolution would
            # otherwise carry into the neighbouring valid frames.
            h = conv((norm(x) * m).transpose(1, 2)).transpose(1, 2)
            x = (x + self.drop(torch.relu(h))) * m
        return x


def run_lstm(lstm: nn.LSTM, x: Tensor, mask: Tensor) -> Tensor:
    """Run a batch-first LSTM under the masking contract of this module; masked outputs are zero."""
    m = as_weights(mask, x)
    if bool(mask.all()):
        out, _ = lstm(x)
        return out
    lengths = mask.sum(dim=1)
    steps = torch.arange(mask.shape[1], device=mask.device)
    if bool(((steps[None, :] < lengths[:, None]) == mask).all()):
        # Right padding: packing makes the backward direction start at each row's own last frame.
        # A row with no valid frame keeps length 1 (packing refuses 0); its output is masked anyway.
        packed = pack_padded_sequence(x * m, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    else:
        out, _ = lstm(x * m)
    return out * as_weights(mask, out)


class BLSTMEncoder(nn.Module):
    """Bidirectional LSTM keeping the width: dim/2 units per direction."""

    def __init__(self, dim: int, layers: int, dropout: float):
        super().__init__()
        if dim % 2:
            raise ValueError(f"BLSTMEncoder: width must be even (half per direction), got {dim}")
        self.dim = dim
        self.lstm = nn.LSTM(dim, dim // 2, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        sizes = expect_shape(x, "BLSTMEncoder input", ("B", "L", self.dim))
        expect_shape(mask, "BLSTMEncoder mask", ("B", "L"), sizes)
        return self.drop(run_lstm(self.lstm, x, mask))


class ModalityEncoder(nn.Module):
    """Cached features [B, L, I] -> X_m [B, L, d]: input projection, then the temporal encoder."""

    def __init__(self, name: str, in_dim: int, dim: int, kind: str, tcn_layers: int, tcn_kernel: int,
                 blstm_layers: int, dropout: float, extra: int = 0):
        super().__init__()
        self.name, self.in_dim, self.dim = name, in_dim, dim
        self.project = InputProjection(in_dim, dim, dropout, extra)
        if kind == "tcn":
            self.temporal: nn.Module = TemporalConvNet(dim, tcn_layers, tcn_kernel, dropout)
        elif kind == "blstm":
            self.temporal = BLSTMEncoder(dim, blstm_layers, dropout)
        else:
            raise ValueError(f"encoder kind {kind!r}: expected 'tcn' or 'blstm'")

    def forward(self, x: Tensor, mask: Tensor, extra: Tensor | None = None) -> Tensor:
        return self.temporal(self.project(x, mask, self.name, extra), mask)
