"""FP8 (E4M3) Q/DQ for TensorRT, placed by the same op table as int8.

FP8 E4M3 (``float8e4m3fn``: 4 exponent bits, 3 mantissa bits, no infinities, largest finite
value 448) replaces the int8 grid by a floating one; Q/DQ keep the affine form with a zero
point of 0:

    q = saturate_fp8(round_fp8(x / s)),      x ≈ q · s,      s = amax / 448

so a calibrated ``amax`` lands on the largest finite FP8 value. Activations get one
per-tensor scale from the calibration table (TensorRT's FP8 activations are per tensor);
weights get one scale per output channel (the table's axis) and are stored as FP8
initializers + DequantizeLinear, a quarter of their FP32 size.

Placement is not decided here: the nodes and tensors are `QuantizeStatic.plan`'s choice for
the target's table (TensorRT's rules R-B*: both inputs of Conv / MatMul / Gemm, the skip input of
a residual Add, no Q on weighted outputs, small or GEMV-shaped layers declined), so FP8 and
int8 quantize the same nodes. FP8 types exist from opset 19; an older model is converted
first (`onnxpress.ir.opset.require_opset`).

Execution: onnxruntime's CPU provider runs FP8 QuantizeLinear / DequantizeLinear (reference
kernels, no FP8 matmul), which lets tests compare its Q/DQ with numpy; FP8 speed needs
TensorRT on an FP8 GPU (Ada / Hopper), which these machines do not have.

Lossy: outputs move by FP8 rounding of the selected tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import PreconditionError
from onnxpress.ir.edit import dead_code, toposort
from onnxpress.ir.model import Model
from onnxpress.ir.opset import require_opset
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.quantize.qdq import (
    FP8_E4M3,
    FP8_MAX,
    MIN_SCALE,
    QParams,
    dequantized_constant,
    quantize_activation,
)
from onnxpress.passes.quantize.static import QuantizeStatic, is_quantized

#: First opset with float8 QuantizeLinear / DequantizeLinear.
FP8_OPSET = 19


def fp8_params(amax: float | np.ndarray, axis: int | None = None) -> QParams:
    """Scale ``amax / 448`` (per channel if `amax` is an array) and an FP8 zero point of 0."""
    scale = np.maximum(np.asarray(amax, np.float64) / FP8_MAX, MIN_SCALE).astype(np.float32)
    return QParams(scale, np.zeros(scale.shape, FP8_E4M3), axis)


@dataclass(frozen=True)
class QuantizeFP8(Pass):
    """Insert FP8 E4M3 Q/DQ where TensorRT runs FP8 kernels.

    Attributes:
        op_types: Only quantize these op types (default: the target's whole table).
        exclude: Node names, op types or glob patterns to keep in higher precision.
        attention: Treat attention / LayerNorm blocks by their own rules (as quantize-static).
        skip_unprofitable: Let the target decline nodes it gains nothing from.
    """

    name: ClassVar[str] = "quantize-fp8"
    exact: ClassVar[bool] = False
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    attention: bool = True
    skip_unprofitable: bool = True

    def requires(self, model: Model, ctx: Context) -> None:
        """FP8 is a TensorRT encoding and needs calibrated ranges."""
        if ctx.target.name != "tensorrt":
            raise PreconditionError(
                f"quantize-fp8 emits FP8 Q/DQ for TensorRT; target '{ctx.target.name}' has no "
                "FP8 kernels in onnxruntime: use target='tensorrt'")
        if ctx.calibration is None:
            raise PreconditionError("quantize-fp8 needs activation ranges: run 'calibrate' "
                                    "first (with data=... / --data FILE)")

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Quantize the selected nodes in place."""
        if is_quantized(model):
            return PassResult(False, {"skipped": "model is already quantized"})
        selector = QuantizeStatic(op_types=self.op_types, exclude=self.exclude,
                                  attention=self.attention,
                                  skip_unprofitable=self.skip_unprofitable)
        if not selector.plan(model, ctx.target).units:
            return PassResult(False, {"nodes": 0})
        raised = require_opset(model, FP8_OPSET, "float8 QuantizeLinear")
        chosen = selector.plan(model, ctx.target)  # on the converted graph
        # Every range is looked up before the first edit: a missing one leaves the model as is.
        activation = {key: fp8_params(self._amax(ctx, entry.share or entry.tensor))
                      for key, entry in chosen.activations.items()}
        weights = 0
        for unit in chosen.units:
            node, rule = unit.node, unit.rule
            if rule.weight is None:
                continue
            values = np.asarray(node.inputs[rule.weight].values, np.float32)
            axis = rule.axis(node)
            reduce = tuple(d for d in range(values.ndim) if d != axis)
            dequantized_constant(model, node, rule.weight,
                                 fp8_params(np.abs(values).max(axis=reduce), axis), values)
            weights += 1
        for key, entry in chosen.activations.items():
            quantize_activation(model, entry.tensor, activation[key], entry.readers)
        dead_code(model.graph)
        toposort(model.graph)
        stats = {"nodes": len(chosen.units), "activations": len(chosen.activations),
                 "weights": weights, "opset_raised": raised}
        for unit in chosen.units:
            stats[unit.node.op] = stats.get(unit.node.op, 0) + 1
        return PassResult(True, stats)

    @staticmethod
    def _amax(ctx: Context, tensor: gs.Tensor) -> float:
        if tensor.name not in ctx.calibration:
            raise PreconditionError(
                f"the calibration table has no range for tensor '{tensor.name}'; run "
                "'calibrate' on this model (after the passes that rename tensors)")
        return float(ctx.calibration[tensor.name].amax)
