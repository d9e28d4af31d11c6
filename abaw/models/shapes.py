"""Shape and mask checks shared by the model modules, so a wrong input fails at the module that
received it, with the expected and actual shapes in the message."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def expect_shape(x: Tensor, name: str, dims: Sequence[int | str], sizes: dict[str, int] | None = None
                 ) -> dict[str, int]:
    """Check ``x`` against ``dims``: ints are fixed sizes, strings are named sizes ("B", "L") that must
    agree with earlier checks sharing the ``sizes`` dict. Returns ``sizes`` with new names bound."""
    sizes = {} if sizes is None else sizes
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a tensor of shape {_fmt(dims, sizes)}, got {type(x).__name__}")
    ok = x.dim() == len(dims)
    if ok:
        bound = dict(sizes)
        for want, got in zip(dims, x.shape, strict=True):
            if isinstance(want, str):
                if bound.setdefault(want, got) != got:
                    ok = False
            elif want != got:
                ok = False
        if ok:
            sizes.update(bound)
            return sizes
    raise ValueError(f"{name}: expected shape {_fmt(dims, sizes)}, got [{', '.join(map(str, x.shape))}]")


def _fmt(dims: Sequence[int | str], sizes: dict[str, int]) -> str:
    return "[" + ", ".join(f"{d}={sizes[d]}" if isinstance(d, str) and d in sizes else str(d) for d in dims) + "]"


def resolve_mask(mask: Tensor | None, sizes: dict[str, int], device: torch.device) -> Tensor:
    """``mask`` as bool [B, L] (all True when None), checked against the bound B and L."""
    if mask is None:
        return torch.ones(sizes["B"], sizes["L"], dtype=torch.bool, device=device)
    expect_shape(mask, "mask", ("B", "L"), sizes)
    if mask.dtype != torch.bool:
        # A 0/1 float mask is usually a label weight passed by mistake; refuse rather than guess.
        raise TypeError(f"mask: expected dtype torch.bool (True = real frame), got {mask.dtype}")
    return mask


def as_weights(mask: Tensor, like: Tensor) -> Tensor:
    """The bool mask [B, L] as a [B, L, 1] multiplier in ``like``'s dtype."""
    return mask.unsqueeze(-1).to(like.dtype)
