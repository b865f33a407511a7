"""Fuse decomposed layer normalization into ``LayerNormalization`` (opset 17).

Over the last axis of ``x`` (``C`` values), with ``mean`` the mean over that axis:

    d   = x - mean(x)
    var = mean(d²)
    LN(x) = d / sqrt(var + eps) * gamma + beta

Exporters write this out op by op (torch's TorchScript exporter below opset 17, tf2onnx, hand
written models). One rule, with an alternation (`Or`) per part, recognises every combination of

    mean       avg(t) = ReduceMean(t)  |  Div(ReduceSum(t), C)  |  Mul(ReduceSum(t), 1/C)
               (jax2tf writes jnp.mean as a sum and a scaling)                m = avg(x)
    centre     d = Sub(x, m)  |  Add(x, Neg(m))  |  Add(x, Mul(m, -1))
    square     Pow(d, 2)  |  Mul(d, d)  |  Mul(e, e) with e = Sub(x, m) a second node
               (tf.nn.moments' squared_difference, as tf2onnx lowers it)
    variance   avg(square)  |  avg(x²) - m²  |  Max(avg(x²) - m², 0)
               (flax: E[x²] - E[x]², clamped at 0), x² and m² as Mul or Pow 2
    normalise  Div(d, Sqrt(v))  |  Mul(d, Reciprocal(Sqrt(v)))  |  Mul(d, Pow(v, -0.5))
               |  Div(d, Pow(v, 0.5))                               v = Add(variance, eps)
               |  Mul(d, Mul(rsqrt(v), gamma))   (flax scales 1/sqrt before the product;
                  gamma, one value per channel, becomes the LayerNormalization's scale)

(commuted Add / Mul operands included, by the matcher; the match's tags say which form it was)
and replace it with
``LayerNormalization(x, ones[C], zeros[C], axis=-1, epsilon=eps)``. Every reduction must
reduce the last axis only with ``keepdims=1`` — axes as an attribute (ReduceMean before opset
18, ReduceSum before 13) or a constant input — a sum's scaling must be ``C`` (or ``1/C``, to
float rounding), the ``x`` they read must be one tensor (identity), and the squared tensor must
be the centred one (the same sub-pattern object, so the matcher checks it). The E[x²] - E[x]²
form equals the centred variance in exact arithmetic; the fused op computes the centred one,
which is the better conditioned of the two.

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

from onnxpress.ir import analyses, ops
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
    single_values,
    summarize,
)
from onnxpress.passes.base import Context, Pass, PassResult

#: First default-domain opset with LayerNormalization.
LAYERNORM_OPSET = 17

#: Relative tolerance of a sum's 1/C scaling: float32 rounding of 1/C, with room for fp16.
COUNT_RTOL = 1e-3


def _last_axis_only(node: gs.Node, x_rank: int | None) -> Reject | None:
    """Why `node` (a ReduceMean / ReduceSum) does not reduce the last axis only, keeping it."""
    if not node.attrs.get("keepdims", 1):
        return Reject("drops the reduced axis (keepdims=0)", node)
    try:
        axes = ops.axes(node, x_rank)
    except ops.DynamicOperand:
        return Reject("has non-constant axes", node)
    if axes is None:
        return Reject("reduces every axis, not the last axis only", node)
    if axes != [-1 if x_rank is None else x_rank - 1]:
        return Reject(f"reduces axes {axes}, not the last axis only", node)
    return None


def _average(op, t, label: str):
    """The mean of `t` over the last axis, as ReduceMean or as a ReduceSum scaled by 1/C.

    The reduction is labelled `label`; the scaling constant binds ``{label}_count`` (a
    divisor) or ``{label}_inverse`` (a factor), which `check` compares with ``C``.
    """
    return Or(f"{label}_by", reduce_mean=op.ReduceMean(t, more_inputs=True, label=label),
              sum_div=op.Div(op.ReduceSum(t, more_inputs=True, label=label),
                             Const(f"{label}_count")),
              sum_mul=op.Mul(op.ReduceSum(t, more_inputs=True, label=label),
                             Const(f"{label}_inverse")))


def _squared(op, t, tag: str):
    """``t * t`` or ``t ** 2``."""
    return Or(tag, mul=op.Mul(t, t), pow=op.Pow(t, Const(value=2.0)))


def _sums_scaled_by_count(m: Match, channels: int) -> Reject | None:
    """Why a ReduceSum's scaling is not 1/C (C = `channels`): then it is no mean."""
    for label in ("mean", "variance"):
        count = m.bindings.get(f"{label}_count")
        inverse = m.bindings.get(f"{label}_inverse")
        scale = 1.0 / float(count.reshape(-1)[0]) if count is not None else (
            float(inverse.reshape(-1)[0]) if inverse is not None else None)
        if scale is not None and not np.isclose(scale * channels, 1.0, rtol=COUNT_RTOL,
                                                atol=0.0):
            return Reject(f"sums over {channels} values are scaled by {scale:.6g}, not 1/"
                          f"{channels}: not a mean", m.bindings[label])
    return None


