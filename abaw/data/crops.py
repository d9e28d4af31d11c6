"""A subject's crop folder: which frames have a face crop (``cropped_aligned/<subject>/%05d.jpg``), the
files that do not follow the naming, and (for the feature cache) the identity of the listing."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abaw.data.release import crop_name

_CROP = re.compile(r"^(\d+)\.jpg$")


@dataclass
class CropListing:
    frames: np.ndarray  # sorted 0-based frame indices that have a crop file named crop_name(frame)
    odd: list[str]
    size: tuple[int, int] | None  # (width, height) of the first crop
    misnamed: int = 0  # <digits>.jpg files not spelled %05d.jpg (e.g. 1.jpg): extraction never reads them
    stats: np.ndarray | None = None  # int64 [len(frames), 2]: (size, mtime_ns) of each crop, when asked

    def identity(self, n_frames: int) -> dict:
        """What the features of a frame axis of ``n_frames`` are made from: the crops inside the axis with
        their sizes and mtimes (a digest of the listing; needs ``list_crops(..., stat=True)``)."""
        if self.stats is None:
            raise ValueError("crop listing made without stat=True has no identity")
        inside = self.frames < n_frames
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.frames[inside], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.stats[inside], dtype="<i8").tobytes())
        return {"crops": int(inside.sum()), "crops_digest": h.hexdigest()[:24]}


def list_crops(folder: Path, stat: bool = False, header: bool = True) -> CropListing:
    """One listing of a subject's crop folder: ``00001.jpg`` is frame 0.

    Only the official spelling ``crop_name(i)`` counts as frame i's crop, since that is the only name
    feature extraction reads; counting ``1.jpg`` too would let the index promise a face the features lack.
    Other names are reported as odd files. ``stat``: also record each crop's size and mtime (one stat
    call per file, no read), for ``CropListing.identity``; ``header``: read the first crop's size.
    """
    frames, stats, misnamed, others = [], [], [], []
    with os.scandir(folder) as it:
        for entry in it:
            m = _CROP.match(entry.name)
            if m and int(m.group(1)) > 0 and crop_name(int(m.group(1)) - 1) == entry.name:
                frames.append(int(m.group(1)) - 1)
                if stat:
                    st = entry.stat()
                    stats.append((st.st_size, st.st_mtime_ns))
            elif m:
                misnamed.append(entry.name)
            elif not entry.name.startswith("."):
                others.append(entry.name)
    odd = []
    if misnamed:
        odd.append(
            f"{len(misnamed)} crop file(s) not named %05d.jpg (1-based), so never read: {_shown(misnamed)}"
        )
    if others:
        odd.append(f"{len(others)} crop file(s) not named <frame>.jpg (1-based): {_shown(others)}")
    order = np.argsort(np.asarray(frames, dtype=np.int64), kind="stable")
    arr = np.asarray(frames, dtype=np.int64)[order]
    stats_arr = np.asarray(stats, dtype=np.int64).reshape(-1, 2)[order] if stat else None
    size = None
    if len(arr) and header:
        first = crop_name(int(arr[0]))
        try:
            from PIL import Image

            with Image.open(folder / first) as im:  # reads the header only
                size = tuple(im.size)
        except Exception as e:  # a broken crop is worth a note, not a failed index
            odd.append(f"crop {first} unreadable: {e}")
    return CropListing(arr, odd, size, len(misnamed), stats_arr)


def _shown(names: list[str], k: int = 3) -> str:
    return ", ".join(sorted(names)[:k]) + (", ..." if len(names) > k else "")
