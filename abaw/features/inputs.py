"""The identity of what a cached subject is made from, cheap enough to check on every run.

Visual: the crops inside the frame axis (names, sizes, mtimes: one ``stat`` per file from the directory
scan, never a JPEG read) and the axis length. Audio: the raw video's size and mtime, and the frame
timestamps the windows are centred on (they come from the index). A subject whose identity differs from
the one recorded beside its features is extracted again; so a crop rewritten after extraction, a video
replaced by a good one, or a changed frame axis is never served from the old entry.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np


def visual_inputs(crop_dir: Path | None, n_frames: int) -> tuple[dict[str, Any], np.ndarray, int]:
    """(identity, bool [n_frames]: which frames have a crop file, count of ``<digits>.jpg`` names not in
    the ``%05d.jpg`` form, which are never read). Crops beyond the frame axis are ignored.

    Uses the index's own listing (``abaw.data.crops.list_crops``), so that the frames the index counts as
    having a face are exactly the frames read here."""
    from abaw.data.crops import list_crops

    present = np.zeros(n_frames, bool)
    if crop_dir is None or not crop_dir.is_dir():
        return {"n_frames": int(n_frames), "crops": 0, "crops_digest": ""}, present, 0
    listing = list_crops(crop_dir, stat=True, header=False)
    present[listing.frames[listing.frames < n_frames]] = True
    return {"n_frames": int(n_frames), **listing.identity(n_frames)}, present, listing.misnamed


def audio_inputs(video_path: Path | None, frame_times: np.ndarray | None, n_frames: int) -> dict[str, Any]:
    """Identity of a subject's audio features: the raw video file (size, mtime) and its frame clock."""
    video = None
    if video_path is not None:
        try:
            st = os.stat(video_path)
            video = [int(st.st_size), int(st.st_mtime_ns)]
        except OSError:
            video = None
    times = ""
    if frame_times is not None:
        times = hashlib.sha256(np.ascontiguousarray(frame_times, dtype="<f8").tobytes()).hexdigest()[:24]
    return {"n_frames": int(n_frames), "video": video, "frame_times": times}
