"""Fuse decomposed GELU into one ``Gelu`` op.

GELU(x) = x * Phi(x), with Phi the standard normal CDF, written exactly with erf or
approximated with tanh:

    exact  GELU(x) = 0.5 * x * (1 + erf(x / sqrt(2)))
    tanh   GELU(x) = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))

Exporters emit these op by op, in several association orders. Two rules, one per form, with
an alternation (`Or`) per part, recognise every combination of

    erf term    Add(Erf(Div(x, sqrt 2)), 1)  |  Add(Erf(Mul(x, 1/sqrt 2)), 1)
    tanh term   Add(Tanh(Mul(Add(x, cubic), sqrt(2/pi))), 1)
                with cubic = Mul(cube, 0.044715)  |  Mul(Mul(Mul(x, 0.044715), x), x)
                (``0.044715 * x * x * x`` read left to right, as jax and hand-written
                exports have it), cube = Pow(x, 3)  |  Mul(x, Mul(x, x))
    outer       Mul(Mul(x, 0.5), t)  |  Mul(x, Mul(t, 0.5))  |  Mul(Mul(x, t), 0.5)
                |  Div(Mul(x, t), 2)

(commuted Add / Mul operands included, by the matcher; the match's tags say which form it
was) where every ``x`` is the same tensor.
Constants are compared with a relative tolerance of `RTOL`, which accepts float16 roundings
and short literals such as 1.4142 or 0.7071. The fused op computes with the exact constants:
for 1.4142 the output moves by at most 3e-6, and by at most 1.5e-4 for a constant a whole
`RTOL` off (float16, whose own rounding error is larger). Every constant must be a single
value (`single_values`), so the fused op's output has the shape of ``x``.

The replacement depends on the model's opset:

    opset >= 20   Gelu(x)  /  Gelu(x, approximate="tanh")          (ONNX)
    opset <  20   com.microsoft Gelu(x)  /  com.microsoft FastGelu(x)  (onnxruntime contrib ops)

Raising the opset to 20 is not attempted: onnxruntime runs the contrib ops on every target
onnxpress compiles for, on CPU and CUDA alike. With ``contrib=False`` (a model meant for another
runtime) a model below opset 20 is left as it is and the stats say why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from onnxpress.ir import analyses
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import Const, Or, Rule, apply_rules, candidates, single_values, summarize
from onnxpress.passes.base import Context, Pass, PassResult

#: First default-domain opset with Gelu.
GELU_OPSET = 20

#: Relative tolerance of the constants: above float16's rounding (2**-11 ≈ 4.9e-4).
RTOL = 5e-4

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _const(value: float) -> Const:
    return Const(value=value, rtol=RTOL)


def _outer(op, x, t):
    """X * 0.5 * t for the term t = 1 + erf(...) or 1 + tanh(...), in any association."""
    return Or("outer", x_half_t=op.Mul(op.Mul(x, _const(0.5)), t),
              x_t_half=op.Mul(x, op.Mul(t, _const(0.5))),
              xt_half=op.Mul(op.Mul(x, t), _const(0.5)),
              xt_div_2=op.Div(op.Mul(x, t), _const(2.0)))


class _Gelu(Rule):
    """What both forms share: single-valued constants."""

    def check(self, m):
        return single_values(m, m.x)


class ErfGelu(_Gelu):
    """0.5 * x * (1 + erf(x / sqrt 2)) → Gelu(x). Tags: ``argument``, ``outer``."""

    def pattern(self, op, x):
        argument = Or("argument", div=op.Div(x, _const(SQRT2)),
                      mul=op.Mul(x, _const(1.0 / SQRT2)))
        return _outer(op, x, op.Add(op.Erf(argument), _const(1.0)))

    def rewrite(self, m, b):
        if b.opset >= GELU_OPSET:
            return b.op("Gelu", m.x)
        return b.op("Gelu", m.x, domain="com.microsoft")


class TanhGelu(_Gelu):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) → Gelu(x, approximate="tanh").

    Tags: ``cubic`` (and ``cube``), ``outer``.
    """

    def pattern(self, op, x):
        cube = Or("cube", pow=op.Pow(x, _const(3.0)), mul=op.Mul(x, op.Mul(x, x)))
        cubic = Or("cubic", scaled_cube=op.Mul(cube, _const(0.044715)),
                   left_to_right=op.Mul(op.Mul(op.Mul(x, _const(0.044715)), x), x))
        inner = op.Add(x, cubic)
        term = op.Add(op.Tanh(op.Mul(inner, _const(SQRT_2_OVER_PI))), _const(1.0))
        return _outer(op, x, term)

    def rewrite(self, m, b):
        if b.opset >= GELU_OPSET:
            return b.op("Gelu", m.x, attrs={"approximate": "tanh"})
        return b.op("FastGelu", m.x, domain="com.microsoft")


@dataclass(frozen=True)
class FuseGelu(Pass):
    """Fuse decomposed GELU (erf or tanh form) into Gelu.

    Below opset 20 the fused op is onnxruntime's com.microsoft Gelu / FastGelu.

    Attributes:
        contrib: Below opset 20, emit the com.microsoft ops. False leaves such models unfused
            and reports why. None (default): only when the target runs onnxruntime's own
            kernels (cpu, cuda) — TensorRT would run the contrib op outside its engine.
    """

    name: ClassVar[str] = "fuse-gelu"
    contrib: bool | None = None

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Fuse every match.

        Returns:
            Stats ``fused`` and the count of each rule that fired; or, when the opset blocked
            the fusion, ``candidates`` and ``reason`` with ``changed=False``.
        """
        model.analysis(analyses.shapes)
        rules = [ErfGelu(), TanhGelu()]
        contrib = ctx.target.onnxruntime_kernels if self.contrib is None else self.contrib
        if model.opset < GELU_OPSET and not contrib:
            found = candidates(model, rules)
            if found:
                return PassResult(False, {
                    "fused": 0, "candidates": found,
                    "reason": f"opset {model.opset} has no Gelu (added in {GELU_OPSET}) and "
                              f"onnxruntime's com.microsoft Gelu is not used for target "
                              f"'{ctx.target.name}' (contrib={self.contrib})"})
            return PassResult(False, {"fused": 0})
        counts = apply_rules(model, rules)
        return PassResult(any(counts.values()), summarize(counts, rules))
