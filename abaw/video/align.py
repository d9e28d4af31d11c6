"""Landmark-based alignment to a 112x112 crop laid out like Aff-Wild2's ``cropped_aligned``.

The organisers state the crops are 112x112x3 and aligned by a similarity transform of detected facial
landmarks; their template is not published. The layout used here is the standard 112x112 five-point
face template (ArcFace/InsightFace) the field aligns such crops with: eyes at y ~ 51.6, 35 px apart,
the head filling the crop. The synthetic release's crops follow the same placement (its eye centres
sit within ~3 px of the template's, see tests/test_video.py), so crops made here from raw footage look
like the crops the runs were trained on.

The four points fitted are the eyes, the nose tip and the mouth centre (the mean of the template's two
mouth corners): by default from MediaPipe's face mesh on the detected box (abaw.video.landmarks), else
BlazeFace's own keypoints, which are in the same order. The similarity is a least-squares fit (Umeyama) in which the
eyes weigh most: they are the steadiest keypoints, and the template fixes the crop's scale by them.
"""

from __future__ import annotations

import cv2
import numpy as np

CROP = 112
# (x, y) in a 112x112 crop: image-left eye, image-right eye, nose tip, mouth left, mouth right.
TEMPLATE_5 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# The points fitted (keypoints 0..3, mesh or BlazeFace): eyes, nose tip, mouth centre.
TEMPLATE = np.vstack([TEMPLATE_5[:3], TEMPLATE_5[3:].mean(0)])
WEIGHTS = np.array([2.0, 2.0, 1.0, 1.0])


def similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """float64 [2, 3]: the rotation + uniform scale + translation taking ``src`` points closest to
    ``dst`` in weighted least squares (Umeyama, no reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s, d = src - mu_s, dst - mu_d
    cov = (d * w[:, None]).T @ s
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    var = float((w * (s ** 2).sum(1)).sum())
    scale = float((sig * sign).sum() / max(var, 1e-12))
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def align_matrix(keypoints: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
    """[2, 3] frame -> crop transform for keypoints [>=4, 2] (eyes, nose tip, mouth centre first), onto
    ``template`` ([4, 2], default the standard one)."""
    return similarity(np.asarray(keypoints)[:4], TEMPLATE if template is None else template, WEIGHTS)


def aligned_crop(rgb: np.ndarray, keypoints: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
    """uint8 [112, 112, 3]: the face warped onto the template; outside the frame is black, as in the
    organisers' crops of faces near an edge."""
    m = align_matrix(keypoints, template)
    return cv2.warpAffine(rgb, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def crop_box(keypoints: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
    """float32 [4]: the crop's square in frame pixels (axis-aligned bounds of its four corners), which is
    what the overlay draws and frames.csv records as the face box."""
    m = align_matrix(keypoints, template)
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0, 1], [CROP, 0, 1], [0, CROP, 1], [CROP, CROP, 1]], np.float64) @ inv.T
    return np.array([*corners.min(0), *corners.max(0)], np.float32)
