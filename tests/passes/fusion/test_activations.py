"""fuse-activations: HardSigmoid, HardSwish and Mish written op by op become one op."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from onnxpress import optimize
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import explain, find
from onnxpress.passes.base import Context
from onnxpress.passes.fusion.activations import (
    FuseActivations,
    HardSigmoidAffine,
    HardSigmoidRelu6,
    HardSwish,
    Mish,
)
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs, make_model

IR_VERSION = {10: 5, 12: 7, 14: 7, 17: 8, 18: 8}
CONSTANTS = {name: np.array(v, np.float32) for name, v in {
    "zero": 0.0, "one": 1.0, "half": 0.5, "three": 3.0, "six": 6.0, "sixth": 1.0 / 6.0,
    "fifth": 0.2, "two": 2.0}.items()}


def _model(body: str, *, opset: int = 17, outputs: str = "") -> Model:
    lines = "\n    ".join(body.strip().splitlines())
    return make_model(f'<ir_version: {IR_VERSION[opset]}, opset_import: ["": {opset}]>\n'
                      f"g (float[2, 3, 8] x) => (float[2, 3, 8] y{outputs}) {{\n    {lines}\n}}",
                      **CONSTANTS)


def _ops(model: Model) -> Counter:
    return Counter(n.op for n in model.graph.nodes)


def _feeds() -> list[dict[str, np.ndarray]]:
    # Both sides of every kink (-3, 3 for relu6(x + 3); -2.5, 2.5 for 0.2x + 0.5).
    rng = np.random.default_rng(0)
    return [{"x": rng.uniform(-7, 7, (2, 3, 8)).astype(np.float32)} for _ in range(2)]


def _fuse(model: Model):
    reference = model.copy()
    result = FuseActivations().run(model, Context(target=get_target("cpu")))
    assert_same_outputs(reference, model, _feeds(), rtol=1e-5, atol=1e-5)
    return result


HARD_SIGMOID = {
    "x/6+0.5 clip": ("a = Div(x, six)\nb = Add(a, half)\ny = Clip(b, zero, one)",
                     HardSigmoidAffine, {"scale": "div", "clip": "clip"}, 1 / 6),
    "0.2x+0.5 min-max, constants left": (
        "a = Mul(fifth, x)\nb = Add(half, a)\nc = Max(b, zero)\ny = Min(one, c)",
        HardSigmoidAffine, {"scale": "mul", "clip": "min_max"}, 0.2),
    "relu6(x+3)/6": ("a = Add(x, three)\nr = Clip(a, zero, six)\ny = Div(r, six)",
                     HardSigmoidRelu6, {"relu6": "clip", "sixth": "div"}, 1 / 6),
    "relu(x+3) min 6 * 1/6": (
        "a = Add(three, x)\nr0 = Relu(a)\nr = Min(r0, six)\ny = Mul(r, sixth)",
        HardSigmoidRelu6, {"relu6": "relu_min", "sixth": "mul"}, 1 / 6),
}


@pytest.mark.parametrize("case", list(HARD_SIGMOID))
def test_hard_sigmoid_forms_fuse(case):
    body, rule, tags, alpha = HARD_SIGMOID[case]
    model = _model(body)
    [m] = find(model, rule())
    assert m.tags == tags
    result = _fuse(model)
    assert dict(result.stats) == {"fused": 1, rule().name: 1}
    assert _ops(model) == {"HardSigmoid": 1}
    (node,) = model.graph.nodes
    assert node.attrs["alpha"] == pytest.approx(alpha) and node.attrs["beta"] == 0.5


def test_clip_with_attributes_before_opset_11_fuses():
    model = _model("a = Add(x, three)\nr = Clip<min=0.0, max=6.0>(a)\ny = Div(r, six)", opset=10)
    assert dict(_fuse(model).stats) == {"fused": 1, "HardSigmoidRelu6": 1}
    assert _ops(model) == {"HardSigmoid": 1}


HARD_SWISH = {
    "x*HardSigmoid(x)": ("h = HardSigmoid<alpha=0.1666667, beta=0.5>(x)\ny = Mul(x, h)",
                         {"HardSwish": 1}),
    "x*relu6(x+3)/6": ("a = Add(x, three)\nr = Clip(a, zero, six)\nm = Mul(x, r)\ny = Div(m, six)",
                       {"HardSwish": 1}),
    "x*min(max(x+3,0),6)*(1/6)": (
        "a = Add(x, three)\nc = Max(a, zero)\nr = Min(c, six)\nm = Mul(r, x)\ny = Mul(sixth, m)",
        {"HardSwish": 1}),
    # Two steps: the inner relu6(x + 3) / 6 becomes HardSigmoid, then x * HardSigmoid(x).
    "x*(relu6(x+3)/6)": (
        "a = Add(x, three)\nr = Clip(a, zero, six)\nh = Div(r, six)\ny = Mul(x, h)",
        {"HardSigmoidRelu6": 1, "HardSwish": 1}),
}


@pytest.mark.parametrize("case", list(HARD_SWISH))
def test_hard_swish_forms_fuse_at_opset_14(case):
    body, counts = HARD_SWISH[case]
    model = _model(body)
    result = _fuse(model)
    assert dict(result.stats) == {"fused": sum(counts.values()), **counts}
    assert _ops(model) == {"HardSwish": 1}


def test_hard_swish_below_opset_14_becomes_x_times_hard_sigmoid():
    # The Paddle opset-12 export form: x * Clip(x + 3, 0, 6) / 6.
    model = _model(HARD_SWISH["x*relu6(x+3)/6"][0], opset=12)
    assert dict(_fuse(model).stats) == {"fused": 1, "HardSwish": 1}
    assert _ops(model) == {"Mul": 1, "HardSigmoid": 1}
    assert not FuseActivations().run(model, Context(target=get_target("cpu"))).changed


def test_hard_sigmoid_that_is_not_hard_swish_s_stays():
    # Keras' HardSigmoid (alpha 0.2) times x is not HardSwish.
    model = _model("h = HardSigmoid<alpha=0.2, beta=0.5>(x)\ny = Mul(x, h)")
    assert not _fuse(model).changed
    assert "attribute alpha=0.2" in explain(model, HardSwish())


@pytest.mark.parametrize("body", ["s = Softplus(x)\nt = Tanh(s)\ny = Mul(x, t)",
                                  "e = Exp(x)\np = Add(one, e)\ns = Log(p)\nt = Tanh(s)\n"
                                  "y = Mul(t, x)"], ids=["softplus", "log-exp"])
def test_mish_fuses_at_opset_18(body):
    model = _model(body, opset=18)
    assert dict(_fuse(model).stats) == {"fused": 1, "Mish": 1}
    assert _ops(model) == {"Mish": 1}


def test_mish_below_opset_18_reports_why():
    model = _model("s = Softplus(x)\nt = Tanh(s)\ny = Mul(x, t)")
    result = _fuse(model)
    assert not result.changed
    assert result.stats["mish_candidates"] == 1 and "no Mish" in result.stats["reason"]


def test_silu_is_left_alone():
    model = _model("s = Sigmoid(x)\ny = Mul(x, s)", opset=18)
    assert not _fuse(model).changed


@pytest.mark.parametrize("body, wrong", [
    ("a = Add(x, two)\nr = Clip(a, zero, six)\ny = Div(r, six)", "x + 2"),
    ("a = Add(x, three)\nr = Clip(a, zero, three)\ny = Div(r, six)", "clip at 3"),
    ("a = Div(x, six)\nb = Add(a, half)\ny = Clip(b, zero, six)", "clip at 6"),
])
def test_wrong_constants_do_not_fuse(body, wrong):
    model = _model(body)
    assert not _fuse(model).changed, wrong


@pytest.mark.parametrize("body, tensor", [
    ("a = Add(x, three)\nr = Clip(a, zero, six)\ny = Div(r, six)", "r"),
    ("a = Add(x, three)\nr = Clip(a, zero, six)\nm = Mul(x, r)\ny = Div(m, six)", "a"),
    ("a = Add(x, three)\nr = Clip(a, zero, six)\nm = Mul(x, r)\ny = Div(m, six)", "m"),
    ("s = Softplus(x)\nt = Tanh(s)\ny = Mul(x, t)", "t"),
])
def test_intermediate_with_another_consumer_does_not_fuse(body, tensor):
    model = _model(f"{body}\nz = Neg({tensor})", opset=18, outputs=", float[2, 3, 8] z")
    before = _ops(model)
    assert not _fuse(model).changed
    assert _ops(model) == before
    rules = [HardSigmoidRelu6(), HardSwish(), Mish()]
    assert "also read by" in explain(model, rules)


def test_fuse_pipeline_includes_the_activation_fusions():
    model = _model(HARD_SWISH["x*(relu6(x+3)/6)"][0])
    out = optimize(model, ["fuse"])
    assert_same_outputs(model, out, _feeds(), rtol=1e-5, atol=1e-5)
    assert _ops(out) == {"HardSwish": 1}
