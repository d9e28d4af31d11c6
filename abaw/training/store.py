"""Per-subject access to the cached features and labels, read one window at a time.

Features stay on disk: each window is read with ``pread`` from the ``.npy`` file behind the cache's
memmap. Slicing the memmap itself would be as lazy, but every page it touches stays mapped into the
process and counts as resident memory, so over an epoch RSS would climb to the size of the whole cache.
Labels and masks (a few bytes per frame) are held in memory.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from abaw.errors import AbawError


class MissingFeaturesError(AbawError, FileNotFoundError):
    """A subject the run needs has no cached features (the features stage has not run for it)."""


class StaleCacheError(AbawError, ValueError):
    """Cached features, labels and the index disagree on a subject's frame axis."""


class Cache(Protocol):
    """What training needs of ``abaw.features.cache.FeatureCache``."""

    def load(self, subject: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]: ...


class RowReader:
    """Reads rows ``[start, stop)`` of a 2-D feature array in its own dtype (float16 in the cache: the
    model casts on its device, so the loader moves half the bytes), without keeping pages mapped."""

    def __init__(self, array: np.ndarray, where: str):
        if array.ndim != 2:
            raise ValueError(f"{where}: features must be 2-D [frames, dim], got shape {array.shape}")
        self.shape = array.shape
        self.dtype = array.dtype
        self.where = where
        self._path: str | None = None
        self._offset = 0
        self._array: np.ndarray | None = array
        # A top-level .npy memmap (not a view) is contiguous rows at a fixed offset: read the file.
        if (isinstance(array, np.memmap) and getattr(array, "filename", None)
                and array.flags.c_contiguous and isinstance(array.base, mmap.mmap)):
            self._path = str(array.filename)
            self._offset = int(array.offset)
            self._array = None

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` (clipped to the array), into ``out`` (C-contiguous, this dtype) when
        given, which saves the copy a batch would otherwise make."""
        start, stop = max(0, start), min(stop, self.shape[0])
        n = max(0, stop - start)
        if out is None:
            out = np.empty((n, self.shape[1]), dtype=self.dtype)
        elif out.shape != (n, self.shape[1]) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"{self.where}: output buffer {out.shape} {out.dtype} does not fit "
                             f"{n} rows of {self.shape[1]} {self.dtype}")
        if n == 0:
            return out
        if self._array is not None:
            out[...] = self._array[start:stop]
            return out
        row = self.shape[1] * self.dtype.itemsize
        # Opened per read: fork-safe for DataLoader workers and no fd per subject held open (a release
        # has ~600 subjects x 2 caches, above the usual 1024-fd limit).
        fd = os.open(self._path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [memoryview(out).cast("B")], self._offset + start * row)
        finally:
            os.close(fd)
        if got != out.nbytes:
            raise OSError(f"{self.where}: short read ({got} of {out.nbytes} bytes at row {start}); "
                          "is the feature file truncated?")
        return out

    def moments(self, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and standard deviation over all rows (float64 sums, read in chunks)."""
        n, d = self.shape
        s1, s2 = np.zeros(d), np.zeros(d)
        for a in range(0, n, chunk):
            x = self.read(a, min(n, a + chunk)).astype(np.float64)
            s1 += x.sum(0)
            s2 += np.square(x).sum(0)
        mean = s1 / max(n, 1)
        return mean, np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0.0))

    def read_index(self, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at a non-decreasing index array (the audio shift map), read as one contiguous span."""
        if len(index) == 0:
            return np.empty((0, self.shape[1]), dtype=self.dtype) if out is None else out
        lo, hi = int(index[0]), int(index[-1]) + 1
        rows = self.read(lo, hi)[index - lo]
        if out is None:
            return rows
        out[...] = rows
        return out


@dataclass(eq=False)  # holds arrays: identity is the only meaningful equality
class SubjectData:
    name: str
    n_frames: int
    audio: RowReader
    visual: RowReader
    face: np.ndarray  # bool[N]: a face crop was found (the visual cache's mask)
    gold: np.ndarray | None = None  # float32[N, 2] (valence, arousal), 0 where not annotated; None: no labels
    valid: np.ndarray | None = None  # bool[N]: both labels annotated (not -5)
    audio_index: np.ndarray | None = None  # int64[N]: audio row read for each frame (time shift)
    # Per-subject standardisation (train.feature_norm): {"audio"|"visual": (mean[D], scale[D])} for the
    # standardised modalities only.
    norm: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def standardise(self, kinds: tuple[str, ...] = ("audio", "visual")) -> None:
        """Standardise each feature dimension over this subject's frames (z-score per video).

        The backbone features of one face carry its identity (skin tone, lighting) as a large constant
        offset; with a few dozen training subjects a network learns those offsets instead of the
        expression. Per-video statistics use only the video's own features (no labels), so the same is
        done to validation and test subjects. Scales are floored at a tenth of the median scale, so a
        nearly constant dimension is not blown up into noise. A modality not in ``kinds`` has no entry
        and reaches the model as cached (no per-batch identity transform on the device)."""
        self.norm = {}
        for kind, reader in (("audio", self.audio), ("visual", self.visual)):
            if kind not in kinds:
                continue
            mean, std = reader.moments()
            floor = 0.1 * float(np.median(std)) if std.size else 0.0
            scale = np.maximum(std, max(floor, 1e-6))
            self.norm[kind] = (mean.astype(np.float32), scale.astype(np.float32))

    def read(self, start: int, stop: int, mask_missing_face: bool = False,
             audio_out: np.ndarray | None = None, visual_out: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Frames ``[start, stop)``: raw features (into the given buffers, if any), gold, the
        loss/metric mask (annotated frames, optionally only those with a face) and the face-crop flag. Standardisation
        (``norm``) is applied on the model's device by ``abaw.training.inference.model_inputs``: done
        here it would cost the loader a float32 round trip per value."""
        stop = min(stop, self.n_frames)
        visual = self.visual.read(start, stop, visual_out)
        if self.audio_index is None:
            audio = self.audio.read(start, stop, audio_out)
        else:
            audio = self.audio.read_index(self.audio_index[start:stop], audio_out)
        if self.gold is None:
            n = stop - start
            gold, mask = np.zeros((n, 2), dtype=np.float32), np.zeros(n, dtype=bool)
        else:
            gold, mask = self.gold[start:stop], self.valid[start:stop].copy()
        face = self.face[start:stop]
        if mask_missing_face:
            mask &= face
        return {"audio": audio, "visual": visual, "gold": gold, "mask": mask, "face": face}


def shift_index(frame_times: np.ndarray, shift_s: float) -> np.ndarray:
    """For every frame, the frame whose timestamp is nearest to ``t - shift_s`` (clipped to the
    subject). Timestamps, not frame counts, because the frame rate varies between (and within)
    videos: half a second is 15 frames at 30 fps but 3 at 6 fps."""
    t = np.asarray(frame_times, dtype=np.float64)
    if len(t) < 2:
        return np.zeros(len(t), dtype=np.int64)
    target = t - shift_s
    j = np.searchsorted(t, target).clip(1, len(t) - 1)
    left_closer = (target - t[j - 1]) <= (t[j] - target)
    return np.where(left_closer, j - 1, j).astype(np.int64).clip(0, len(t) - 1)


def open_subject(subject: str, n_frames: int, audio_cache: Cache, visual_cache: Cache,
                 where_audio: str = "audio cache", where_visual: str = "visual cache") -> SubjectData:
    """Open one subject's features, checking both caches cover its frame axis."""

    def load(cache: Cache, where: str) -> tuple[RowReader, np.ndarray]:
        try:
            feats, mask = cache.load(subject, mmap=True)
        except (KeyError, FileNotFoundError) as e:
            # A missing subject is a setup problem (features not extracted), not a lookup bug.
            raise MissingFeaturesError(f"{where}: no features for subject {subject!r} "
                                    f"({e.args[0] if e.args else e}); run `abaw features`") from e
        if len(feats) != n_frames or len(mask) != n_frames:
            raise StaleCacheError(f"{where}: subject {subject!r} has {len(feats)} feature rows and "
                             f"{len(mask)} mask rows, but its frame axis has {n_frames} frames "
                             "(stale cache? re-run `abaw features`)")
        return RowReader(feats, f"{where}/{subject}"), np.array(mask, dtype=bool)

    audio, _ = load(audio_cache, where_audio)
    visual, face = load(visual_cache, where_visual)  # the visual mask marks frames with a face crop
    return SubjectData(subject, n_frames, audio, visual, face)


def attach_labels(data: SubjectData, label_file: str | Path) -> None:
    from abaw.data.annotations import read_annotations

    ann = read_annotations(label_file)
    if len(ann.values) != data.n_frames:
        raise StaleCacheError(f"{label_file}: {len(ann.values)} label rows, but subject {data.name!r} has "
                         f"{data.n_frames} frames on its axis (index out of date? re-run `abaw data`)")
    data.valid = np.asarray(ann.valid, dtype=bool)
    # The -5 sentinel is replaced by 0 once, here: masked or not, no loss term ever sees it.
    data.gold = np.where(data.valid[:, None], ann.values, 0.0).astype(np.float32)


def shuffle_label_tracks(subjects: list[SubjectData], seed: int) -> dict[str, str]:
    """Sanity control: give every subject another subject's label track (a random derangement), cut
    or padded with unannotated frames to its own length. A model that still scores on validation
    after this has learnt something other than the labels. Returns {subject: source of its labels}."""
    names = sorted(s.name for s in subjects)
    if len(names) < 2:
        raise ValueError("shuffle_labels needs at least two training subjects")
    by_name = {s.name: s for s in subjects}
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    # Taking the next subject's track in a random cycle leaves no subject with its own labels.
    source = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    tracks = {n: (by_name[n].gold, by_name[n].valid) for n in names}
    for name, src in source.items():
        s = by_name[name]
        gold, valid = tracks[src]
        g = np.zeros((s.n_frames, 2), dtype=np.float32)
        v = np.zeros(s.n_frames, dtype=bool)
        m = min(s.n_frames, len(gold))
        g[:m], v[:m] = gold[:m], valid[:m]
        s.gold, s.valid = g, v
    return dict(sorted(source.items()))
