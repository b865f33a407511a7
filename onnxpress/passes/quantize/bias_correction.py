"""Bias correction: remove the mean output shift that weight rounding will cause.

Rounding a weight to int8 changes a layer's output by ``ΔW x`` with ``ΔW = Q(W) − W``. Its
expectation over the data is not zero per output channel — rounding errors of one filter do
not cancel against ``E[x]``, which is far from zero after a ReLU — so every channel is shifted
by a constant, which the next layers amplify. Empirical bias correction (Nagel et al., 2019;
AIMET, NNCF's BiasCorrection) subtracts that expectation from the bias:

    b' = b − E[ΔW x] = b − ΔW E[x]

(``E[x]`` per input channel: for a Conv, ``b'_o = b_o − Σ_{c,k} ΔW[o, c, k] E[x_c]`` over the
channels ``c`` of output ``o``'s group; for a Gemm ``b' = b − α ΔB·E[x]``; for a MatMul
followed by the Add of a constant ``[N]``, as transformer exports write a linear layer, the
Add's constant is the bias). Then the quantized
layer's mean output over the data equals the float layer's: ``E[Q(W) x + b'] = E[W x + b]``.
Zero padding makes the border terms slightly smaller than ``ΔW E[x]``; the correction ignores
that, as the references do.

Where it runs, and why before ``quantize-static``: after quantization the bias is an int32
initializer at scale ``s_x·s_w`` and the float weight is gone, so correcting it there means
decoding both from the Q/DQ graph and re-rounding the bias. Before quantization the float bias
is an ordinary initializer and ``Q(W)`` is computed with exactly the parameters the quantizer
will use — `weight_qparams` per output channel (per tensor below opset 13 or with
``per_channel=False``) at ``ctx.target.weight_bits`` — and quantize-static then rounds the
corrected bias once, as any other. ``E[x]`` comes from a `PerChannel` observer on each layer's
input over ``ctx.data``. Pipeline:
``["fuse", "bias-correction", Calibrate(...), "quantize-static"]``; keep ``per_channel`` the
same in both passes. Lossy in float (it changes the float model's outputs by ``−ΔW E[x]``);
what it buys shows only after quantization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import PassError
from onnxpress.ir.edit import consumers
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.calibrate.channels import channel_statistics, require_data
from onnxpress.passes.quantize.qdq import weight_qparams
from onnxpress.passes.quantize.sensitivity import fake_quantize
from onnxpress.passes.sparsity.coupling import set_constant


def _bias_of(node: gs.Node, rules) -> tuple[gs.Node, int] | None:
    """Where the bias of a layer the target quantizes lives: ``(node, 2)`` for a Conv/Gemm
    with a constant bias, ``(add, index)`` for a MatMul whose only reader adds a constant
    ``[N]`` (transformer exports keep MatMul + Add); None if there is no float bias to fix."""
    rule = rules.get(node.op)
    if node.op not in ("Conv", "Gemm", "MatMul") or rule is None or rule.weight is None:
        return None
    if len(node.inputs) < 2 or not isinstance(node.inputs[0], gs.Variable):
        return None
    weight = node.inputs[1]
    if not (isinstance(weight, gs.Constant)
            and np.issubdtype(np.asarray(weight.values).dtype, np.floating)):
        return None
    if node.op == "MatMul":
        readers = consumers(node.outputs[0])
        if np.asarray(weight.values).ndim != 2 or len(readers) != 1 or readers[0].op != "Add":
            return None
        add = readers[0]
        index = 1 if add.inputs[0] is node.outputs[0] else 0
        bias = add.inputs[index]
        size = np.asarray(weight.values).shape[1]
        if isinstance(bias, gs.Constant) and np.asarray(bias.values).shape in ((size,),):
            return add, index
        return None
    if len(node.inputs) < 3 or not isinstance(node.inputs[2], gs.Constant):
        return None
    if node.op == "Gemm" and (node.attrs.get("transA", 0)
                              or float(node.attrs.get("beta", 1.0)) != 1.0
                              or np.asarray(weight.values).ndim != 2):
        return None
    return node, 2


def output_shift(node: gs.Node, delta: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``E[ΔW x]`` per output channel of a Conv, Gemm or MatMul, from the input's channel
    mean."""
    if node.op == "Conv":
        groups = int(node.attrs.get("group", 1))
        grouped = delta.reshape(groups, delta.shape[0] // groups, delta.shape[1], -1).sum(-1)
        return np.einsum("goc,gc->go", grouped, mean.reshape(groups, -1)).reshape(-1)
    if node.op == "MatMul":
        return mean @ delta
    alpha = float(node.attrs.get("alpha", 1.0))
    shift = delta @ mean if node.attrs.get("transB", 0) else mean @ delta
    return alpha * shift


@dataclass(frozen=True)
class BiasCorrection(Pass):
    """Subtract the expected output shift of int8 weight rounding from Conv/Gemm/MatMul biases.

    Attributes:
        per_channel: Whether quantize-static will use per-channel weights (keep it equal to
            that pass's option: the correction is for those rounded weights).
        batch_size: Samples per inference batch of the measurement.
    """

    name: ClassVar[str] = "bias-correction"
    exact: ClassVar[bool] = False

    per_channel: bool = True
    batch_size: int = 32

    def __post_init__(self) -> None:
        """Validate the options now."""
        if self.batch_size < 1:
            raise PassError(f"bias-correction: batch_size must be positive, not "
                            f"{self.batch_size}")

    def requires(self, model: Model, ctx: Context) -> None:
        """Input means are measured on the pipeline's data."""
        require_data(ctx, self.name)

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Measure every layer's input mean, then correct its bias."""
        rules = ctx.target.quantization
        layers = [(n, found) for n in model.graph.nodes
                  if (found := _bias_of(n, rules)) is not None]
        stats = {"layers": 0, "max_shift": 0.0, "weight_bits": ctx.target.weight_bits}
        if not layers:
            stats["reason"] = "no Conv/Gemm/MatMul with a constant weight and bias to quantize"
            return PassResult(False, stats)
        # Channels on axis 1 for Conv ([N, C, …]) and 2-D Gemm inputs, the last for MatMul.
        axes = {n.inputs[0].name: -1 if n.op == "MatMul" else 1 for n, _ in layers}
        means = channel_statistics(model, ctx, axes, batch_size=self.batch_size)
        per_channel = self.per_channel and model.opset >= 13
        for node, (holder, index) in layers:
            weight = np.asarray(node.inputs[1].values)
            axis = rules[node.op].axis(node) if per_channel else None
            rounded = fake_quantize(weight, weight_qparams(weight, axis,
                                                           bits=ctx.target.weight_bits))
            delta = rounded.astype(np.float64) - weight
            shift = output_shift(node, delta, means[node.inputs[0].name].mean())
            bias = np.asarray(holder.inputs[index].values)
            set_constant(model, holder, index,
                         (bias - shift.reshape(bias.shape)).astype(bias.dtype))
            stats["max_shift"] = max(stats["max_shift"], float(np.abs(shift).max(initial=0)))
            stats["layers"] += 1
        stats["max_shift"] = round(stats["max_shift"], 6)
        return PassResult(True, stats)
