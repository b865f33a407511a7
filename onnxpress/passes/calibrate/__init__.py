"""Calibration: activation ranges from sample data, for the quantization passes.

`Calibrate` (the pass), the observers it streams batches into, and the `CalibrationTable` it
leaves in ``ctx.calibration``.
"""

from onnxpress.passes.calibrate.calibrate import Calibrate, tensors_to_calibrate
from onnxpress.passes.calibrate.observers import Gram, Histogram, MinMax, Observer, PerChannel
from onnxpress.passes.calibrate.table import (
    CalibrationError,
    CalibrationTable,
    MissingRangeError,
    TensorRange,
)

__all__ = [
    "Calibrate", "CalibrationError", "CalibrationTable", "Gram", "Histogram", "MinMax",
    "MissingRangeError", "Observer", "PerChannel", "TensorRange", "tensors_to_calibrate",
]
