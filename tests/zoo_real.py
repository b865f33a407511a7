"""The development zoo: real trained architectures in ``tests/models/zoo`` and their metrics.

Built by ``python models/build_zoo.py`` (torch); nothing here imports torch. Each model
`<name>.onnx` comes with ``<name>.npz`` (calibration inputs, keyed by input name, axis 0 =
samples; pass it as ``data=``) and ``<name>_eval.npz`` (held-out inputs, same layout).

`ZOO_MODELS` says, per output, how to judge a candidate against the FP32 model:

* ``class``: top-1 agreement of logits over the last axis (and cosine);
* ``boxes``: YOLO output [B, 4 + nc, anchors] (xywh pixels, sigmoid scores): decoded with a
  score threshold and per-class NMS, then F1 of the candidate's detections against the FP32
  detections (IoU >= 0.5, same class) — `detection_f1`;
* ``sequence``: per-timestep logits [B, T, classes] for CTC: greedy decode (argmax, collapse
  repeats, drop blank 0) and exact match of the strings — `ctc_exact_match`;
* ``map``: a probability map; IoU of the maps binarized at 0.3 (`map_iou`) and cosine.

benchmarks/zoo_baseline.py imports this module; it is the one place the metrics live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ZOO_DIR = Path(__file__).resolve().parent / "models" / "zoo"


@dataclass(frozen=True)
class ZooModel:
    """One zoo model: file, data and the kind of each output (see the module docstring)."""

    name: str
    outputs: dict[str, str]
    description: str

    @property
    def path(self) -> Path:
        """The .onnx file."""
        return ZOO_DIR / f"{self.name}.onnx"

    @property
    def calib_path(self) -> Path:
        """Calibration inputs (.npz keyed by input name)."""
        return ZOO_DIR / f"{self.name}.npz"

    @property
    def eval_path(self) -> Path:
        """Held-out evaluation inputs (.npz keyed by input name)."""
        return ZOO_DIR / f"{self.name}_eval.npz"

    def calibration(self) -> dict[str, np.ndarray]:
        """Calibration arrays keyed by input name."""
        return _load(self.calib_path)

    def evaluation(self) -> dict[str, np.ndarray]:
        """Held-out arrays keyed by input name."""
        return _load(self.eval_path)

    def available(self) -> bool:
        """Whether the model and both data files are built."""
        return self.path.is_file() and self.calib_path.is_file() and self.eval_path.is_file()


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


ZOO_MODELS: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("yolo", {"output0": "boxes"}, "YOLOv8-style detector, C2f/SPPF/DFL head"),
    ZooModel("mobilenet", {"logits": "class"}, "MobileNetV3: HardSwish, depthwise, SE"),
    ZooModel("hybrid", {"logits": "sequence"}, "12-conv stem + transformer, CTC text recognizer"),
    ZooModel("crnn", {"log_probs": "sequence"}, "CRNN: convs + BiLSTM + CTC log_softmax"),
    ZooModel("bytes", {"logits": "class"}, "int64 bytes, OneHot, ReduceSum LayerNorm, tanh GELU"),
    ZooModel("paddle12", {"maps": "map"}, "DB text detector, opset 12, Constant-node weights"),
    ZooModel("prequant", {"log_probs": "sequence"}, "CRNN-lite after quantize_dynamic"),
    ZooModel("fixedbatch", {"logits": "class"}, "ResNet-ish CNN, all dims static, batch 1"),
)}


# --------------------------------------------------------------------------------------------
# Metrics
def ctc_greedy(seq: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC strings of [B, T, classes] scores: argmax, collapse repeats, drop blank 0."""
    best = np.argmax(seq, -1)
    out = []
    for row in best:
        keep = np.concatenate(([True], row[1:] != row[:-1])) & (row != 0)
        out.append(tuple(int(c) - 1 for c in row[keep]))
    return out


def ctc_exact_match(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of samples whose greedy CTC strings are equal."""
    a, b = ctc_greedy(reference), ctc_greedy(candidate)
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)]))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against [k, 4] xyxy boxes."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], -1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter + 1e-9)


def decode_yolo(out: np.ndarray, score: float = 0.25, iou: float = 0.5
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of [B, 4 + nc, anchors]: (xyxy boxes [k, 4], classes [k]) after class NMS."""
    result = []
    for o in out:
        xywh, scores = o[:4].T, o[4:].T
        cls, conf = scores.argmax(1), scores.max(1)
        keep = conf > score
        xywh, cls, conf = xywh[keep], cls[keep], conf[keep]
        xyxy = np.concatenate((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
        chosen = []
        for i in np.argsort(-conf):
            same = [j for j in chosen if cls[j] == cls[i]]
            if not same or _iou(xyxy[i], xyxy[same]).max() < iou:
                chosen.append(i)
        result.append((xyxy[chosen].reshape(-1, 4), cls[chosen]))
    return result


def box_f1(truth: list[tuple[np.ndarray, np.ndarray]],
           found: list[tuple[np.ndarray, np.ndarray]], iou: float = 0.5) -> float:
    """F1 of detections `found` against `truth` (greedy matching at IoU >= iou, same class)."""
    tp = n_truth = n_found = 0
    for (tb, tc), (fb, fc) in zip(truth, found, strict=True):
        n_truth, n_found = n_truth + len(tb), n_found + len(fb)
        used = np.zeros(len(tb), bool)
        for b, c in zip(fb, fc, strict=True):
            if not len(tb):
                break
            scores = np.where((tc == c) & ~used, _iou(b, tb), 0.0)
            j = int(scores.argmax())
            if scores[j] >= iou:
                used[j] = True
                tp += 1
    if n_truth == n_found == 0:
        return 1.0
    return 2 * tp / (n_truth + n_found)


def detection_f1(reference: np.ndarray, candidate: np.ndarray) -> float:
    """F1 of the candidate's decoded detections against the reference's."""
    return box_f1(decode_yolo(reference), decode_yolo(candidate))


def map_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float = 0.3) -> float:
    """IoU of the two probability maps binarized at `threshold`."""
    a, b = reference > threshold, candidate > threshold
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows whose argmax over the last axis agree."""
    return float(np.mean(reference.argmax(-1) == candidate.argmax(-1)))


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of the two flattened outputs."""
    a, b = reference.ravel().astype(np.float64), candidate.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


#: The task metric of each output kind (higher is better, 1.0 = same as the reference).
METRICS: dict[str, tuple[str, Callable[[np.ndarray, np.ndarray], float]]] = {
    "class": ("top-1 agreement", top1_agreement),
    "boxes": ("detection F1", detection_f1),
    "sequence": ("CTC exact match", ctc_exact_match),
    "map": ("map IoU@0.3", map_iou),
}
