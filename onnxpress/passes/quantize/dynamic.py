"""Dynamic int8 quantization of MatMul / Gemm with constant weights.

Weights are quantized offline (symmetric int8, per output channel); activations are quantized
at run time from each batch's own range, so no calibration is needed:

    (x_q, s_x, z_x) = DynamicQuantizeLinear(x)                       uint8, per tensor
    y = Cast(MatMulInteger(x_q, W_q, z_x, 0), float) * (s_x * s_W) [+ b]

which is ``x·W`` up to rounding, because ``x ≈ s_x (x_q − z_x)`` and ``W ≈ s_W W_q``.
onnxruntime fuses exactly this shape — MatMulInteger → Cast → Mul into MatMulIntegerToFloat,
then with DynamicQuantizeLinear into one DynamicQuantizeMatMul kernel — so the pass emits it
verbatim. Conv is never quantized dynamically: measured 2–5× slower than FP32 on this CPU.
Gemm is handled when it is a plain matrix product (alpha = 1, transA = 0); transB weights
are transposed offline, and the bias (beta = 1) becomes an Add.

Lossy: outputs move by activation and weight rounding error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir.edit import dead_code, insert_before, replace_uses
from onnxpress.ir.model import Model
from onnxpress.ir.select import matches
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.quantize.qdq import quantize_array, weight_qparams
from onnxpress.passes.quantize.static import fusion_stats, is_quantized


def _matrix(node: gs.Node) -> np.ndarray | None:
    """The node's constant weight as a [K, N] float matrix, or None if it has none."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(w, gs.Constant) or np.asarray(w.values).dtype != np.float32:
        return None
    values = np.asarray(w.values)
    if values.ndim != 2:
        return None
    if node.op == "Gemm":
        if float(node.attrs.get("alpha", 1.0)) != 1.0 or node.attrs.get("transA", 0):
            return None
        if len(node.inputs) > 2 and not node.inputs[2].is_empty() and (
                float(node.attrs.get("beta", 1.0)) != 1.0
                or not isinstance(node.inputs[2], gs.Constant)):
            return None
        return values.T if node.attrs.get("transB", 0) else values
    return values


@dataclass(frozen=True)
class QuantizeDynamic(Pass):
    """Quantize MatMul / Gemm with constant weights to onnxruntime's dynamic int8 kernels.

    Attributes:
        exclude: Node names or glob patterns to keep float.
        per_channel: Per-output-channel weight scales.
    """

    name: ClassVar[str] = "quantize-dynamic"
    exact: ClassVar[bool] = False
    exclude: tuple[str, ...] = ()
    per_channel: bool = True

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Rewrite every eligible MatMul / Gemm."""
        if is_quantized(model):
            return PassResult(False, {"skipped": "model is already quantized"})
        done = []
        for node in list(model.graph.nodes):
            if node.op not in ("MatMul", "Gemm") or matches(node, self.exclude):
                continue
            w = _matrix(node)
            if w is None:
                continue
            self._rewrite(model, node, w, ctx.target.weight_bits)
            done.append(node)
        if done:
            dead_code(model.graph)
        stats = {"MatMul": sum(n.op == "MatMul" for n in done),
                 "Gemm": sum(n.op == "Gemm" for n in done)}
        if done:
            stats.update(fusion_stats(model, ctx))
        return PassResult(bool(done), stats)

    def _rewrite(self, model: Model, node: gs.Node, w: np.ndarray, bits: int) -> None:
        # MatMulInteger runs the same u8s8 kernels as the static path: 7 bits where they
        # saturate (`Target.weight_bits`).
        p = weight_qparams(w, 1 if self.per_channel else None, bits=bits)
        hint = node.name or "matmul"
        x, out = node.inputs[0], node.outputs[0]
        x_q = model.variable(f"{hint}_x_q", dtype=np.uint8)
        s_x = model.variable(f"{hint}_x_scale", dtype=np.float32)
        z_x = model.variable(f"{hint}_x_zp", dtype=np.uint8)
        acc = model.variable(f"{hint}_acc", dtype=np.int32)
        acc_f = model.variable(f"{hint}_acc_float", dtype=np.float32)
        scale = model.variable(f"{hint}_scale", dtype=np.float32)
        y = model.variable(f"{hint}_y", dtype=np.float32)
        new = [
            model.node("DynamicQuantizeLinear", [x], [x_q, s_x, z_x], hint=f"{hint}_quant"),
            model.node("MatMulInteger", [x_q, model.constant(f"{hint}_w_q", quantize_array(w, p)),
                                         z_x, model.constant(f"{hint}_w_zp", p.zero_point)],
                       [acc], hint=f"{hint}_int"),
            model.node("Cast", [acc], [acc_f], hint=f"{hint}_cast", attrs={"to": 1}),
            model.node("Mul", [s_x, model.constant(f"{hint}_w_scale", p.scale)], [scale],
                       hint=f"{hint}_scales"),
            model.node("Mul", [acc_f, scale], [y], hint=f"{hint}_rescale"),
        ]
        if node.op == "Gemm" and len(node.inputs) > 2 and not node.inputs[2].is_empty():
            biased = model.variable(f"{hint}_biased", dtype=np.float32)
            new.append(model.node("Add", [y, node.inputs[2]], [biased], hint=f"{hint}_bias"))
            y = biased
        insert_before(model.graph, node, new)
        replace_uses(model.graph, out, y, graph_outputs=True)
