"""Alignment landmarks from MediaPipe's face mesh (``face_landmark.tflite``, 468 points), run through
LiteRT on the region BlazeFace found.

BlazeFace's six keypoints are coarse: regressed from a 128x128 view of the whole frame, they can sit
several pixels off the facial features (measured: ~7-9 px too high on the synthetic release's faces,
within ~3 px on real footage; the README, "abaw video"). The mesh model looks at the face itself, at
192x192, and places its points on the eye contours, the nose and the lips. From them come the four
alignment points in BlazeFace's order: the eye centres (mean of each eye's 16 contour points), the nose
tip, and the mouth centre (midpoint of the two mouth corners, like the template's).

The region is MediaPipe's own (face_detection_front_detection_to_roi.pbtxt): the detection box, square,
scaled 1.5x, rotated so the eyes are level.
"""

from __future__ import annotations

import cv2
import numpy as np

from abaw.video.detect import Detection, model_dir
from abaw.video.errors import DetectorMissingError

SIZE = 192
ROI_SCALE = 1.5
MIN_FACE = 0.5  # mesh face-presence probability below which the BlazeFace keypoints are kept
# Mesh indices (canonical MediaPipe topology). The subject's right eye is the image-left one.
EYE_IMAGE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
EYE_IMAGE_RIGHT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
NOSE_TIP = 1
MOUTH_CORNERS = (61, 291)


def roi_matrix(det: Detection) -> np.ndarray:
    """float64 [2, 3]: frame -> mesh input (SIZE x SIZE) for the detection's rotated square region."""
    k = det.keypoints.astype(np.float64)
    d = k[1] - k[0]  # image-left eye -> image-right eye
    angle = float(np.arctan2(d[1], d[0]))
    c = det.centre.astype(np.float64)
    side = ROI_SCALE * max(float(det.box[2] - det.box[0]), float(det.box[3] - det.box[1]))
    s = SIZE / max(side, 1e-6)
    cos, sin = np.cos(-angle) * s, np.sin(-angle) * s
    m = np.array([[cos, -sin, 0.0], [sin, cos, 0.0]])
    m[:, 2] = SIZE / 2 - m[:, :2] @ c
    return m


def mesh_points(mesh: np.ndarray) -> np.ndarray:
    """float32 [4, 2]: image-left eye centre, image-right eye centre, nose tip, mouth centre from the
    468 mesh points [468, >=2]."""
    mesh = np.asarray(mesh)[:, :2]
    return np.stack([
        mesh[list(EYE_IMAGE_LEFT)].mean(0),
        mesh[list(EYE_IMAGE_RIGHT)].mean(0),
        mesh[NOSE_TIP],
        mesh[list(MOUTH_CORNERS)].mean(0),
    ]).astype(np.float32)


class FaceMesh:
    """The 468-point face mesh on a detection's region; ``refine`` swaps its keypoints for mesh ones."""

    def __init__(self, threads: int = 1, min_face: float = MIN_FACE):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise DetectorMissingError(
                "abaw video runs the face mesh with LiteRT: `pip install ai-edge-litert` (the `video` extra)"
            ) from e
        path = model_dir().parent / "face_landmark" / "face_landmark.tflite"
        if not path.is_file():
            raise DetectorMissingError(f"{path}: missing; reinstall `pip install --no-deps mediapipe==0.10.21`")
        self.interpreter = Interpreter(str(path), num_threads=max(1, int(threads)))
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]["index"]
        outs = {int(np.prod(d["shape"])): d["index"] for d in self.interpreter.get_output_details()}
        self._mesh, self._flag = outs[468 * 3], outs[1]
        self.min_face = float(min_face)

    def __call__(self, rgb: np.ndarray, det: Detection) -> tuple[np.ndarray, float]:
        """(float32 [468, 2] mesh points in frame pixels, face-presence probability)."""
        m = roi_matrix(det)
        x = cv2.warpAffine(rgb, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        self.interpreter.set_tensor(self._input, (x.astype(np.float32) / 255.0)[None])
        self.interpreter.invoke()
        pts = self.interpreter.get_tensor(self._mesh).reshape(468, 3)[:, :2].astype(np.float64)
        logit = float(np.clip(self.interpreter.get_tensor(self._flag).reshape(()), -100, 100))
        inv = cv2.invertAffineTransform(m)
        frame_pts = np.c_[pts, np.ones(len(pts))] @ inv.T
        return frame_pts.astype(np.float32), 0.5 * (1.0 + np.tanh(0.5 * logit))

    def refine(self, rgb: np.ndarray, det: Detection) -> Detection:
        """The detection with keypoints 0..3 from the mesh (ear keypoints kept); unchanged where the mesh
        does not see a face in the region."""
        mesh, p = self(rgb, det)
        if p < self.min_face or not np.isfinite(mesh).all():
            return det
        kp = det.keypoints.copy()
        kp[:4] = mesh_points(mesh)
        return Detection(det.box, det.score, kp)


def crop_template(crop_dirs: list, mesh: FaceMesh, n_dirs: int = 20, per_dir: int = 10) -> np.ndarray | None:
    """float64 [4, 2]: the median mesh points (eyes, nose tip, mouth centre) over a sample of aligned
    crops (``per_dir`` files evenly spaced in each of up to ``n_dirs`` evenly spaced folders), i.e. where
    the crops' own convention puts the features; None when fewer than 10 crops show a face.

    The organisers publish no template for ``cropped_aligned``; the crops a run was trained on are the
    convention it expects, so a clip aligned to their points looks like its training data."""
    from abaw.features.visual import decode_crop

    dirs = sorted(crop_dirs)
    dirs = [dirs[int(i)] for i in np.linspace(0, len(dirs) - 1, min(n_dirs, len(dirs)))] if dirs else []
    pts = []
    for d in dirs:
        files = sorted(d.glob("*.jpg"))
        for j in np.linspace(0, len(files) - 1, min(per_dir, len(files))).astype(int) if files else []:
            try:
                crop = decode_crop(str(files[j]))
            except OSError:
                continue
            side = min(crop.shape[:2])
            # the region is the whole crop: a box of side / ROI_SCALE about its centre, eyes level
            h = side / ROI_SCALE / 2
            c = np.array([crop.shape[1] / 2, crop.shape[0] / 2], np.float32)
            kp = np.zeros((6, 2), np.float32)
            kp[0], kp[1] = c - [h, 0], c + [h, 0]
            found, p = mesh(crop, Detection(np.array([*(c - h), *(c + h)], np.float32), 1.0, kp))
            if p >= mesh.min_face and np.isfinite(found).all():
                pts.append(mesh_points(found) * (112.0 / side))
    return np.median(np.array(pts), 0).astype(np.float64) if len(pts) >= 10 else None
