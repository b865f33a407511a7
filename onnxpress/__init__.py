"""onnxpress: a compiler pass pipeline that makes ONNX models smaller and faster.

import onnxpress as ox
model = ox.optimize("model.onnx", ["cleanup"], verify="numeric")
model.save("model.opt.onnx")
"""

from onnxpress._version import __version__
from onnxpress.api import optimize
from onnxpress.ir import Model, load
from onnxpress.passes import Context, Pass, PassResult
from onnxpress.targets import Target

__all__ = ["Context", "Model", "Pass", "PassResult", "Target", "__version__", "load", "optimize"]
