"""Static int8 quantization: Q/DQ placed where the target's runtime fuses int8 kernels.

Given activation ranges from `calibrate`, the pass

1. plans the units and activations (`quantize/plan.py`: per node from the target's op table,
   attention / LayerNorm blocks by their own rules, island ops only where int8 flows);
2. computes the parameters:
   - activations from their calibrated range (asymmetric uint8 on cpu, symmetric int8 on
     tensorrt); data-movement outputs reuse their input's parameters (R-A2);
   - weights symmetric int8 with `Target.weight_bits` levels, per channel on the
     output-channel axis (Conv 0, ConvTranspose 1, Gemm 1 or 0 by transB, MatMul 1), stored
     as int8 initializers + DequantizeLinear. DequantizeLinear has an ``axis`` from opset 13
     on: an older model is converted to opset 13 first (onnx's version converter, checked),
     and the stats say so (``opset``);
   - a Conv / Gemm bias on cpu as int32 with scale s_x·s_w and zero point 0;
3. inserts the Q/DQ nodes (`quantize/qdq.py`) and sweeps the float weights left unread;
4. on cpu, asks onnxruntime which units it really fused (`runtime.fusion`) and plans again
   without the units it left in float (``fused_only``): an unfused unit runs as dequantize,
   float op, quantize — slower than FP32 and no more accurate.

Lossy: outputs move by quantization error; `runtime.compare` measures by how much, and
`mixed-precision` keeps it within a budget.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import PreconditionError
from onnxpress.ir.edit import dead_code, toposort
from onnxpress.ir.model import Model
from onnxpress.ir.opset import require_opset
from onnxpress.ir.select import matches
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.quantize.plan import Planned, QuantPlan, float_constant, plan
from onnxpress.passes.quantize.qdq import (
    QParams,
    dequantized_constant,
    qparams,
    quantize_activation,
    weight_qparams,
)
from onnxpress.runtime.fusion import fusion_report
from onnxpress.targets import Target

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                     "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"})

#: First opset whose DequantizeLinear takes an ``axis`` (per-channel weights).
PER_CHANNEL_OPSET = 13

#: Rounds of "quantize, ask onnxruntime, drop what it left float" before giving up.
FUSION_ROUNDS = 3


def fusion_stats(model: Model, ctx: Context) -> dict[str, str]:
    """What onnxruntime fused, for the report — on the cpu target, where it can be asked."""
    if ctx.target.name != "cpu":
        return {}
    return {"onnxruntime": fusion_report(model).summary()}


def is_quantized(model: Model) -> bool:
    """Whether the model already carries quantization nodes."""
    return any(n.op in QDQ_OPS for n in model.graph.nodes)


@dataclass(frozen=True)
class QuantizeStatic(Pass):
    """Insert Q/DQ for static int8 where the target fuses int8 kernels.

    Attributes:
        op_types: Only quantize these op types (default: the target's whole table).
        exclude: Node names, op types or glob patterns to keep float.
        per_channel: Per-channel weight scales (per-tensor otherwise).
        activation_dtype: "uint8" or "int8" (default: the target's choice).
        symmetric_activations: Override the target's activation symmetry.
        attention: Treat attention / LayerNorm blocks by their own rules (False: like the
            rest of the graph).
        skip_unprofitable: Let the target decline nodes it gains nothing from (tensorrt: tiny
            convolutions, GEMV-shaped MatMuls; cpu: squares); False quantizes them anyway.
        fused_only: On cpu, keep float the units onnxruntime does not fuse (asks it).
    """

    name: ClassVar[str] = "quantize-static"
    exact: ClassVar[bool] = False
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    per_channel: bool = True
    activation_dtype: str | None = None
    symmetric_activations: bool | None = None
    attention: bool = True
    skip_unprofitable: bool = True
    fused_only: bool = True

    def requires(self, model: Model, ctx: Context) -> None:
        """Calibration must have run, and the target must have an int8 path."""
        if not ctx.target.quantization:
            raise PreconditionError(
                f"target '{ctx.target.name}' has no fused int8 kernels in onnxruntime; "
                "quantize for 'tensorrt' or 'cpu' instead")
        if ctx.calibration is None and not is_quantized(model):
            raise PreconditionError("quantize-static needs activation ranges: run 'calibrate' "
                                    "first (with data=... / --data FILE)")

    def plan(self, model: Model, target: Target) -> QuantPlan:
        """The plan this pass applies to `model` (what `calibrate` measures too)."""
        return plan(model, target, op_types=self.op_types, exclude=self.exclude,
                    skip_unprofitable=self.skip_unprofitable, attention=self.attention)

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Quantize the model in place and report what onnxruntime fused."""
        if is_quantized(model):
            return PassResult(False, {"skipped": "model is already quantized"})
        for pattern in self.exclude:
            if not any(matches(n, [pattern]) for n in model.graph.nodes):
                warnings.warn(f"quantize-static: exclude pattern '{pattern}' matches no node",
                              stacklevel=2)
        for node in model.graph.nodes:  # onnxruntime reports unfused units by name
            if not node.name:
                node.name = model.fresh_name(node.op)
        stats: dict = {}
        old = model.opset
        if (self.per_channel and old < PER_CHANNEL_OPSET and self.plan(model, ctx.target).units
                and require_opset(model, PER_CHANNEL_OPSET,
                                  "per-channel weights (use per_channel=False to keep "
                                  "per-tensor ones)")):
            stats["opset"] = f"{old} -> {PER_CHANNEL_OPSET}"
        check_fusion = self.fused_only and ctx.target.name == "cpu"
        quantizer, unfused = self, []
        for _ in range(FUSION_ROUNDS):
            trial = model.copy() if check_fusion else model
            stats.update(quantizer.quantize(trial, ctx))
            if not check_fusion or not stats["nodes"]:
                break
            report = fusion_report(trial, ctx.target)
            quantized = set(stats["quantized"])
            left = [n for n in report.unfused_nodes if n in quantized]
            if not left:
                stats["onnxruntime"] = report.summary()
                break
            unfused += left
            quantizer = replace(quantizer, exclude=(*quantizer.exclude, *left))
        else:
            stats["onnxruntime"] = report.summary()
        if check_fusion:
            model.adopt(trial)
        if unfused:
            stats["kept_float_unfused"] = len(unfused)
        del stats["quantized"]
        return PassResult(bool(stats["nodes"]), stats)

    def quantize(self, model: Model, ctx: Context) -> dict:
        """Insert the Q/DQ nodes of this pass's plan in place; return the stats (no
        onnxruntime involved). ``quantized`` lists the quantized nodes' names."""
        chosen = self.plan(model, ctx.target)
        params = _Parameters(model, ctx, self)
        # Every range is looked up before the first edit, so a missing one fails with the
        # model untouched.
        activation = {key: params.activation(p, chosen) for key, p in chosen.activations.items()}
        per_channel = self.per_channel and model.opset >= PER_CHANNEL_OPSET
        bits = ctx.target.weight_bits
        weights = 0
        for unit in chosen.units:
            if unit.rule.weight is not None:
                inputs = [activation[id(unit.node.inputs[i])] for i in unit.rule.inputs(unit.node)]
                weights += _quantize_weight(model, unit.node, unit.rule, inputs, per_channel,
                                            bits)
        for key, entry in chosen.activations.items():
            quantize_activation(model, entry.tensor, activation[key], entry.readers)
        dead_code(model.graph)
        toposort(model.graph)
        stats = {"nodes": len(chosen.units), "activations": len(chosen.activations),
                 "weights": weights, "weights_only": sum(u.weights_only for u in chosen.units),
                 "activation_dtype": params.dtype.name, "per_channel": per_channel,
                 "weight_bits": bits, "quantized": chosen.names()}
        if chosen.declined:
            stats["kept_float"] = chosen.why_float()
        for unit in chosen.units:
            stats[unit.node.op] = stats.get(unit.node.op, 0) + 1
        return stats


class _Parameters:
    """Scale and zero point of each planned activation, from the calibration table."""

    def __init__(self, model: Model, ctx: Context, options: QuantizeStatic) -> None:
        self.table = ctx.calibration
        self.dtype = np.dtype(options.activation_dtype or ctx.target.activation_dtype)
        self.symmetric = (ctx.target.symmetric_activations
                          if options.symmetric_activations is None
                          else options.symmetric_activations)
        self._cache: dict[int, QParams] = {}

    def activation(self, planned: Planned, chosen: QuantPlan) -> QParams:
        """The parameters of one planned tensor (its source's, for data movement)."""
        while planned.share is not None:  # a chain: Reshape → MaxPool → Flatten
            planned = chosen.activations[id(planned.share)]
        tensor = planned.tensor
        key = id(tensor)
        if key not in self._cache:
            if tensor.name not in self.table:
                raise PreconditionError(
                    f"the calibration table has no range for tensor '{tensor.name}'; run "
                    "'calibrate' on this model (after the passes that rename tensors)")
            lo, hi = self.table[tensor.name]
            self._cache[key] = qparams(float(lo), float(hi), self.dtype,
                                       symmetric=self.symmetric)
        return self._cache[key]


def _quantize_weight(model: Model, node: gs.Node, rule, activation: list[QParams],
                     per_channel: bool, bits: int) -> int:
    values = np.asarray(node.inputs[rule.weight].values)
    axis = rule.axis(node) if per_channel else None
    p = weight_qparams(values, axis, bits=bits)
    dequantized_constant(model, node, rule.weight, p, values)
    if rule.bias is not None and len(node.inputs) > rule.bias and float_constant(
            node, rule.bias) and activation and float(node.attrs.get("beta", 1.0)) == 1.0:
        bias = np.asarray(node.inputs[rule.bias].values, np.float64)
        if bias.ndim > 1 and bias.size == bias.shape[-1]:
            bias = bias.reshape(-1)  # Gemm's [1, N] bias broadcasts like [N]
        scale = (activation[0].scale.astype(np.float64) * p.scale).astype(np.float32)
        bias_p = QParams(scale, np.zeros(scale.shape, np.int32), 0 if scale.ndim else None)
        dequantized_constant(model, node, rule.bias, bias_p, bias)
    return 1

