"""Static int8 quantization: Q/DQ placed where the target's runtime fuses int8 kernels.

Given activation ranges from `calibrate`, the pass

1. selects the nodes to quantize from the target's op table (`onnxpress.targets.QRule`),
   the user's `op_types` / `exclude`, and these rules:
   - a weighted op needs a constant float weight (an activation×activation MatMul stays float),
     and every quantized input must be float (int64 shape arithmetic stays as it is);
   - a unit whose output is a graph output still gets its output Q: the DequantizeLinear
     then writes the graph output (onnxruntime refuses only a unit whose own node writes a
     graph output, R-A1 — measured 100% fused this way);
   - the target may decline a node it gains nothing from (tensorrt: GEMV-shaped MatMuls,
     convolutions with too few channels for int8 tiles, R-B4);
   - in a transformer graph (one with LayerNormalization / Softmax, fused or decomposed) only
     MatMul / Gemm with constant weights are quantized, without output Q (onnxruntime runs them
     as MatMulIntegerToFloat / QGemm). Residual Adds, LayerNorm and Softmax inputs, attention
     masks and embedding sums have ranges that int8 cannot hold next to the rest — quantizing
     them is what drops onnxruntime's own quantizer to cosine 0.36 on MiniLM;
2. plans one set of parameters per tensor:
   - activations from their calibrated range (asymmetric uint8 on cpu, symmetric int8 on
     tensorrt); a Conv/Gemm output read only by a Relu takes the Relu output's range and the
     Q goes after the Relu, which onnxruntime then drops (its range already clips at 0);
   - data-movement ops (Reshape, MaxPool, …) reuse their input's parameters, which they must
     to fuse (R-A2);
   - weights symmetric int8, per channel on the output-channel axis (Conv 0, ConvTranspose 1,
     Gemm 1 or 0 by transB, MatMul 1), stored as int8 initializers + DequantizeLinear;
     per tensor below opset 13, where DequantizeLinear has no `axis`;
   - a Conv / Gemm bias on cpu as int32 with scale s_x·s_w and zero point 0;
3. inserts the Q/DQ nodes (`quantize/qdq.py`) and sweeps the float weights left unread.

Lossy: outputs move by quantization error; `runtime.compare` measures by how much.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import PreconditionError
from onnxpress.ir import analyses
from onnxpress.ir.edit import consumers, dead_code, is_graph_output, toposort
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.quantize.qdq import (
    QParams,
    dequantized_constant,
    qparams,
    quantize_activation,
    weight_qparams,
)
from onnxpress.targets import QRule

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                     "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"})
TRANSFORMER_MARKERS = frozenset({"LayerNormalization", "Softmax", "SkipLayerNormalization",
                                 "Attention", "MultiHeadAttention"})
WEIGHTED = frozenset({"MatMul", "Gemm"})
ACTIVATION_FOLDS = frozenset({"Relu"})


def fusion_stats(model: Model, ctx: Context) -> dict[str, str]:
    """What onnxruntime fused, for the report — on the cpu target, where it can be asked."""
    if ctx.target.name != "cpu":
        return {}
    from onnxpress.runtime.fusion import fusion_report

    return {"onnxruntime": fusion_report(model).summary()}


def is_quantized(model: Model) -> bool:
    """Whether the model already carries quantization nodes."""
    return any(n.op in QDQ_OPS for n in model.graph.nodes)


def is_transformer(model: Model) -> bool:
    """Whether the graph has attention / LayerNorm structure (fused or decomposed)."""
    ops = {n.op for n in model.graph.nodes}
    return bool(ops & TRANSFORMER_MARKERS) or {"ReduceMean", "Sqrt", "Div"} <= ops


@dataclass(frozen=True)
class QuantizeStatic(Pass):
    """Insert Q/DQ for static int8 where the target fuses int8 kernels.

    Attributes:
        op_types: Only quantize these op types (default: the target's whole table).
        exclude: Node names, op types or glob patterns to keep float.
        per_channel: Per-channel weight scales (per-tensor otherwise).
        activation_dtype: "uint8" or "int8" (default: the target's choice).
        symmetric_activations: Override the target's activation symmetry.
        transformer: "auto" detects transformer graphs; "on" / "off" force the choice.
        skip_unprofitable: Let the target decline nodes it gains nothing from (tensorrt: tiny
            convolutions, GEMV-shaped MatMuls); False quantizes them anyway.
    """

    name: ClassVar[str] = "quantize-static"
    exact: ClassVar[bool] = False
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    per_channel: bool = True
    activation_dtype: str | None = None
    symmetric_activations: bool | None = None
    transformer: str = "auto"
    skip_unprofitable: bool = True

    def requires(self, model: Model, ctx: Context) -> None:
        """Calibration must have run, and the target must have an int8 path."""
        if not ctx.target.quantization:
            raise PreconditionError(
                f"target '{ctx.target.name}' has no fused int8 kernels in onnxruntime; "
                "quantize for 'tensorrt' or 'cpu' instead")
        if ctx.calibration is None and not is_quantized(model):
            raise PreconditionError("quantize-static needs activation ranges: run 'calibrate' "
                                    "first (with data=... / --data FILE)")

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Quantize the model in place and report what onnxruntime fused."""
        if is_quantized(model):
            return PassResult(False, {"skipped": "model is already quantized"})
        stats = self.quantize(model, ctx)
        if stats["nodes"]:
            stats.update(fusion_stats(model, ctx))
        return PassResult(bool(stats["nodes"]), stats)

    def quantize(self, model: Model, ctx: Context) -> dict:
        """Insert the Q/DQ nodes in place; return the stats (no onnxruntime involved)."""
        rules = ctx.target.quantization
        transformer = (is_transformer(model) if self.transformer == "auto"
                       else self.transformer == "on")
        selected = self.select(model, rules, transformer)
        dtype = np.dtype(self.activation_dtype or ctx.target.activation_dtype)
        symmetric = (ctx.target.symmetric_activations if self.symmetric_activations is None
                     else self.symmetric_activations)
        planner = _Planner(model, ctx.calibration, dtype, symmetric)
        chosen = {id(n) for n in selected}
        # Plan every activation (every range lookup) before the first edit, so a missing
        # range fails with the model untouched.
        plans = []
        for node in selected:
            rule = rules[node.op]
            plans.append((node, rule, planner.inputs(node, rule)))
            planner.output(node, rule, chosen, transformer)
        # DequantizeLinear's `axis` (per-channel) exists from opset 13 on.
        per_channel = self.per_channel and model.opset >= 13
        bits = ctx.target.weight_bits
        weights = 0
        for node, rule, inputs in plans:
            if rule.weight is not None:
                weights += self._quantize_weight(model, node, rule, inputs, per_channel, bits)
        for entry in planner.planned.values():
            quantize_activation(model, entry.tensor, entry.params, entry.readers)
        dead_code(model.graph)
        toposort(model.graph)
        stats = {"nodes": len(selected), "activations": len(planner.planned), "weights": weights,
                 "transformer": transformer, "activation_dtype": dtype.name,
                 "per_channel": per_channel, "weight_bits": bits}
        for node in selected:
            stats[node.op] = stats.get(node.op, 0) + 1
        return stats

    # ----------------------------------------------------------------------------------------
    def _excluded(self, node: gs.Node) -> bool:
        return any(fnmatch.fnmatchcase(node.name, pattern) or node.op == pattern
                   for pattern in self.exclude)

    def select(self, model: Model, rules, transformer: bool) -> list[gs.Node]:
        """The nodes this pass would quantize, in graph order (rules 1 of the module doc)."""
        graph = model.graph
        model.analysis(analyses.shapes)  # element types: shape arithmetic on int64 stays
        for pattern in self.exclude:
            if not any(fnmatch.fnmatchcase(n.name, pattern) or n.op == pattern
                       for n in graph.nodes):
                warnings.warn(f"quantize-static: exclude pattern '{pattern}' matches no node",
                              stacklevel=2)
        selected = []
        for node in graph.nodes:
            rule = rules.get(node.op)
            if rule is None or self._excluded(node):
                continue
            if self.op_types is not None and node.op not in self.op_types:
                continue
            if transformer and node.op not in WEIGHTED:
                continue
            if rule.weight is not None and not _float_constant(node, rule.weight):
                continue
            if not all(_float(node.inputs[i]) for i in rule.inputs(node)):
                continue
            if self.skip_unprofitable and rule.skip is not None and rule.skip(node) is not None:
                continue
            selected.append(node)
        return selected

    def _quantize_weight(self, model: Model, node: gs.Node, rule: QRule,
                         activation: list[QParams], per_channel: bool, bits: int) -> int:
        values = np.asarray(node.inputs[rule.weight].values)
        axis = rule.axis(node) if per_channel else None
        p = weight_qparams(values, axis, bits=bits)
        dequantized_constant(model, node, rule.weight, p, values)
        if rule.bias is not None and len(node.inputs) > rule.bias and _float_constant(
                node, rule.bias) and activation and float(node.attrs.get("beta", 1.0)) == 1.0:
            bias = np.asarray(node.inputs[rule.bias].values, np.float64)
            if bias.ndim > 1 and bias.size == bias.shape[-1]:
                bias = bias.reshape(-1)  # Gemm's [1, N] bias broadcasts like [N]
            scale = (activation[0].scale.astype(np.float64) * p.scale).astype(np.float32)
            bias_p = QParams(scale, np.zeros(scale.shape, np.int32), 0 if scale.ndim else None)
            dequantized_constant(model, node, rule.bias, bias_p, bias)
        return 1


def _float(tensor: gs.Tensor) -> bool:
    """A float activation, or one whose type inference could not tell (after contrib ops)."""
    return tensor.dtype is None or np.issubdtype(np.dtype(tensor.dtype), np.floating)


def _float_constant(node: gs.Node, index: int) -> bool:
    t = node.inputs[index] if index < len(node.inputs) else None
    return isinstance(t, gs.Constant) and np.asarray(t.values).dtype in (np.float32, np.float64)


@dataclass
class _Planned:
    """One activation to wrap in Q/DQ, and who reads the dequantized copy.

    `readers` None means every reader: the tensor is the output of a quantized unit, which
    onnxruntime fuses only if every output edge goes to the Q. Otherwise only the quantized
    readers switch to the dequantized copy and float readers keep the exact tensor — e.g. a
    LayerNorm output feeding both Q/K/V MatMuls and the residual Add: quantization error
    must not leak into the residual stream.
    """

    tensor: gs.Variable
    params: QParams
    readers: list[gs.Node] | None


class _Planner:
    """Decides the quantization parameters of each activation tensor, once per tensor."""

    def __init__(self, model: Model, table, dtype: np.dtype, symmetric: bool) -> None:
        self.model = model
        self.table = table
        self.dtype = dtype
        self.symmetric = symmetric
        self.planned: dict[int, _Planned] = {}

    def _range(self, tensor: gs.Tensor) -> tuple[float, float]:
        if tensor.name not in self.table:
            raise PreconditionError(
                f"the calibration table has no range for tensor '{tensor.name}'; run "
                "'calibrate' on this model (after the passes that rename tensors)")
        lo, hi = self.table[tensor.name]
        return float(lo), float(hi)

    def tensor(self, tensor: gs.Variable, p: QParams | None = None,
               reader: gs.Node | None = None) -> QParams:
        """The parameters of `tensor`, planning its Q/DQ on first use; `reader` is the
        quantized node that reads it (None: a unit output, read through DQ by everyone)."""
        entry = self.planned.get(id(tensor))
        if entry is None:
            if p is None:
                p = qparams(*self._range(tensor), self.dtype, symmetric=self.symmetric)
            entry = self.planned[id(tensor)] = _Planned(tensor, p, [])
        if reader is None:
            entry.readers = None
        elif entry.readers is not None:
            entry.readers.append(reader)
        return entry.params

    def inputs(self, node: gs.Node, rule: QRule) -> list[QParams]:
        """Plan the node's activation inputs; return their parameters in input order."""
        return [self.tensor(node.inputs[i], reader=node) for i in rule.inputs(node)]

    def output(self, node: gs.Node, rule: QRule, chosen: set[int], transformer: bool) -> None:
        """Plan the node's output Q according to the rule (after a lone Relu reader, if any)."""
        out = node.outputs[0]
        if rule.output == "never":
            return
        if rule.output == "same-as-input":
            self.tensor(out, self.planned[id(node.inputs[0])].params)
            return
        target = self._after_activation(out)
        if rule.output == "if-read" and (transformer or not any(
                id(c) in chosen for c in consumers(target))):
            return
        self.tensor(target)

    def _after_activation(self, out: gs.Variable) -> gs.Variable:
        """The Relu output when `out` is read only by a Relu (the Q goes after it), else out.

        onnxruntime drops the Relu only when the Q's range already clips at 0, which holds for
        asymmetric ranges (zero point at the bottom) but not symmetric ones.
        """
        readers = consumers(out)
        if (not self.symmetric and len(readers) == 1 and readers[0].op in ACTIVATION_FOLDS
                and not is_graph_output(self.model.graph, out)):
            return readers[0].outputs[0]
        return out
