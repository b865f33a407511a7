"""Fold inference BatchNormalization into the linear op that feeds it.

With ``s = gamma / sqrt(var + eps)``, BatchNormalization is the per-channel affine map
``BN(y) = s * y + (beta - mean * s)``. When ``y = W * x + b`` is linear in a constant ``W``:

    BN(W*x + b) = (W * s) * x + ((b - mean) * s + beta)

so the scale multiplies the *output-channel* axis of the weight — axis 0 of a Conv weight
``(Cout, Cin/g, k…)``, axis 1 of a ConvTranspose weight ``(Cin, Cout/g, k…)`` (onnxsim #228),
axis 0 of a Gemm weight with ``transB=1`` and axis 1 with ``transB=0`` (Gemm's channel is
the last axis of its output, so BN must be over a 2-D ``[N, C]`` tensor), the last axis of a
MatMul ``[K, N]`` weight when the BN channel axis is the last one, i.e. for 2-D MatMul
outputs. A BatchNormalization with no such producer becomes ``Mul`` + ``Add`` on constants.

Folding is done in float64 then cast back to the weight's type, and is skipped when the
weight is shared with another node (scaling it would change that node too), when BN is in
training mode, or when the types are not floating point (`onnxpress.ir.ops.FLOAT_DTYPES`:
fp16 and bf16 fold too, as fp16 MatMul + Add already fused into Gemm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir import analyses, ops
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import Builder, Const, Match, Reject, Rule, apply_rules
from onnxpress.passes.base import Context, Pass, PassResult


def _scale_shift(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """BN as ``s * y + t`` per channel, in float64."""
    eps = float(m.bn.attrs.get("epsilon", 1e-5))
    s = m.gamma.astype(np.float64) / np.sqrt(m.var.astype(np.float64) + eps)
    return s, m.beta.astype(np.float64) - m.mean.astype(np.float64) * s


def _bn_check(m: Match) -> Reject | None:
    if m.bn.attrs.get("training_mode", 0):
        return Reject("BatchNormalization is in training mode", m.bn)
    if len(m.bn.outputs) > 1 and any(not t.is_empty() for t in m.bn.outputs[1:]):
        return Reject("BatchNormalization exposes its running statistics", m.bn)
    if not ops.is_float(m.gamma.dtype):
        return Reject(f"BatchNormalization parameters are {m.gamma.dtype}, not float", m.bn)
    return None


def _weight_check(m: Match, node: gs.Node) -> Reject | None:
    """Why the weight ``m.w`` (a constant, by the pattern) of `node` cannot absorb BN."""
    w = m.tensor("w")
    if not isinstance(w, gs.Constant) or not ops.is_float(m.w.dtype):
        return Reject(f"the weight '{w.name}' is not a float initializer", node)
    if any(c is not node for c in w.outputs):
        return Reject(f"the weight '{w.name}' is shared with another node", node)
    bias = ops.optional_input(node, 2)
    if bias is not None and not isinstance(bias, gs.Constant):
        return Reject("the bias is not constant", node)
    return _bn_check(m)


def _bias(node: gs.Node, channels: int) -> np.ndarray:
    """The bias in float64, in its own shape when it broadcasts against the channel axis
    (a Gemm's C may be ``[N]``, ``[1, N]``, ``[M, 1]`` or ``[M, N]``; Conv's is ``[C]``)."""
    given = ops.optional_input(node, 2)
    if given is None:
        return np.zeros(channels, np.float64)
    bias = np.asarray(given.values, np.float64)
    return np.broadcast_to(bias, np.broadcast_shapes(bias.shape, (channels,)))


def _folded(m: Match, b: Builder, node: gs.Node, axis: int) -> tuple[gs.Constant, gs.Constant]:
    """The scaled weight (channel on `axis`) and the new bias, as new initializers named
    after the original weight (users' exclusion lists and reports refer to those names)."""
    weight = node.inputs[1]
    w = np.asarray(weight.values)
    s, t = _scale_shift(m)
    shape = [1] * w.ndim
    shape[axis] = -1
    scale = s.reshape(shape)
    new_w = np.empty_like(w)
    # In float64 a few rows at a time: a whole float64 copy of a large weight would double
    # the memory the fold needs (issue 11, item 8).
    step = max(1, (1 << 22) // max(1, w[:1].size))
    for start in range(0, len(w), step):
        rows = slice(start, start + step)
        part = scale[rows] if axis == 0 else scale
        new_w[rows] = w[rows].astype(np.float64) * part
    new_b = (_bias(node, s.size) * s + t).astype(w.dtype)
    return (b.model.constant(weight.name, new_w),
            b.model.constant(f"{weight.name.removesuffix('weight')}bias", new_b))


class ConvBatchNorm(Rule):
    """Conv → BatchNormalization becomes one Conv with a scaled weight and a new bias."""

    op_type: ClassVar[str] = "Conv"
    axis: ClassVar[int] = 0

    def pattern(self, op, x):
        conv = getattr(op, self.op_type)(x, Const("w"), more_inputs=True, label="conv")
        return op.BatchNormalization(conv, Const("gamma"), Const("beta"), Const("mean"),
                                     Const("var"), label="bn")

    def check(self, m):
        return _weight_check(m, m.conv)

    def rewrite(self, m, b):
        w, bias = _folded(m, b, m.conv, self.axis)
        return b.op(self.op_type, m.x, w, bias, attrs=dict(m.conv.attrs))


class ConvTransposeBatchNorm(ConvBatchNorm):
    """ConvTranspose → BatchNormalization: the channel is axis 1 of the weight."""

    op_type: ClassVar[str] = "ConvTranspose"
    axis: ClassVar[int] = 1

    def check(self, m):
        group = int(m.conv.attrs.get("group", 1))
        if group != 1:
            return Reject("grouped ConvTranspose: output channels span weight axes 0 and 1",
                          m.conv)
        return super().check(m)


class GemmBatchNorm(Rule):
    """Gemm → BatchNormalization over [N, C] becomes one Gemm."""

    def pattern(self, op, x):
        gemm = op.Gemm(x, Const("w"), more_inputs=True, label="gemm")
        return op.BatchNormalization(gemm, Const("gamma"), Const("beta"), Const("mean"),
                                     Const("var"), label="bn")

    def check(self, m):
        if float(m.gemm.attrs.get("alpha", 1.0)) != 1.0 or float(
                m.gemm.attrs.get("beta", 1.0)) != 1.0:
            return Reject("Gemm has alpha or beta other than 1", m.gemm)
        return _weight_check(m, m.gemm)

    def rewrite(self, m, b):
        w, bias = _folded(m, b, m.gemm, 0 if m.gemm.attrs.get("transB", 0) else 1)
        return b.op("Gemm", m.x, w, bias, attrs=dict(m.gemm.attrs))


class MatMulBatchNorm(Rule):
    """MatMul (2-D, constant [K, N] weight) → BatchNormalization becomes MatMul + Add."""

    def pattern(self, op, x):
        matmul = op.MatMul(x, Const("w"), label="matmul")
        return op.BatchNormalization(matmul, Const("gamma"), Const("beta"), Const("mean"),
                                     Const("var"), label="bn")

    def check(self, m):
        if ops.rank(m.x) != 2 or m.w.ndim != 2:
            return Reject("BatchNormalization's channel is the last axis only for 2-D MatMul",
                          m.matmul)
        return _weight_check(m, m.matmul)

    def rewrite(self, m, b):
        w, bias = _folded(m, b, m.matmul, 1)
        return b.op("Add", b.op("MatMul", m.x, w), bias)


class LoneBatchNorm(Rule):
    """A BatchNormalization with nothing to fold into becomes Mul + Add on constants."""

    def pattern(self, op, x):
        return op.BatchNormalization(x, Const("gamma"), Const("beta"), Const("mean"),
                                     Const("var"), label="bn")

    def check(self, m):
        if (ops.rank(m.x) or 0) < 2:
            return Reject("the input rank is unknown, so the channel axis cannot be broadcast",
                          m.bn)
        return _bn_check(m)

    def rewrite(self, m, b):
        s, t = _scale_shift(m)
        shape = (-1,) + (1,) * (ops.rank(m.x) - 2)
        dtype = m.gamma.dtype
        return b.op("Add", b.op("Mul", m.x, b.const(s.reshape(shape).astype(dtype), "scale")),
                    b.const(t.reshape(shape).astype(dtype), "shift"))


@dataclass(frozen=True)
class FuseBatchNorm(Pass):
    """Fold inference BatchNormalization into the preceding Conv, ConvTranspose, Gemm or
    MatMul, or turn it into Mul + Add."""

    name: ClassVar[str] = "fuse-batchnorm"

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Fold every foldable BatchNormalization; lone ones last."""
        model.analysis(analyses.shapes)
        counts = apply_rules(model, [ConvBatchNorm(), ConvTransposeBatchNorm(), GemmBatchNorm(),
                                   MatMulBatchNorm(), LoneBatchNorm()])
        return PassResult(any(counts.values()), counts)
