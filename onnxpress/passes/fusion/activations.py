"""Fuse activations written as elementwise chains into the single ONNX op.

Exporters (Paddle, tf2onnx, hand-written MobileNetV3 / PP-LCNet heads) spell the piecewise
linear and smooth activations out op by op. With ``relu6(t) = clip(t, 0, 6)``:

    HardSigmoid(x; a, b) = clip(a * x + b, 0, 1)
                         = clip(x / 6 + 0.5, 0, 1)  = relu6(x + 3) / 6     (a = 1/6, b = 0.5)
    HardSwish(x)         = x * HardSigmoid(x; 1/6, 0.5) = x * relu6(x + 3) / 6
    Mish(x)              = x * tanh(softplus(x)),   softplus(x) = log(1 + exp(x))

so the rules rewrite

    HardSigmoid  Clip(Add(Mul(x, a) | Div(x, 1/a), b), 0, 1)            → HardSigmoid(x, a, b)
                 Div(relu6(Add(x, 3)), 6)  |  Mul(relu6(Add(x, 3)), 1/6)  → HardSigmoid(x, 1/6, 0.5)
    HardSwish    Mul(x, HardSigmoid(x; 1/6, 0.5))                       → HardSwish(x)  (opset 14)
                 Div(Mul(x, relu6(Add(x, 3))), 6)  |  Mul(Mul(x, relu6(Add(x, 3))), 1/6)
    Mish         Mul(x, Tanh(Softplus(x) | Log(Add(Exp(x), 1))))         → Mish(x)       (opset 18)

where ``clip(t, lo, hi)`` is any of ``Clip(t, lo, hi)`` (inputs, opset ≥ 11), ``Clip`` with
``min`` / ``max`` attributes (before 11), ``Min(Max(t, lo), hi)``, ``Max(Min(t, hi), lo)`` and,
for ``lo = 0``, ``Min(Relu(t), hi)`` (commuted operands included, by the matcher). The driver
sweeps the node list in order, so ``x * (relu6(x + 3) / 6)`` first becomes ``x *
HardSigmoid(x)`` and then HardSwish. Below opset 14 a HardSwish form becomes ``x *
HardSigmoid(x)`` (HardSigmoid exists since opset 6); below 18 Mish stays as it is and the stats
say why. SiLU ``x * Sigmoid(x)`` is left alone: ONNX has no SiLU op, and onnxruntime quantizes
both of its ops (QLinearSigmoid, QLinearMul).

Why: a quantizer puts Q/DQ around every float op it cannot fuse, so a four-op HardSwish costs
four float round trips where the single op costs one. onnxruntime's CPU QDQ transformer
(microsoft/onnxruntime ``onnxruntime/core/optimizer/qdq_transformer/selectors_actions/
qdq_selector_action_transformer.cc`` at 008eeb96, ``UnaryOpQDQRules`` / ``BinaryOpQDQRules``)
has int8 kernels for these activation-like ops, and none for the others:

    =====================================  ==========================================
    op (DQ → op → Q)                       int8 path on onnxruntime CPU
    =====================================  ==========================================
    Sigmoid                                com.microsoft QLinearSigmoid
    LeakyRelu                              com.microsoft QLinearLeakyRelu
    Softmax                                com.microsoft QLinearSoftmax
    AveragePool, GlobalAveragePool         com.microsoft QLinearAveragePool / …Global…
    Add, Mul                               com.microsoft QLinearAdd / QLinearMul
    Relu, Clip                             none needed: absorbed into the Q before them
                                           when its range makes them redundant
    HardSigmoid, HardSwish, Mish, Gelu,    none: run in float between DQ and Q, so one
    Tanh, Erf, Softplus                    fused op is one round trip instead of several
    =====================================  ==========================================

Exact: each fused op computes the same function (to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnxpress.ir import analyses
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import (
    Const,
    Or,
    Reject,
    Rule,
    apply_rules,
    candidates,
    single_values,
    summarize,
)
from onnxpress.passes.base import Context, Pass, PassResult

#: First default-domain opsets with HardSwish and Mish.
HARDSWISH_OPSET = 14
MISH_OPSET = 18

#: Relative tolerance of the constants (1/6 written as 0.1666667 or in float16).
RTOL = 5e-4

SIXTH = 1.0 / 6.0


def _const(value: float) -> Const:
    return Const(value=value, rtol=RTOL)


def _close_to(value: float):
    """An attribute predicate: the attribute is present and within `RTOL` of `value`."""
    return lambda have: have is not None and bool(np.isclose(have, value, rtol=RTOL, atol=1e-7))


def _clip(op, t, lo: float, hi: float, tag: str):
    """``clip(t, lo, hi)`` in every form exporters write (module docstring)."""
    forms = {
        "clip": op.Clip(t, _const(lo), _const(hi)),
        "clip_attrs": op.Clip(t, attrs={"min": _close_to(lo), "max": _close_to(hi)}),
        "min_max": op.Min(op.Max(t, _const(lo)), _const(hi)),
        "max_min": op.Max(op.Min(t, _const(hi)), _const(lo)),
    }
    if lo == 0.0:
        forms["relu_min"] = op.Min(op.Relu(t), _const(hi))
    return Or(tag, **forms)


def _relu6_sixth(op, t, tag: str):
    """``t / 6`` or ``t * (1/6)``: the last step of relu6(x + 3) / 6 forms."""
    return Or(tag, div=op.Div(t, _const(6.0)), mul=op.Mul(t, _const(SIXTH)))


def _relu6_of_x_plus_3(op, x):
    return _clip(op, op.Add(x, _const(3.0)), 0.0, 6.0, "relu6")


class _Elementwise(Rule):
    """Constants must be single values, so the fused op's output has the shape of ``x``."""

    def check(self, m):
        return single_values(m, m.x)