def _per_channel(k: np.ndarray, x: gs.Tensor, channels: int) -> Reject | None:
    """Why the constant `k` is not one value per channel of `x` (a scalar, ``[C]`` or
    ``[1, …, 1, C]`` of no higher rank than `x`, which would broadcast the output up)."""
    x_rank = ops.rank(x)
    if k.ndim > (x_rank if x_rank is not None else 1):
        return Reject(f"the constant has rank {k.ndim}, above the rank of '{x.name}'")
    if any(dim != 1 for dim in k.shape[:-1]) or (k.ndim and k.shape[-1] not in (1, channels)):
        return Reject(f"the constant of shape {list(k.shape)} is not one value per channel")
    return None


class LayerNorm(Rule):
    """Decomposed normalisation over the last axis → LayerNormalization(x, 1, 0).

    Tags: ``mean_by``, ``centre``, ``variance`` (and ``square`` or ``x_squared`` /
    ``mean_squared``, ``variance_by``) and ``normalize`` name the form matched (module
    docstring).
    """

    def pattern(self, op, x):
        mean = _average(op, x, "mean")
        d = Or("centre", sub=op.Sub(x, mean), add_neg=op.Add(x, op.Neg(mean)),
               add_mul_1=op.Add(x, op.Mul(mean, Const(value=-1.0))))
        diff = op.Sub(x, mean)  # tf.nn.moments' squared_difference computes its own x - mean
        square = Or("square", pow=op.Pow(d, Const(value=2.0)), mul=op.Mul(d, d),
                    sqdiff=op.Mul(diff, diff))
        moments = op.Sub(_average(op, _squared(op, x, "x_squared"), "variance"),
                         _squared(op, mean, "mean_squared"))
        variance = Or("variance", centred=_average(op, square, "variance"), moments=moments,
                      moments_clamped=op.Max(moments, Const(value=0.0)))
        v = op.Add(variance, Const("eps"))
        reciprocal_sqrt = op.Reciprocal(op.Sqrt(v))
        rsqrt = op.Pow(v, Const(value=-0.5))
        return Or("normalize", div_sqrt=op.Div(d, op.Sqrt(v)),
                  mul_reciprocal_sqrt=op.Mul(d, reciprocal_sqrt), mul_pow=op.Mul(d, rsqrt),
                  div_pow=op.Div(d, op.Pow(v, Const(value=0.5))),
                  # flax: d * (rsqrt(var + eps) * scale), the scale before the product
                  scaled=op.Mul(d, op.Mul(Or("rsqrt", reciprocal_sqrt=reciprocal_sqrt,
                                                 pow=rsqrt), Const("gamma"))))

    def check(self, m):
        x_rank = ops.rank(m.x)
        for node in (m.mean, m.variance):
            reason = _last_axis_only(node, x_rank)
            if reason is not None:
                return reason
        if not ops.is_float(m.eps.dtype):
            return Reject(f"x is {m.eps.dtype}, not a float type LayerNormalization accepts")
        if x_rank is None or not isinstance(m.x.shape[-1], int):
            return Reject(f"the last dimension of '{m.x.name}' is not static, and "
                          "LayerNormalization needs a scale of that size")
        gamma = m.tensors.get("gamma")
        if gamma is not None and (reason := _per_channel(m.gamma, m.x, m.x.shape[-1])):
            return reason
        return (single_values(m, m.x, skip=[gamma] if gamma is not None else ())
                or _sums_scaled_by_count(m, m.x.shape[-1]))

    def rewrite(self, m, b):
        channels, dtype = m.x.shape[-1], m.eps.dtype
        scale = (np.broadcast_to(m.gamma.reshape(-1), channels).astype(dtype)
                 if "gamma" in m.bindings else np.ones(channels, dtype))
        return b.op("LayerNormalization", m.x, b.const(scale, "scale"),
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
        x_rank = ops.rank(m.x)
        axis = int(m.ln.attrs.get("axis", -1))
        if axis != -1 and (x_rank is None or axis != x_rank - 1):
            return Reject(f"normalises from axis {axis}, not the last", m.ln)
        if m.scale.ndim != 1:
            return Reject(f"has a scale of rank {m.scale.ndim}, not 1", m.ln)
        if self._bias(m) is None:
            return Reject("has a non-constant bias", m.ln)
        return _per_channel(m.k, m.x, m.scale.size)

    @staticmethod
    def _bias(m: Match) -> np.ndarray | None:
        """The LayerNormalization's bias (zeros when it has none); None if not constant."""
        bias = ops.optional_input(m.ln, 2)
        return np.zeros_like(m.scale) if bias is None else ops.constant_value(bias)

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
