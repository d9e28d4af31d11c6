"""One identity through the clip: choose a face, follow it from detection to detection, and fill the
frames between detections (``--every K``) by interpolating its keypoints.

The face is chosen on a reference detection frame: the first one, within the clip's first detections,
that shows the most faces. By default it is the largest and most central face; ``face`` picks one by its
place from the left (0 = leftmost, or "left" / "right" like the release's ``_left`` / ``_right``).
From there it is followed forwards and backwards: on each detection frame the face overlapping the
last known box (or close to it, at a similar size) is the same person; a frame without such a face is
missing, and the last known box stays the reference, so the identity does not jump to someone else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from abaw.video.detect import Detection, _iou

REFERENCE_WINDOW = 25  # detection frames with faces among which the reference frame is chosen
MIN_IOU = 0.2
MAX_SHIFT = 0.5  # accepted centre displacement, in face sizes, when boxes overlap less than MIN_IOU


@dataclass
class Track:
    keypoints: np.ndarray  # float32 [N, 6, 2]; NaN where no face
    boxes: np.ndarray  # float32 [N, 4] detector boxes; NaN where no face
    scores: np.ndarray  # float32 [N]; 0 where no face, NaN-free
    found: np.ndarray  # bool [N]: a face (detected or interpolated)
    detected: np.ndarray  # bool [N]: detected on this very frame
    n_faces: np.ndarray  # int16 [N]: faces the detector saw (-1: frame not run through the detector)
    reference: int  # the frame the identity was chosen on
    choice: str  # how it was chosen (for the summary)


def _pick(faces: Sequence[Detection], width: int, height: int, face: int | str | None) -> tuple[int, str]:
    order = sorted(range(len(faces)), key=lambda i: float(faces[i].centre[0]))
    if face is None or face == "auto":
        half_diag = np.hypot(width, height) / 2
        centre = np.array([width / 2, height / 2])

        def rank(i):
            d = float(np.linalg.norm(faces[i].centre - centre)) / half_diag
            return faces[i].size ** 2 * (1.0 - 0.5 * d)

        best = max(range(len(faces)), key=rank)
        return best, f"largest/most central of {len(faces)}"
    if face in ("left", "right"):
        k = 0 if face == "left" else len(order) - 1
        return order[k], f"{face}most of {len(faces)}"
    k = int(face)
    if not 0 <= k < len(order):
        raise IndexError(k)
    return order[k], f"face {k} from the left of {len(faces)}"


def _match(ref: Detection, faces: Sequence[Detection]) -> Detection | None:
    if not faces:
        return None
    boxes = np.stack([f.box for f in faces])
    iou = _iou(ref.box, boxes)
    i = int(np.argmax(iou))
    if iou[i] >= MIN_IOU:
        return faces[i]
    dist = np.array([np.linalg.norm(f.centre - ref.centre) / ref.size for f in faces])
    ratio = np.array([f.size / ref.size for f in faces])
    ok = (dist <= MAX_SHIFT) & (ratio > 0.5) & (ratio < 2.0)
    if not ok.any():
        return None
    return faces[int(np.flatnonzero(ok)[np.argmin(dist[ok])])]


def follow(detections: dict[int, list[Detection]], n_frames: int, width: int, height: int,
           face: int | str | None = None) -> Track:
    """The chosen identity on every frame; ``detections`` maps detection frames to their faces."""
    keys = sorted(k for k in detections if 0 <= k < n_frames)
    kp = np.full((n_frames, 6, 2), np.nan, np.float32)
    boxes = np.full((n_frames, 4), np.nan, np.float32)
    scores = np.zeros(n_frames, np.float32)
    detected = np.zeros(n_frames, bool)
    n_faces = np.full(n_frames, -1, np.int16)
    for k in keys:
        n_faces[k] = len(detections[k])
    with_faces = [k for k in keys if detections[k]]
    if not with_faces:
        return Track(kp, boxes, scores, detected.copy(), detected, n_faces, -1, "no face")
    window = with_faces[:REFERENCE_WINDOW]
    most = max(len(detections[k]) for k in window)
    ref = next(k for k in window if len(detections[k]) == most)
    try:
        i, choice = _pick(detections[ref], width, height, face)
    except IndexError:
        raise ValueError(f"--face {face}: only {most} face(s) on frame {ref}, the frame the identity is "
                         f"chosen on (faces count from 0, left to right)") from None

    def put(k: int, d: Detection) -> None:
        kp[k], boxes[k], scores[k], detected[k] = d.keypoints, d.box, d.score, True

    start = detections[ref][i]
    put(ref, start)
    for direction in (keys[keys.index(ref) + 1:], keys[:keys.index(ref)][::-1]):
        last = start
        for k in direction:
            d = _match(last, detections[k])
            if d is not None:
                put(k, d)
                last = d
    found = detected.copy()
    # Frames between two detection frames that both saw the face: linear interpolation.
    hits = [k for k in keys if detected[k]]
    for a, b in zip(hits[:-1], hits[1:], strict=True):
        if b - a < 2 or any(k in detections for k in range(a + 1, b)):
            continue
        t = (np.arange(a + 1, b, dtype=np.float32) - a) / (b - a)
        kp[a + 1:b] = kp[a][None] * (1 - t)[:, None, None] + kp[b][None] * t[:, None, None]
        boxes[a + 1:b] = boxes[a][None] * (1 - t)[:, None] + boxes[b][None] * t[:, None]
        scores[a + 1:b] = np.minimum(scores[a], scores[b])
        found[a + 1:b] = True
    return Track(kp, boxes, scores, found, detected, n_faces, ref, choice)