class HardSigmoidAffine(_Elementwise):
    """clip(a*x + b, 0, 1), a*x written as Mul(x, a) or Div(x, 1/a) → HardSigmoid(x, a, b).

    Tags: ``scale``, ``clip``.
    """

    def pattern(self, op, x):
        scaled = Or("scale", mul=op.Mul(x, Const("alpha")), div=op.Div(x, Const("divisor")))
        return _clip(op, op.Add(scaled, Const("beta")), 0.0, 1.0, "clip")

    def check(self, m):
        if "divisor" in m.bindings and not np.all(m.divisor):
            return Reject("divides by zero")
        return super().check(m)

    def rewrite(self, m, b):
        alpha = (float(m.alpha.reshape(-1)[0]) if "alpha" in m.bindings
                 else 1.0 / float(m.divisor.reshape(-1)[0]))
        return b.op("HardSigmoid", m.x, attrs={"alpha": alpha,
                                                 "beta": float(m.beta.reshape(-1)[0])})


class HardSigmoidRelu6(_Elementwise):
    """relu6(x + 3) / 6 → HardSigmoid(x, 1/6, 0.5). Tags: ``relu6``, ``sixth``."""

    def pattern(self, op, x):
        return _relu6_sixth(op, _relu6_of_x_plus_3(op, x), "sixth")

    def rewrite(self, m, b):
        return b.op("HardSigmoid", m.x, attrs={"alpha": SIXTH, "beta": 0.5})


class HardSwish(_Elementwise):
    """x * HardSigmoid(x; 1/6, 0.5) and x * relu6(x + 3) / 6 → HardSwish(x).

    Below opset 14 the result is ``x * HardSigmoid(x)``. Tags: ``form`` (and ``relu6``,
    ``sixth``).
    """

    def pattern(self, op, x):
        hard_sigmoid = op.HardSigmoid(x, attrs={"alpha": _close_to(SIXTH),
                                                "beta": _close_to(0.5)})
        return Or("form", hard_sigmoid=op.Mul(x, hard_sigmoid),
                  relu6=_relu6_sixth(op, op.Mul(x, _relu6_of_x_plus_3(op, x)), "sixth"))

    def rewrite(self, m, b):
        if b.opset >= HARDSWISH_OPSET:
            return b.op("HardSwish", m.x)
        return b.op("Mul", m.x, b.op("HardSigmoid", m.x, attrs={"alpha": SIXTH, "beta": 0.5}))


class _HardSwishBelow14(HardSwish):
    """HardSwish's relu6 forms only, rewritten to x * HardSigmoid(x) (no HardSwish op yet)."""

    @property
    def name(self) -> str:
        """Counted as HardSwish: the same forms, one op fewer below opset 14."""
        return "HardSwish"

    def check(self, m):
        if m.tags["form"] == "hard_sigmoid":
            return Reject(f"x * HardSigmoid(x) is the shortest form below opset "
                          f"{HARDSWISH_OPSET}")
        return super().check(m)


class Mish(_Elementwise):
    """x * tanh(softplus(x)) → Mish(x) (opset 18). Tags: ``softplus``."""

    def pattern(self, op, x):
        softplus = Or("softplus", op=op.Softplus(x),
                      log_exp=op.Log(op.Add(op.Exp(x), _const(1.0))))
        return op.Mul(x, op.Tanh(softplus))

    def rewrite(self, m, b):
        return b.op("Mish", m.x)


@dataclass(frozen=True)
class FuseActivations(Pass):
    """Fuse decomposed HardSigmoid, HardSwish and Mish into their ONNX ops."""

    name: ClassVar[str] = "fuse-activations"

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Fuse every match.

        Returns:
            Stats ``fused`` and the count of each rule that fired; below opset 18 with Mish
            candidates, also ``mish_candidates`` and ``reason``.
        """
        model.analysis(analyses.shapes)
        rules: list[Rule] = [HardSigmoidAffine(), HardSigmoidRelu6()]
        hard_swish = [HardSwish()] if model.opset >= HARDSWISH_OPSET else [_HardSwishBelow14()]
        extra = {}
        if model.opset >= MISH_OPSET:
            rules.append(Mish())
        elif found := candidates(model, [Mish()]):
            extra = {"mish_candidates": found,
                     "reason": f"opset {model.opset} has no Mish (added in {MISH_OPSET})"}
        counts = apply_rules(model, [*rules, *hard_swish])
        return PassResult(any(counts.values()), {**summarize(counts, [*rules, *hard_swish]),
                                                 **extra})
