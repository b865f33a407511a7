"""The embedded default: a small trained CNN and its data, so everything runs out of the box.

`onnxpress demo`, the README and the accuracy tests of lossy passes need a real model with
real data that ships with the package — no download, no training. This is a residual CNN
trained on scikit-learn's 8×8 digits (built by ``models/digits_cnn.py``): input ``input``
float32 [N, 1, 8, 8], output ``logits`` float32 [N, 10]. It has the patterns the passes care
about (Conv + BatchNormalization, residual Adds, a depthwise Conv, a Gemm head).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onnxpress.runtime.data import DataSource

_HERE = Path(__file__).resolve().parent


def model_path() -> Path:
    """Path of the FP32 model file, ``digits.onnx``."""
    return _HERE / "digits.onnx"


def test_data() -> DataSource:
    """The held-out test images (30 % of the digits, stratified), key ``input``."""
    return DataSource.from_npz(_HERE / "digits_test.npz")


def test_labels() -> np.ndarray:
    """The int64 class (0–9) of each test image, in `test_data` order."""
    return np.load(_HERE / "digits_test_labels.npy", allow_pickle=False)


def calibration_data() -> DataSource:
    """256 training images for calibration; disjoint from the test split."""
    return DataSource.from_npz(_HERE / "digits_calib.npz")


def facts() -> dict:
    """What ``models/digits_cnn.py`` recorded: FP32 test accuracy, test size, opset, seed."""
    return json.loads((_HERE / "digits.json").read_text())
