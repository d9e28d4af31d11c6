"""Face crops of one split as labelled frames: which frames, how they are sampled, how they are augmented.

Only annotated frames that have a crop file enter a table (the -5 rows and faceless frames never reach
the loss). Training frames come from the split's training subjects only, every ``stride``-th such frame
(neighbours are near duplicates); each epoch draws equally many of them from every subject, so a long
video does not outweigh a short one. JPEG decoding and augmentation run in DataLoader workers, which
ship uint8 pixels; the module normalises them on its device (a quarter of the bytes through the worker
queues, pinned memory and the host-to-device copy, and no float work in the workers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from abaw.data.release import crop_name
from abaw.features.visual import _CV2_INTERP, decode_crop


@dataclass
class FrameTable:
    """Labelled frames of several subjects: position ``g`` is frame ``frames[g]`` of ``names[subjects[g]]``."""

    names: list[str]
    dirs: list[str]
    subjects: np.ndarray  # int32 [M]
    frames: np.ndarray  # int64 [M], 0-based on the subject's frame axis
    labels: np.ndarray  # float32 [M, 2] (valence, arousal), never the -5 sentinel

    def __len__(self) -> int:
        return len(self.frames)

    def ids(self, positions: Sequence[int] | np.ndarray | None = None) -> list[tuple[str, int]]:
        """(subject, frame) of the given positions (all when None)."""
        pos = np.arange(len(self)) if positions is None else np.asarray(positions, dtype=np.int64)
        return [(self.names[self.subjects[g]], int(self.frames[g])) for g in pos]


def frame_table(rows: dict[str, dict], names: Sequence[str], root: Path, stride: int) -> FrameTable:
    """Annotated frames with a crop of ``names`` (index rows by subject), every ``stride``-th of them."""
    from abaw.data.annotations import read_annotations
    from abaw.features.extract import crop_presence

    kept_names, dirs, subs, frames, labels = [], [], [], [], []
    for name in names:
        r = rows[name]
        n = int(r["n_frames"])
        if not r.get("label_file") or not r.get("crop_dir"):
            continue
        ann = read_annotations(_path(r["label_file"], root))
        valid = np.zeros(n, bool)
        m = min(n, len(ann.valid))
        valid[:m] = ann.valid[:m]
        crop_dir = _path(r["crop_dir"], root)
        present, _ = crop_presence(crop_dir, n)
        keep = np.flatnonzero(valid & present)[::stride]
        if not len(keep):
            continue
        subs.append(np.full(len(keep), len(kept_names), np.int32))
        kept_names.append(name)
        dirs.append(str(crop_dir))
        frames.append(keep.astype(np.int64))
        labels.append(np.asarray(ann.values[keep], np.float32))
    if not kept_names:
        return FrameTable([], [], np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    return FrameTable(kept_names, dirs, np.concatenate(subs), np.concatenate(frames), np.concatenate(labels))


def _path(value, root: Path) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


class SubjectBalancedSampler(Sampler[int]):
    """``n`` positions per epoch, equally many from every subject (the remainder to random subjects).

    A subject's positions are drawn without replacement, cycling through fresh permutations when its
    quota exceeds its frames. The order comes from ``default_rng([seed, epoch])``; Lightning calls
    ``set_epoch`` before every epoch, so a resumed run draws what the uninterrupted one would have.
    """

    def __init__(self, subjects: np.ndarray, n: int, seed: int):
        self.subjects, self.n, self.seed, self.epoch = np.asarray(subjects), int(n), int(seed), 0
        self.groups = [np.flatnonzero(self.subjects == s) for s in np.unique(self.subjects)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        k = len(self.groups)
        if not k or not self.n:
            return np.zeros(0, np.int64)
        quota = np.full(k, self.n // k)
        quota[rng.choice(k, self.n % k, replace=False)] += 1
        picks = []
        for group, q in zip(self.groups, quota, strict=True):
            reps = -(-int(q) // len(group))
            picks.append(np.concatenate([rng.permutation(group) for _ in range(reps)])[:q])
        return rng.permutation(np.concatenate(picks)).astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.n


def mean_pixel(mean) -> tuple[int, ...]:
    """The mean colour as uint8 RGB: what normalisation maps to ~0 (within half a pixel level)."""
    return tuple(int(round(255 * float(m))) for m in mean)


def build_augment(kind: str, size: tuple[int, int], mean, interpolation: str):
    """albumentations pipeline for aligned face crops: uint8 RGB in, uint8 RGB at ``size`` out.

    ``face``: horizontal flip, colour jitter, a small affine (faces are already aligned: a few degrees,
    a few percent) and random erasing (an occluding hand or hair); ``flip``: flip only; ``none``: none
    (validation). Geometry runs after the resize, so augmenting costs what the network's input costs.
    Normalisation is the module's (``FinetuneModule.pixels``), so an erased hole is the mean colour:
    what a hole filled with 0 after normalising was.
    """
    import albumentations as A

    h, w = size
    ops = [A.Resize(h, w, interpolation=_CV2_INTERP.get(interpolation, cv2.INTER_LINEAR))]
    if kind in ("face", "flip"):
        ops.append(A.HorizontalFlip(p=0.5))
    if kind == "face":
        ops += [
            A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=0.8),
            A.Affine(scale=(0.93, 1.07), translate_percent=(-0.05, 0.05), rotate=(-10, 10),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.15, 0.35),
                            hole_width_range=(0.15, 0.35), fill=mean_pixel(mean), p=0.3),
        ]
    return A.Compose(ops)


class FaceFrames(Dataset):
    """Item ``g``: (image uint8 [3, H, W], label float32 [2], position ``g``) of a ``FrameTable``.

    A crop that cannot be decoded gives the mean colour (``fill``) and a NaN label, which the loss masks
    out; the count of such frames is reported by the module.
    """

    def __init__(self, table: FrameTable, transform, size: tuple[int, int], fill: tuple[int, ...]):
        self.table, self.transform, self.size = table, transform, size
        self.blank = torch.tensor(fill, dtype=torch.uint8)[:, None, None].expand(3, *size).contiguous()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, g: int):
        t = self.table
        path = f"{t.dirs[t.subjects[g]]}/{crop_name(int(t.frames[g]))}"
        label = torch.from_numpy(t.labels[g])
        try:
            rgb = decode_crop(path)
        except Exception:  # noqa: BLE001 - an untrusted file: this frame drops out, the run goes on
            return self.blank.clone(), torch.full((2,), float("nan")), g
        x = self.transform(image=rgb)["image"]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), label, g


def _seed_worker(_: int) -> None:
    # Forked workers inherit one albumentations generator; give each its own (torch seeds them apart).
    # One OpenCV thread per worker: the workers are the parallelism, and the model needs the cores.
    cv2.setNumThreads(1)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


class FinetuneData(pl.LightningDataModule):
    """Training frames of the split's training subjects, validation frames of its validation subjects."""

    def __init__(self, train: FrameTable, val: FrameTable, ft, spec_input, mean, std, interpolation,
                 samples_per_epoch: int, seed: int):
        super().__init__()
        self.train_table, self.val_table = train, val
        self.ft = ft
        self.size = tuple(spec_input)
        # The loaders give uint8 pixels: the module normalises them with these (FinetuneModule(mean, std)).
        self.mean, self.std = tuple(mean), tuple(std)
        self.fill = mean_pixel(mean)
        self.train_tf = build_augment(ft.augment, self.size, mean, interpolation)
        self.val_tf = build_augment("none", self.size, mean, interpolation)
        self.train_tf.set_random_seed(seed)
        self.sampler = SubjectBalancedSampler(train.subjects, samples_per_epoch or len(train), seed)

    def _loader(self, ds: Dataset, sampler=None) -> DataLoader:
        w = self.ft.num_workers
        return DataLoader(
            ds, batch_size=self.ft.batch_size, sampler=sampler, shuffle=False, num_workers=w,
            worker_init_fn=_seed_worker, persistent_workers=w > 0, prefetch_factor=4 if w else None,
            pin_memory=torch.cuda.is_available(), drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(FaceFrames(self.train_table, self.train_tf, self.size, self.fill), self.sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(FaceFrames(self.val_table, self.val_tf, self.size, self.fill))
