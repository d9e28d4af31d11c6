"""Differentiable CCC loss for training (torch), consistent with the Numba metric.

``ccc_loss = 1 - mean over dimensions of CCC``, each CCC pooled over every valid frame of the batch
(all sequences together, like the challenge pools all videos), with the same formula, ``ddof`` and
edge-case rule as ``abaw.metrics.concordance``: both sides constant and equal -> CCC 1. Means are
taken first and the variances from centred values (two passes over a batch already in memory), in at
least float32 even under autocast, so bf16/fp16 activations do not wreck the sums.

A batch with no valid frame (or not more than ``ddof``) gives a zero loss that still depends on
``pred`` (zero gradient), so a training step on an unlucky all-unlabelled batch is a no-op rather than a
crash or a NaN; the loss never synchronises with the host to find out. ``ccc_per_dim`` (for logging)
raises ``ValueError`` there instead, like the Numba metric.
"""

from __future__ import annotations

import torch


def _flatten(pred: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor | None):
    if pred.shape != gold.shape:
        raise ValueError(
            f"ccc_loss: pred has shape {tuple(pred.shape)} but gold has shape {tuple(gold.shape)}"
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"ccc_loss: expected [B, L, D] or [N, D], got shape {tuple(pred.shape)}")
    d = pred.shape[-1]
    if mask is not None:
        if tuple(mask.shape) != tuple(pred.shape[:-1]):
            raise ValueError(
                f"ccc_loss: mask has shape {tuple(mask.shape)}, expected {tuple(pred.shape[:-1])}"
            )
        mask = mask.reshape(-1)
        if mask.dtype != torch.bool:
            mask = mask != 0
    return pred.reshape(-1, d), gold.reshape(-1, d), mask


def _ccc_terms(pred, gold, mask, ddof):
    """(CCC per dimension ``[D]``, whether the batch had more than ``ddof`` valid frames) — no host sync."""
    if ddof not in (0, 1):
        raise ValueError(f"ccc_loss: ddof must be 0 or 1, got {ddof!r}")
    x, y, m = _flatten(pred, gold, mask)
    acc = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(acc)
        y = y.to(acc)
        zero = torch.zeros((), dtype=acc, device=x.device)
        if m is None:
            w = torch.ones((x.shape[0], 1), dtype=acc, device=x.device)
        else:
            w = m.to(acc)[:, None]
            # Masked frames become exact zeros, so NaN/inf sitting in them cannot reach the sums
            # (multiplying by 0 would not remove a NaN).
            x = torch.where(m[:, None], x, zero)
            y = torch.where(m[:, None], y, zero)
        n = w.sum()
        enough = n > ddof
        one = torch.ones((), dtype=acc, device=x.device)
        n_safe = torch.where(enough, n, one + ddof)
        mx = (x * w).sum(dim=0) / n_safe
        my = (y * w).sum(dim=0) / n_safe
        dx = (x - mx) * w  # centred first: no sum-of-squares cancellation
        dy = (y - my) * w
        dof = n_safe - ddof
        vx = (dx * dx).sum(dim=0) / dof
        vy = (dy * dy).sum(dim=0) / dof
        cov = (dx * dy).sum(dim=0) / dof
        den = vx + vy + (mx - my) ** 2
        ok = den > 0
        # Both sides constant and equal -> 1, as in the metric. The safe denominator keeps the branch
        # that where() discards finite, so no NaN gradient leaks through it.
        ccc = torch.where(ok, 2.0 * cov / torch.where(ok, den, one), one)
    return ccc, enough


def ccc_per_dim(
    pred: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor | None = None, ddof: int = 0
) -> torch.Tensor:
    """CCC per dimension ``[D]`` over the valid frames of the batch, differentiable.

    ``pred``, ``gold``: ``[B, L, D]`` or ``[N, D]``; ``mask``: ``[B, L]`` / ``[N]``, True = valid.
    Raises ``ValueError`` when there are no valid frames (or not more than ``ddof``).
    """
    ccc, enough = _ccc_terms(pred, gold, mask, ddof)
    if not bool(enough):
        raise ValueError(f"ccc_per_dim: need more than {ddof} valid frame(s) in the batch")
    return ccc


def ccc_loss(
    pred: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor | None = None, ddof: int = 0
) -> torch.Tensor:
    """``1 - mean over dimensions of CCC``: a float32 (or float64) scalar in [0, 2], 0 = perfect.

    ``pred``, ``gold``: ``[B, L, 2]`` or ``[N, 2]``; ``mask``: ``[B, L]`` / ``[N]`` (True = valid).
    """
    ccc, enough = _ccc_terms(pred, gold, mask, ddof)
    loss = 1.0 - ccc.mean()
    return torch.where(enough, loss, loss * 0.0)
