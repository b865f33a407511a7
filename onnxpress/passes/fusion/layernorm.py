"""Fuse decomposed layer normalization into ``LayerNormalization`` (opset 17).

Over the last axis of ``x`` (``C`` values), with ``mean`` the mean over that axis:

    d   = x - mean(x)
    var = mean(d²)
    LN(x) = d / sqrt(var + eps) * gamma + beta

Exporters write this out op by op (torch's TorchScript exporter below opset 17, tf2onnx, hand
written models). One rule, with an alternation (`Or`) per part, recognises every combination of

    centre     d = Sub(x, m)  |  Add(x, Neg(m))  |  Add(x, Mul(m, -1))      m = ReduceMean(x)
    square     Pow(d, 2)  |  Mul(d, d)  |  Mul(e, e) with e = Sub(x, m) a second node
               (tf.nn.moments' squared_difference, as tf2onnx lowers it)
    normalise  Div(d, Sqrt(v))  |  Mul(d, Reciprocal(Sqrt(v)))  |  Mul(d, Pow(v, -0.5))
               |  Div(d, Pow(v, 0.5))                               v = Add(ReduceMean(sq), eps)

(commuted Add / Mul operands included, by the matcher; the match's tags say which form it was)
and replace it with
``LayerNormalization(x, ones[C], zeros[C], axis=-1, epsilon=eps)``. Both ReduceMeans must
reduce the last axis only with ``keepdims=1`` — axes as an attribute before opset 18, as a
constant input from 18 on — the ``x`` they read must be one tensor (identity), and the squared
tensor must be the centred one (the same sub-pattern object, so the matcher checks it).

The affine part then folds into the LayerNormalization's constants, one op at a time, for any
LayerNormalization over the last axis (also those the model already had):

    LN(x, s, b) * gamma = LN(x, s * gamma, b * gamma)
    LN(x, s, b) + beta  = LN(x, s, b + beta)

when ``gamma`` / ``beta`` are constants holding one value per channel (a scalar, ``[C]`` or
``[1, …, 1, C]`` of no higher rank than ``x``). Two stages rather than one rule per affine
variant: the driver sweeps the node list in order, so it reaches the normalising Div/Mul before
the affine Mul/Add anyway; folding covers with and without affine, gamma only, commuted
operands and existing LayerNormalization nodes with two rules; and when the normalised tensor
has another reader the normalisation still fuses while the affine ops stay (they cannot be
folded without changing what that reader sees).

Opset: LayerNormalization exists from opset 17. Below that the pass raises the model's opset to
17 only if that changes the meaning of no node (`onnxpress.ir.opset.raise_opset`); otherwise it
fuses nothing and says why in its stats (``reason``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir import analyses
from onnxpress.ir.model import Model
from onnxpress.ir.opset import raise_opset
from onnxpress.ir.pattern import (
    Const,
    Match,
    Or,
    Reject,
    Rule,
    apply_rules,
    candidates,
    constant_value,
    single_values,
    summarize,
)
from onnxpress.passes.base import Context, Pass, PassResult

#: First default-domain opset with LayerNormalization.
LAYERNORM_OPSET = 17

FLOATS = (np.float16, np.float32, np.float64)


def rank(tensor: gs.Tensor) -> int | None:
    """The rank of `tensor` if known (after the `analyses.shapes` annotation)."""
    return None if tensor.shape is None else len(tensor.shape)


def _reduced_axes(node: gs.Node) -> list[int] | None:
    """ReduceMean's axes (attribute before opset 18, input from 18); None if not constant."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and not node.inputs[1].is_empty():
        value = constant_value(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return []


def _last_axis_only(node: gs.Node, x_rank: int | None) -> Reject | None:
    """Why `node` (a ReduceMean) is not a mean over the last axis that keeps it."""
    if not node.attrs.get("keepdims", 1):
        return Reject("drops the reduced axis (keepdims=0)", node)
    axes = _reduced_axes(node)
    if axes is None:
        return Reject("has non-constant axes", node)
    last = {-1} if x_rank is None else {-1, x_rank - 1}
    if len(axes) != 1 or axes[0] not in last:
        return Reject(f"reduces axes {axes}, not the last axis only", node)
    return None


class LayerNorm(Rule):
    """Decomposed normalisation over the last axis → LayerNormalization(x, 1, 0).

    Tags: ``centre``, ``square`` and ``normalize`` name the form matched (module docstring).
    """

    def pattern(self, op, x):
        mean = op.ReduceMean(x, more_inputs=True, label="mean")
        d = Or("centre", sub=op.Sub(x, mean), add_neg=op.Add(x, op.Neg(mean)),
               add_mul_1=op.Add(x, op.Mul(mean, Const(value=-1.0))))
        diff = op.Sub(x, mean)  # tf.nn.moments' squared_difference computes its own x - mean
        square = Or("square", pow=op.Pow(d, Const(value=2.0)), mul=op.Mul(d, d),
                    sqdiff=op.Mul(diff, diff))
        v = op.Add(op.ReduceMean(square, more_inputs=True, label="variance"), Const("eps"))
        return Or("normalize", div_sqrt=op.Div(d, op.Sqrt(v)),
                  mul_reciprocal_sqrt=op.Mul(d, op.Reciprocal(op.Sqrt(v))),
                  mul_pow=op.Mul(d, op.Pow(v, Const(value=-0.5))),
                  div_pow=op.Div(d, op.Pow(v, Const(value=0.5))))

    def check(self, m):
        x_rank = rank(m.x)
        for node in (m.mean, m.variance):
            reason = _last_axis_only(node, x_rank)
            if reason is not None:
                return reason
        if m.eps.dtype not in FLOATS:
            return Reject(f"x is {m.eps.dtype}, not a float type LayerNormalization accepts")
        if x_rank is None or not isinstance(m.x.shape[-1], int):
            return Reject(f"the last dimension of '{m.x.name}' is not static, and "
                          "LayerNormalization needs a scale of that size")
        return single_values(m, m.x)

    def rewrite(self, m, b):
        channels, dtype = m.x.shape[-1], m.eps.dtype
        return b.op("LayerNormalization", m.x, b.const(np.ones(channels, dtype), "scale"),
                    b.const(np.zeros(channels, dtype), "bias"),
                    attrs={"axis": -1, "epsilon": float(m.eps.reshape(-1)[0])})


# --------------------------------------------------------------------------------------------
# Folding the affine ops into LayerNormalization
class _FoldAffine(Rule):
    """What FoldScale and FoldBias share.

    Both need a last-axis LayerNormalization with constant scale and bias, and a constant
    operand ``k`` holding one value per channel.
    """

    def check(self, m):
        x_rank = rank(m.x)
        axis = int(m.ln.attrs.get("axis", -1))
        if axis != -1 and (x_rank is None or axis != x_rank - 1):
            return Reject(f"normalises from axis {axis}, not the last", m.ln)
        if m.scale.ndim != 1:
            return Reject(f"has a scale of rank {m.scale.ndim}, not 1", m.ln)
        if self._bias(m) is None:
            return Reject("has a non-constant bias", m.ln)
        k = m.k
        if k.ndim > (x_rank if x_rank is not None else 1):
            return Reject(f"the constant has rank {k.ndim}, above the rank of '{m.x.name}'")
        if any(dim != 1 for dim in k.shape[:-1]) or (k.ndim and k.shape[-1] not in
                                                     (1, m.scale.size)):
            return Reject(f"the constant of shape {list(k.shape)} is not one value per channel")
        return None

    @staticmethod
    def _bias(m: Match) -> np.ndarray | None:
        """The LayerNormalization's bias (zeros when it has none); None if not constant."""
        inputs = m.ln.inputs
        if len(inputs) < 3 or inputs[2].is_empty():
            return np.zeros_like(m.scale)
        return constant_value(inputs[2])

    @staticmethod
    def _layernorm(m: Match, b, scale: np.ndarray, bias: np.ndarray) -> gs.Variable:
        """The LayerNormalization of `m.x` with new constants (computed in float64)."""
        dtype = m.scale.dtype
        return b.op("LayerNormalization", m.x, b.const(scale.astype(dtype), "scale"),
                    b.const(bias.astype(dtype), "bias"), attrs=dict(m.ln.attrs))


class FoldScale(_FoldAffine):
    """LayerNormalization(x, s, b) * k → LayerNormalization(x, s*k, b*k)."""

    def pattern(self, op, x):
        return op.Mul(op.LayerNormalization(x, Const("scale"), more_inputs=True, label="ln"),
                      Const("k"))

    def rewrite(self, m, b):
        k = m.k.reshape(-1).astype(np.float64)
        return self._layernorm(m, b, m.scale.astype(np.float64) * k,
                               self._bias(m).astype(np.float64) * k)


class FoldBias(_FoldAffine):
    """LayerNormalization(x, s, b) + k → LayerNormalization(x, s, b+k)."""

    def pattern(self, op, x):
        return op.Add(op.LayerNormalization(x, Const("scale"), more_inputs=True, label="ln"),
                      Const("k"))

    def rewrite(self, m, b):
        bias = self._bias(m).astype(np.float64) + m.k.reshape(-1).astype(np.float64)
        return self._layernorm(m, b, m.scale, np.broadcast_to(bias, m.scale.shape))


# --------------------------------------------------------------------------------------------
# Opset
# --------------------------------------------------------------------------------------------
# The pass
@dataclass(frozen=True)
class FuseLayerNorm(Pass):
    """Fuse decomposed layer normalization into LayerNormalization.

    The affine Mul / Add that follow fold into it; the opset is raised to 17 when that is
    safe (see the module docstring).
    """

    name: ClassVar[str] = "fuse-layernorm"

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Fuse every match.

        Returns:
            Stats ``fused``, the count of each rule that fired and ``opset`` ("14 -> 17") if
            it was raised; or, when the opset blocked the fusion, ``candidates`` and
            ``reason`` with ``changed=False``.
        """
        model.analysis(analyses.shapes)
        core = [LayerNorm()]
        raised = {}
        if model.opset < LAYERNORM_OPSET:
            found = candidates(model, core)
            if not found:
                return PassResult(False, {"fused": 0})
            old = model.opset
            reason = raise_opset(model, LAYERNORM_OPSET)
            if reason:
                return PassResult(False, {"fused": 0, "candidates": found, "reason": reason})
            raised = {"opset": f"{old} -> {LAYERNORM_OPSET}"}
        counts = apply_rules(model, [*core, FoldScale(), FoldBias()])
        return PassResult(any(counts.values()) or bool(raised),
                          {**summarize(counts, core), **raised})
