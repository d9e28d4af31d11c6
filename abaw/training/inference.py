"""Running a fusion model over windows and stitching the outputs back into whole subjects (shared by
validation, the post-training report and prediction)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from abaw.training.store import SubjectData
from abaw.training.windows import Stitcher, frame_gates

GATE_PREFIX = "gate:"


def model_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio, visual) as the model sees them: the cached features, standardised per subject when the
    batch carries statistics (``train.feature_norm=subject``). Done here, on the batch's device, so the
    loader ships the cache's float16 untouched."""
    out = []
    for kind in ("audio", "visual"):
        x = batch[kind]
        mean = batch.get(f"{kind}_mean")
        if mean is not None:
            x = (x.float() - mean.unsqueeze(1)) / batch[f"{kind}_scale"].unsqueeze(1)
        out.append(x)
    return out[0], out[1]


def forward_batch(model: torch.nn.Module, batch: dict):
    """The model's output for a collated batch (inputs already on the model's device)."""
    audio, visual = model_inputs(batch)
    return model(audio, visual, batch["pad"], face=batch["face"])


def stitch_batch(stitcher: Stitcher, batch: dict, out, with_gates: bool = True) -> None:
    """Add one batch of window outputs (predictions, per-frame gates unless ``with_gates`` is off,
    gold, masks) to ``stitcher``."""
    pred = out.pred.detach().float().cpu().numpy()
    b, length = pred.shape[:2]
    gates = frame_gates(getattr(out, "gates", None) or {}, b, length) if with_gates else {}
    gold = batch["gold"].cpu().numpy()
    mask = batch["mask"].cpu().numpy()
    starts = batch["start"].tolist()
    counts = batch["n_frames"].tolist()
    keep = batch["keep"].tolist() if "keep" in batch else [True] * b
    for j, subject in enumerate(batch["subject"]):
        if not keep[j]:  # a DDP filler window, scored on its own rank
            continue
        averaged = {"pred": pred[j]}
        averaged.update({GATE_PREFIX + k: g[j] for k, g in gates.items()})
        stitcher.add(subject, starts[j], counts[j], averaged, {"gold": gold[j], "mask": mask[j]})


def gate_means(out, pad: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Sum and count of every gate component over real frames: ``{name: (sum[...], count)}``, the sum
    keeping the gate's trailing shape (e.g. [T, 2] for per-iteration gates)."""
    res = {}
    gates = getattr(out, "gates", None) or {}
    b, length = pad.shape
    for name, g in gates.items():
        if g is None:
            continue
        g = g.detach().float()
        if g.ndim >= 2 and g.shape[0] == b and g.shape[1] == length:
            w = pad.to(g.dtype).reshape(b, length, *([1] * (g.ndim - 2)))
            res[name] = ((g * w).sum(dim=(0, 1)), pad.sum().to(g.dtype))
        else:
            res[name] = (g.sum(dim=0) if g.ndim else g, torch.tensor(float(g.shape[0] if g.ndim else 1)))
    return res


@torch.no_grad()
def predict_windows(model: torch.nn.Module, subjects: Sequence[SubjectData], window: int, hop: int,
                    batch_size: int, mask_missing_face: bool = False, device: torch.device | str | None = None,
                    num_workers: int = 0, pad_to: int = 0) -> Stitcher:
    """Stitched outputs of ``model`` (put in eval mode) over whole ``subjects``: ``window <= 0`` runs
    each subject in one piece, otherwise overlapping windows are averaged frame by frame. ``pad_to``:
    batches are padded to at least this many frames (and to the model's ``min_length``: paper mode's fixed
    window length)."""
    from abaw.training.datamodule import WindowDataset, collate_windows, make_windows

    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    # The model's own floor too (paper mode): a caller that forgets it would fail, or pad differently.
    pad_to = max(pad_to, getattr(model, "min_length", 0))
    ds = WindowDataset(subjects, make_windows(subjects, window, hop), mask_missing_face, pad_to)
    loader = DataLoader(ds, batch_size=batch_size if window > 0 else 1, shuffle=False,
                        collate_fn=collate_windows, num_workers=num_workers)
    stitcher = Stitcher()
    try:
        for batch in loader:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            stitch_batch(stitcher, batch, forward_batch(model, batch))
    finally:
        model.train(was_training)
    return stitcher


def pooled(stitcher: Stitcher, subjects: Sequence[str], allow_gaps: bool = False):
    """Concatenated (pred[N,2], gold[N,2], mask[N]) over subjects; uncovered frames are masked out."""
    preds, golds, masks = [], [], []
    for s in subjects:
        preds.append(stitcher.mean(s, "pred", allow_gaps=allow_gaps))
        golds.append(stitcher.fixed(s, "gold"))
        masks.append(stitcher.fixed(s, "mask") & stitcher.covered(s))
    if not preds:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, bool)
    return np.concatenate(preds), np.concatenate(golds), np.concatenate(masks)
