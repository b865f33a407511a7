"""Calibration: activation ranges from sample data, for the quantization passes.

`Calibrate` (the pass), the observers it streams batches into, and the `CalibrationTable` it
leaves in ``ctx.calibration``.
"""

from onnxpress.passes.calibrate.calibrate import Calibrate, tensors_to_calibrate
from onnxpress.passes.calibrate.observers import Gram, Histogram, MinMax, Observer
from onnxpress.passes.calibrate.table import (
    CalibrationError,
    CalibrationTable,
    MissingRangeError,
    TensorRange,
)

__all__ = [
    "Calibrate", "CalibrationError", "CalibrationTable", "Gram", "Histogram", "MinMax",
    "MissingRangeError", "Observer", "TensorRange", "tensors_to_calibrate",
]
