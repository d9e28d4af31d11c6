"""Windows over the feature cache for Lightning: shuffled training windows, ordered evaluation windows.

Training: windows of ``train.window`` frames every ``train.hop`` frames, the last one end-aligned, in a
new seeded order each epoch (the order depends only on (seed, epoch), so a resumed run sees the same
batches an uninterrupted one would). Evaluation: windows of ``train.eval_window`` (or whole subjects)
whose outputs are stitched back by ``abaw.training.windows.Stitcher``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from abaw.errors import AbawError
from abaw.training.config import standardised_kinds
from abaw.training.folds import Split, make_split
from abaw.training.store import (
    SubjectData,
    attach_labels,
    open_subject,
    shift_index,
    shuffle_label_tracks,
)
from abaw.training.windows import window_starts

log = logging.getLogger(__name__)

# Per-window standardisation statistics carried in a batch ([B, D] each), applied on the device.
NORM_KEYS = ("audio_mean", "audio_scale", "visual_mean", "visual_scale")


def make_windows(subjects: Sequence[SubjectData], window: int, hop: int) -> np.ndarray:
    """int64[M, 3] rows (subject position, start, stop); window <= 0 means one window per subject."""
    rows = []
    for i, s in enumerate(subjects):
        if window <= 0:
            rows.append((i, 0, s.n_frames))
            continue
        for start in window_starts(s.n_frames, window, hop):
            rows.append((i, int(start), min(int(start) + window, s.n_frames)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


class WindowDataset(Dataset):
    """Windows ``(subject, start, stop)`` of opened subjects. The DataLoader fetches whole batches
    through ``__getitems__``, which reads every window straight into the batch arrays."""

    def __init__(self, subjects: Sequence[SubjectData], windows: np.ndarray, mask_missing_face: bool = False,
                 pad_to: int = 0):
        self.subjects = list(subjects)
        self.windows = windows
        self.mask_missing_face = mask_missing_face
        # Every batch is at least this long (model.paper_mode welds the window length into the model).
        self.pad_to = pad_to

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        k, start, stop = (int(v) for v in self.windows[i])
        s = self.subjects[k]
        item = s.read(start, stop, self.mask_missing_face)
        item.update(subject=s.name, start=start, n_frames=s.n_frames)
        for kind, (mean, scale) in (s.norm or {}).items():
            item[f"{kind}_mean"], item[f"{kind}_scale"] = mean, scale
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict:
        # Indices >= len(self) are ShardSampler's filler: window i - len(self) again, marked keep=False
        # so it evens out the ranks' batch counts without being scored twice.
        idx = np.asarray(indices, dtype=np.int64)
        keep = idx < len(self.windows)
        rows = self.windows[np.where(keep, idx, idx - len(self.windows))]
        lengths = rows[:, 2] - rows[:, 1]
        b, length = len(rows), max(int(lengths.max()), self.pad_to)
        first = self.subjects[int(rows[0, 0])]
        audio = np.zeros((b, length, first.audio.shape[1]), dtype=first.audio.dtype)
        visual = np.zeros((b, length, first.visual.shape[1]), dtype=first.visual.dtype)
        gold = np.zeros((b, length, 2), dtype=np.float32)
        mask = np.zeros((b, length), dtype=bool)
        face = np.zeros((b, length), dtype=bool)
        pad = np.arange(length)[None, :] < lengths[:, None]
        names = []
        for j, (k, start, stop) in enumerate(rows.tolist()):
            s = self.subjects[k]
            n = stop - start
            item = s.read(start, stop, self.mask_missing_face, audio[j, :n], visual[j, :n])
            gold[j, :n], mask[j, :n], face[j, :n] = item["gold"], item["mask"], item["face"]
            names.append(s.name)
        batch = {
            "audio": torch.from_numpy(audio), "visual": torch.from_numpy(visual),
            "gold": torch.from_numpy(gold), "mask": torch.from_numpy(mask), "pad": torch.from_numpy(pad),
            "face": torch.from_numpy(face), "subject": names,
            "keep": torch.from_numpy(keep),
            "start": torch.from_numpy(rows[:, 1].copy()),
            "n_frames": torch.tensor([self.subjects[k].n_frames for k in rows[:, 0].tolist()], dtype=torch.long),
        }
        for kind in first.norm or {}:  # every subject of a source is standardised alike
            for i, key in enumerate(("mean", "scale")):
                batch[f"{kind}_{key}"] = torch.from_numpy(
                    np.stack([self.subjects[k].norm[kind][i] for k in rows[:, 0].tolist()]))
        return batch


def collate_windows(items: list[dict] | dict) -> dict:
    """Stack windows, padding short ones (subjects shorter than a window, whole-subject evaluation) to
    the longest in the batch. ``pad`` marks real frames for the model; ``mask`` marks frames that count
    in the loss and the metric (real, annotated, and with a face when asked). A batch that
    ``WindowDataset.__getitems__`` already assembled passes through."""
    if isinstance(items, dict):
        return items
    length = max(len(it["audio"]) for it in items)
    b = len(items)

    def stack(key: str) -> torch.Tensor:
        first = items[0][key]
        out = np.zeros((b, length, *first.shape[1:]), dtype=first.dtype)
        for j, it in enumerate(items):
            out[j, : len(it[key])] = it[key]
        return torch.from_numpy(out)

    pad = np.zeros((b, length), dtype=bool)
    for j, it in enumerate(items):
        pad[j, : len(it["audio"])] = True
    batch = {
        "audio": stack("audio"),
        "visual": stack("visual"),
        "gold": stack("gold"),
        "mask": stack("mask"),
        "face": stack("face"),
        "pad": torch.from_numpy(pad),
        "subject": [it["subject"] for it in items],
        "start": torch.tensor([it["start"] for it in items], dtype=torch.long),
        "n_frames": torch.tensor([it["n_frames"] for it in items], dtype=torch.long),
    }
    for key in NORM_KEYS:
        if key in items[0]:
            batch[key] = torch.from_numpy(np.stack([it[key] for it in items]))
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from ``default_rng([seed, epoch])``, sharded over ``world`` ranks.

    Lightning calls ``set_epoch`` before every epoch. Each rank gets every ``world``-th index of the same
    permutation (padded by wrapping, as ``DistributedSampler`` does), so ranks never overlap.

    ``generator`` (the DataLoader's) is reseeded from (seed, epoch, rank) at every epoch: the loader
    draws its workers' base seed from it when the epoch's iterator is made, so worker seeds depend only
    on the epoch too. Built with the trainer's current epoch, a resumed run gets the resumed epoch's
    seeds even though Lightning makes that epoch's iterator before calling ``set_epoch``.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 epoch: int = 0, generator: torch.Generator | None = None):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.generator = generator
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.generator is not None:
            from abaw.training.callbacks import stream_seed

            self.generator.manual_seed(stream_seed(self.seed, epoch, self.rank))

    def indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = -(-self.n // self.world) * self.world
        if total > self.n:
            order = np.concatenate([order, order[: total - self.n]])
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return -(-self.n // self.world)


class ShardSampler(Sampler[int]):
    """Evaluation windows of one DDP rank, in order: every ``world``-th window from ``rank``. Ranks that
    come up one short get filler indices (``n + i``: window i again, which ``WindowDataset`` marks
    ``keep=False``), so every rank runs the same number of batches yet every window is scored once."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        mine = list(range(self.rank, self.n, self.world))
        per_rank = -(-self.n // self.world)
        filler = [self.n + i for i in range(per_rank - len(mine))]
        return iter(mine + filler)

    def __len__(self) -> int:
        return -(-self.n // self.world)


class ScaleOutError(AbawError):
    """A setting that does not fit the number of DDP processes."""


class SubjectSource:
    """Opens subjects of a release for training or prediction: index rows, both feature caches and the
    labels. The index table and caches are resolved from the config unless given (tests pass fakes)."""

    def __init__(self, cfg, table=None, audio_cache=None, visual_cache=None, audio_shift_s: float | None = None):
        if table is None:
            from abaw.data.index import load_index

            table = load_index(cfg).table
        if audio_cache is None or visual_cache is None:
            from abaw.features.cache import FeatureCache
            from abaw.features.extract import feature_dir

            audio_cache = audio_cache or FeatureCache(feature_dir(cfg, "audio"))
            visual_cache = visual_cache or FeatureCache(feature_dir(cfg, "visual"))
        self.table = table
        self.audio_cache, self.visual_cache = audio_cache, visual_cache
        self.audio_shift_s = cfg.train.audio_shift_s if audio_shift_s is None else audio_shift_s
        self.standardised = standardised_kinds(cfg)
        self.rows = {r["subject"]: r for r in table.iter_rows(named=True)}

    def feature_dirs(self) -> dict[str, str]:
        return {"audio": _dir_of(self.audio_cache), "visual": _dir_of(self.visual_cache)}

    def subjects_of_split(self, split: str) -> list[str]:
        """Subjects of an index split (train | val | test), in index order (the release list for test)."""
        return [r["subject"] for r in self.table.iter_rows(named=True) if r["split"] == split]

    def open(self, names: Sequence[str], labels: bool = True) -> list[SubjectData]:
        """Open subjects (features always; labels when asked and the index has a label file)."""
        out = []
        dims: tuple[int, int] | None = None
        where_a = f"audio cache {_dir_of(self.audio_cache) or ''}".strip()
        where_v = f"visual cache {_dir_of(self.visual_cache) or ''}".strip()
        for name in names:
            if name not in self.rows:
                raise KeyError(f"subject {name!r} is not in the index")
            r = self.rows[name]
            s = open_subject(name, int(r["n_frames"]), self.audio_cache, self.visual_cache, where_a, where_v)
            d = (s.audio.shape[1], s.visual.shape[1])
            if dims is not None and d != dims:
                raise ValueError(f"subject {name!r} has feature dims {d} (audio, visual), others {dims}: "
                                 "the caches mix backbones")
            dims = d
            if labels and r.get("label_file"):
                attach_labels(s, r["label_file"])
            times = r.get("frame_times")
            # A test subject without a raw video has no timestamps and all-zero audio: nothing to shift.
            if self.audio_shift_s and (labels or times is not None):
                if times is None or len(times) != s.n_frames:
                    raise ValueError(f"train.audio_shift_s needs frame_times for {name!r} in the index "
                                     f"(got {None if times is None else len(times)} for {s.n_frames} frames)")
                s.audio_index = shift_index(np.asarray(times), self.audio_shift_s)
            if self.standardised:
                s.standardise(self.standardised)
            out.append(s)
        return out


class FusionDataModule(pl.LightningDataModule):
    """Train/validation windows of one split (``split`` or the one the config describes)."""

    def __init__(self, cfg, split: Split | None = None, source: SubjectSource | None = None):
        super().__init__()
        self.cfg = cfg
        tc = cfg.train
        self.source = source or SubjectSource(cfg)
        self.split = split or make_split(self.source.table, tc.folds, tc.fold, tc.fold_seed)
        self.train_subjects = self.source.open(self.split.train, labels=True)
        self.val_subjects = self.source.open(self.split.val, labels=True)
        for role, subjects in (("training", self.train_subjects), ("validation", self.val_subjects)):
            for s in subjects:
                if s.gold is None:
                    raise ValueError(f"{role} subject {s.name!r} has no label file in the index")
        self.label_sources: dict[str, str] = {}
        if tc.shuffle_labels:
            self.label_sources = shuffle_label_tracks(self.train_subjects, cfg.seed)
            log.warning("train.shuffle_labels: training on permuted label tracks (sanity control)")
        self.in_audio = self.train_subjects[0].audio.shape[1]
        self.in_visual = self.train_subjects[0].visual.shape[1]
        if (self.val_subjects[0].audio.shape[1], self.val_subjects[0].visual.shape[1]) != (
                self.in_audio, self.in_visual):
            raise ValueError("validation and training subjects have different feature dims")
        self.train_windows = make_windows(self.train_subjects, tc.window, tc.hop)
        self.val_windows = make_windows(self.val_subjects, tc.eval_window_size, tc.eval_hop_size)

    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch on each rank (train.limit_train_batches applied as Lightning does).

        ``FusionModule`` sizes its schedule with this instead of ``trainer.estimated_stepping_batches``,
        which builds the training loader (and, with workers, starts fetching) before a checkpoint's loop
        state is restored, so a resumed epoch would run on the first epoch's window order."""
        _, world = self._world()
        per_rank = math.ceil(len(self.train_windows) / world)
        batches = math.ceil(per_rank / self.rank_batch_size())
        limit = self.cfg.train.limit_train_batches
        if isinstance(limit, float) and limit <= 1.0:
            return max(1, int(batches * limit))
        return max(1, min(batches, int(limit)))

    def _next_epoch(self) -> int:
        """The epoch the trainer will run next, as it will pass it to ``set_epoch`` (the processed-epoch
        count: a run resumed from a checkpoint saved at an epoch's end has processed that epoch but not
        yet completed it). Loader workers fetch indices as soon as an iterator exists, and Lightning makes
        the resumed epoch's iterator before it calls ``set_epoch``."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        try:
            return int(trainer.fit_loop.epoch_progress.current.processed)
        except AttributeError:  # pragma: no cover - another Lightning version
            return int(trainer.current_epoch)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    @property
    def pad_to(self) -> int:
        """Batch length floor: ``model.paper_length`` in paper mode (its key layers are Linear(L, L))."""
        model = self.cfg.model
        return model.paper_length if model.paper_mode else 0

    def train_dataloader(self) -> DataLoader:
        rank, world = self._world()
        generator = torch.Generator()
        sampler = EpochShuffleSampler(len(self.train_windows), self.cfg.seed, True, rank, world,
                                      epoch=self._next_epoch(), generator=generator)
        ds = WindowDataset(self.train_subjects, self.train_windows, self.cfg.train.mask_missing_face, self.pad_to)
        return self._loader(ds, self.rank_batch_size(), sampler, generator)

    def rank_batch_size(self) -> int:
        """Training windows per step on each rank: ``train.batch_size`` is the global batch, split over
        the DDP ranks, so scaling out keeps the optimisation recipe (windows and steps per epoch)."""
        _, world = self._world()
        bs = self.cfg.train.batch_size
        if bs % world:
            raise ScaleOutError(f"train.batch_size={bs} is the global batch and must divide evenly over "
                                f"{world} processes (train.devices); use a multiple of {world}")
        return bs // world

    def val_dataloader(self) -> DataLoader:
        # Each rank scores its share of the windows; FusionModule gathers the stitched frames from every
        # rank before scoring, so the metric pools all frames once.
        rank, world = self._world()
        sampler = ShardSampler(len(self.val_windows), rank, world) if world > 1 else None
        ds = WindowDataset(self.val_subjects, self.val_windows, self.cfg.train.mask_missing_face, self.pad_to)
        return self._loader(ds, self.eval_batch_size, sampler)

    @property
    def eval_batch_size(self) -> int:
        return self.cfg.train.batch_size if self.cfg.train.eval_window_size > 0 else 1

    def _loader(self, ds: Dataset, batch_size: int, sampler, generator: torch.Generator | None = None) -> DataLoader:
        tc = self.cfg.train
        workers = tc.num_workers
        # Persistent workers keep their RNG state from epoch to epoch, which a resumed run cannot
        # reproduce: train.deterministic starts them afresh (seeded per epoch) instead.
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False,
                          collate_fn=collate_windows, num_workers=workers, generator=generator,
                          persistent_workers=workers > 0 and not tc.deterministic,
                          pin_memory=torch.cuda.is_available())


def _dir_of(cache) -> str:
    for attr in ("dir", "root", "path", "directory"):
        d = getattr(cache, attr, None)
        if d:
            return str(d)
    return ""
