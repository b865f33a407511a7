"""Fuse decomposed layer normalization into ``LayerNormalization`` (opset 17).

Over the last axis of ``x`` (``C`` values), with ``mean`` the mean over that axis:

    d   = x - mean(x)
    var = mean(d²)
    LN(x) = d / sqrt(var + eps) * gamma + beta

Exporters write this out op by op (torch's TorchScript exporter below opset 17, tf2onnx, hand
written models). The rules recognise every combination of

    centre     d = Sub(x, m)  |  Add(x, Neg(m))  |  Add(x, Mul(m, -1))      m = ReduceMean(x)
    square     Pow(d, 2)  |  Mul(d, d)  |  Mul(e, e) with e = Sub(x, m) a second node
               (tf.nn.moments' squared_difference, as tf2onnx lowers it)
    normalise  Div(d, Sqrt(v))  |  Mul(d, Reciprocal(Sqrt(v)))  |  Mul(d, Pow(v, -0.5))
               |  Div(d, Pow(v, 0.5))                               v = Add(ReduceMean(sq), eps)

(commuted Add / Mul operands included, by the matcher) and replace it with
``LayerNormalization(x, ones[C], zeros[C], axis=-1, epsilon=eps)``. Both ReduceMeans must
reduce the last axis only with ``keepdims=1`` — axes as an attribute before opset 18, as a
constant input from 18 on — the ``x`` they read must be one tensor (identity), and the squared
tensor must be the centred one.

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
17 only if that changes the meaning of no node. The oracle is ``onnx.version_converter``: its
per-op adapters encode what changed between versions (RoiAlign's coordinate mode in 16,
BatchNormalization's outputs in 14, …). If converting a copy to 17 leaves every node exactly as
it was, the model is valid and means the same at 17, and only the opset import (and, if needed,
the IR version) changes. Otherwise the pass fuses nothing and says why in its stats
(``reason``) — the converted model is never adopted, as its rewrites are not ours to vouch for.

Helpers shared by the decomposed-op fusions (`VariantRule`, `single_values`, `candidates`,
`summarize`) live here; `onnxpress.passes.fusion.gelu` imports them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx.version_converter
import onnx_graphsurgeon as gs

from onnxpress.ir import analyses
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import Const, Match, Rule, apply_rules, constant_value, find
from onnxpress.passes.base import Context, Pass, PassResult

#: First default-domain opset with LayerNormalization.
LAYERNORM_OPSET = 17

FLOATS = (np.float16, np.float32, np.float64)


# --------------------------------------------------------------------------------------------
# Helpers shared with the other decomposed-op fusions
class VariantRule(Rule):
    """One member of a rule family whose pattern is built from interchangeable parts.

    The matcher has no alternation, so a family such as "LayerNorm with any centring, square
    and normalising form" is one rule per combination: ``cls.family(A, B, ...)`` returns
    ``cls(a, b, ...)`` for every key combination of the part tables ``A, B, ...``, and
    ``pattern`` picks its parts with ``self.variant``. The variant names the rule in stats.
    """

    def __init__(self, *variant: str) -> None:
        """Build the member whose parts are `variant` (one key per table, `family` order)."""
        self.variant = variant

    @property
    def name(self) -> str:
        """``Class[part,part,...]``, e.g. ``LayerNorm[sub,pow,div-sqrt]``."""
        return f"{type(self).__name__}[{','.join(self.variant)}]"

    @classmethod
    def family(cls, *parts: Mapping[str, Callable]) -> list[VariantRule]:
        """One rule per combination of the keys of `parts`, in table order."""
        return [cls(*combo) for combo in itertools.product(*parts)]


def rank(tensor: gs.Tensor) -> int | None:
    """The rank of `tensor` if known (after the `analyses.shapes` annotation)."""
    return None if tensor.shape is None else len(tensor.shape)


def single_values(m: Match, x: gs.Tensor) -> str | None:
    """Why some constant operand of the matched nodes is not a lone value broadcast over `x`.

    The rules compare constants by value with broadcasting, so ``[0.5, 0.5]`` or a ``[1, 1, 1]``
    shaped 0.5 would match too; but the fused op maps `x` elementwise to a tensor of `x`'s
    shape, which is only what the decomposed graph computed when every constant is a single
    value of rank at most `x`'s (a higher rank would have broadcast the output up). An unknown
    rank is taken as 1: rank-0 activations do not occur in practice.
    """
    limit = rank(x) or 1
    for node in m.nodes:
        for tensor in node.inputs:
            value = constant_value(tensor)
            if value is None:
                continue
            if value.size != 1:
                return (f"constant '{tensor.name}' of {node.op} '{node.name}' holds {value.size} "
                        "values, not one")
            if value.ndim > limit:
                return (f"constant '{tensor.name}' of {node.op} '{node.name}' has rank "
                        f"{value.ndim}, above the rank of '{x.name}'")
    return None


def summarize(result: PassResult, fusing: Sequence[Rule]) -> dict[str, int]:
    """The stats of an `apply_rules` run as the fusion passes report them.

    Returns:
        ``fused``, the firings of the `fusing` rules (those that create the fused op), then
        the count of every rule that fired (the zero counts of a large family are noise).
    """
    counts = {name: n for name, n in result.stats.items() if n}
    return {"fused": sum(counts.get(rule.name, 0) for rule in fusing), **counts}


def candidates(model: Model, rules: Sequence[Rule]) -> int:
    """How many nodes some rule would fuse at, found without rewriting.

    A pass that cannot rewrite reports this number next to its reason.
    """
    return len({id(m.root) for rule in rules for m in find(model, rule)})


# --------------------------------------------------------------------------------------------
# LayerNorm parts: each builds one alternative sub-pattern (see the module docstring)
CENTRE = {
    "sub": lambda op, x, mean: op.Sub(x, mean, label="centre"),
    "add-neg": lambda op, x, mean: op.Add(x, op.Neg(mean), label="centre"),
    "add-mul-1": lambda op, x, mean: op.Add(x, op.Mul(mean, Const(value=-1.0)), label="centre"),
}
SQUARE = {
    "pow": lambda op, x, d, mu, diff: op.Pow(d, Const(value=2.0)),
    "mul": lambda op, x, d, mu, diff: op.Mul(d, d),
    # tf.nn.moments: squared_difference(x, mean), which tf2onnx lowers to its own Sub and a Mul.
    "sqdiff": lambda op, x, d, mu, diff: op.Mul(op.Sub(x, mu, label="sqdiff"), diff),
}
NORMALIZE = {
    "div-sqrt": lambda op, d, v: op.Div(d, op.Sqrt(v)),
    "mul-reciprocal-sqrt": lambda op, d, v: op.Mul(d, op.Reciprocal(op.Sqrt(v))),
    "mul-pow": lambda op, d, v: op.Mul(d, op.Pow(v, Const(value=-0.5))),
    "div-pow": lambda op, d, v: op.Div(d, op.Pow(v, Const(value=0.5))),
}

#: A tensor read twice is matched as a node at one use and as a variable at the other (the
#: matcher cannot reuse an op sub-pattern): variable → label of the node it must come from.
TIES = {"d": "centre", "mu": "mean", "diff": "sqdiff"}


def _reduced_axes(node: gs.Node) -> list[int] | None:
    """ReduceMean's axes (attribute before opset 18, input from 18); None if not constant."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and not node.inputs[1].is_empty():
        value = constant_value(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return []


def _last_axis_only(node: gs.Node, x_rank: int | None) -> str | None:
    """Why `node` (a ReduceMean) is not a mean over the last axis that keeps it."""
    if not node.attrs.get("keepdims", 1):
        return f"ReduceMean '{node.name}' drops the reduced axis (keepdims=0)"
    axes = _reduced_axes(node)
    if axes is None:
        return f"ReduceMean '{node.name}' has non-constant axes"
    last = {-1} if x_rank is None else {-1, x_rank - 1}
    if len(axes) != 1 or axes[0] not in last:
        return f"ReduceMean '{node.name}' reduces axes {axes}, not the last axis only"
    return None


class LayerNorm(VariantRule):
    """Decomposed normalisation over the last axis → LayerNormalization(x, 1, 0)."""

    def pattern(self, op, x, d, mu, diff):
        centre, square, normalize = self.variant
        mean = op.ReduceMean(x, more_inputs=True, label="mean")
        variance = op.ReduceMean(SQUARE[square](op, x, d, mu, diff), more_inputs=True,
                                 label="variance")
        return NORMALIZE[normalize](op, CENTRE[centre](op, x, mean),
                                    op.Add(variance, Const("eps")))

    def check(self, m):
        for variable, label in TIES.items():
            tensor = m.bindings.get(variable)
            if tensor is not None and tensor is not m.bindings[label].outputs[0]:
                return (f"'{tensor.name}' is not the output of the {label} node "
                        f"'{m.bindings[label].name}': not a variance of x - mean(x)")
        x_rank = rank(m.x)
        for node in (m.mean, m.variance):
            reason = _last_axis_only(node, x_rank)
            if reason:
                return reason
        if m.eps.dtype not in FLOATS:
            return f"x is {m.eps.dtype}, not a float type LayerNormalization accepts"
        if x_rank is None or not isinstance(m.x.shape[-1], int):
            return (f"the last dimension of '{m.x.name}' is not static, and LayerNormalization "
                    "needs a scale of that size")
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
            return f"LayerNormalization '{m.ln.name}' normalises from axis {axis}, not the last"
        if m.scale.ndim != 1:
            return f"LayerNormalization '{m.ln.name}' has a scale of rank {m.scale.ndim}, not 1"
        if self._bias(m) is None:
            return f"LayerNormalization '{m.ln.name}' has a non-constant bias"
        k = m.k
        if k.ndim > (x_rank if x_rank is not None else 1):
            return f"the constant has rank {k.ndim}, above the rank of '{m.x.name}'"
        if any(dim != 1 for dim in k.shape[:-1]) or (k.ndim and k.shape[-1] not in
                                                     (1, m.scale.size)):
            return f"the constant of shape {list(k.shape)} is not one value per channel"
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
def raise_opset(model: Model, version: int) -> str | None:
    """Raise the default-domain opset of `model` to `version` if no node changes meaning.

    Returns:
        None if the opset was raised (or already high enough), else why it was not.
    """
    if model.opset >= version:
        return None
    before = model.to_onnx()
    try:
        after = onnx.version_converter.convert_version(before, version)
    except Exception as e:  # the converter raises RuntimeError, ValueError, onnx errors …
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"onnx.version_converter cannot convert opset {model.opset} to {version}: {first}"
    # Subgraphs are compared as part of their If / Loop / Scan node's attributes.
    old, new = before.graph.node, after.graph.node
    if len(old) != len(new):
        return (f"opset {model.opset} to {version} changes the graph ({len(old)} nodes become "
                f"{len(new)})")
    rewritten = [f"{a.op_type} '{a.name}'" for a, c in zip(old, new, strict=True)
                 if a != c]
    if rewritten:
        shown = ", ".join(rewritten[:5]) + (" …" if len(rewritten) > 5 else "")
        return (f"{len(rewritten)} node(s) change meaning from opset {model.opset} to {version} "
                f"({shown}); convert the model to opset {version} first")
    model.opsets[""] = version
    # An opset needs an IR version that knows it; keep the source's when it suffices.
    needed = onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid(d, v) for d, v in model.opsets.items()], ignore_unknown=True)
    model.ir_version = max(model.ir_version, needed)
    return None


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
        core = LayerNorm.family(CENTRE, SQUARE, NORMALIZE)
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
        result = apply_rules(model, [*core, FoldScale(), FoldBias()])
        stats = summarize(result, core)
        return PassResult(result.changed or bool(raised), {**stats, **raised})
