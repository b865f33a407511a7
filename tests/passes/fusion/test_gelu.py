"""fuse-gelu: erf and tanh forms in every association order, safety rules and opset handling."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from onnxpress.ir.io import load
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import explain, find
from onnxpress.passes.base import Context
from onnxpress.passes.cleanup.pipeline import Cleanup
from onnxpress.passes.fusion.gelu import ErfGelu, FuseGelu, TanhGelu
from onnxpress.passes.fusion.layernorm import FuseLayerNorm
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs, make_model

MODELS = Path(__file__).resolve().parents[2] / "models"
IR_VERSION = {13: 7, 20: 9}


def ctx() -> Context:
    return Context(target=get_target("cpu"))


def ops(model: Model) -> Counter:
    return Counter((node.domain or "") + ("." if node.domain else "") + node.op
                   for node in model.graph.nodes)


def feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": (rng.standard_normal((2, 5, 8)) * 2).astype(np.float32)} for _ in range(2)]


def constants(**override: float) -> dict[str, np.ndarray]:
    values = {"sqrt2": 1.4142135, "inv_sqrt2": 0.70710677, "one": 1.0, "half": 0.5, "two": 2.0,
              "three": 3.0, "kappa": 0.044715, "sqrt_2_pi": 0.7978846, **override}
    return {name: np.array(v, np.float32) for name, v in values.items()}


def gelu_text(kind="erf", part="div", outer="xt_half", *, opset=20, commuted=False,
              outputs="", extra="") -> str:
    """A decomposed GELU ``y`` of ``x`` in the given form, as ONNX text."""
    def pair(a, b):  # operands of a commutative op, in the order under test
        return f"{b}, {a}" if commuted else f"{a}, {b}"

    if kind == "erf":
        lines = {"div": ["a = Div(x, sqrt2)"], "mul": [f"a = Mul({pair('x', 'inv_sqrt2')})"]}[part]
        lines += ["e = Erf(a)", f"t = Add({pair('e', 'one')})"]
    else:
        lines = {"pow": ["c = Pow(x, three)"],
                 "mul": ["x2 = Mul(x, x)", f"c = Mul({pair('x2', 'x')})"]}[part]
        lines += [f"k = Mul({pair('c', 'kappa')})", f"i = Add({pair('x', 'k')})",
                  f"j = Mul({pair('i', 'sqrt_2_pi')})", "h = Tanh(j)",
                  f"t = Add({pair('h', 'one')})"]
    lines += {"x_half_t": [f"hx = Mul({pair('x', 'half')})", f"y = Mul({pair('hx', 't')})"],
              "x_t_half": [f"ht = Mul({pair('t', 'half')})", f"y = Mul({pair('x', 'ht')})"],
              "xt_half": [f"xt = Mul({pair('x', 't')})", f"y = Mul({pair('xt', 'half')})"],
              "xt_div_2": [f"xt = Mul({pair('x', 't')})", "y = Div(xt, two)"]}[outer]
    body = "\n    ".join([*lines, *extra.splitlines()])
    return (f'<ir_version: {IR_VERSION[opset]}, opset_import: ["": {opset}]>\n'
            f"g (float[2, 5, 8] x) => (float[2, 5, 8] y{outputs}) {{\n    {body}\n}}")


def fuse(model: Model, **options):
    return FuseGelu(**options).run(model, ctx())


OUTER = ("x_half_t", "x_t_half", "xt_half", "xt_div_2")
#: Every export form, named as the rules' tags name them.
VARIANTS = ([("erf", *v) for v in itertools.product(("div", "mul"), OUTER)]
            + [("tanh", *v) for v in itertools.product(("pow", "mul"), OUTER)])


def rule(kind: str, *_):
    return ErfGelu() if kind == "erf" else TanhGelu()


@pytest.mark.parametrize("commuted", [False, True], ids=["", "commuted"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[",".join(v) for v in VARIANTS])
def test_every_form_fuses_to_onnx_gelu_at_opset_20(variant, commuted):
    model = make_model(gelu_text(*variant, commuted=commuted), **constants())
    reference = model.copy()
    [m] = find(model, rule(*variant))
    part = "argument" if variant[0] == "erf" else "cube"
    cubic = {} if variant[0] == "erf" else {"cubic": "scaled_cube"}
    assert m.tags == {part: variant[1], "outer": variant[2], **cubic}
    result = fuse(model)
    assert result.changed
    assert dict(result.stats) == {"fused": 1, rule(*variant).name: 1}
    assert ops(model) == {"Gelu": 1}
    (gelu,) = model.graph.nodes
    assert gelu.attrs == ({"approximate": "tanh"} if variant[0] == "tanh" else {})
    assert "com.microsoft" not in model.opsets
    assert_same_outputs(reference, model, feeds())


@pytest.mark.parametrize("variant", VARIANTS, ids=[",".join(v) for v in VARIANTS])
def test_every_form_fuses_to_contrib_op_below_opset_20(variant):
    model = make_model(gelu_text(*variant, opset=13), **constants())
    reference = model.copy()
    result = fuse(model)
    assert dict(result.stats) == {"fused": 1, rule(*variant).name: 1}
    op = "Gelu" if variant[0] == "erf" else "FastGelu"
    assert ops(model) == {f"com.microsoft.{op}": 1}
    assert model.opsets == {"": 13, "com.microsoft": 1}
    assert_same_outputs(reference, model, feeds())


TANH_CONSTANTS_LEFT = """<ir_version: 9, opset_import: ["": 20]>
g (float[2, 5, 8] x) => (float[2, 5, 8] y{outputs}) {{
    a = Mul(kappa, x)
    b = Mul(a, x)
    c = Mul(b, x)
    i = Add(x, c)
    j = Mul(sqrt_2_pi, i)
    h = Tanh(j)
    t = Add(one, h)
    hx = Mul(half, x)
    y = Mul(hx, t)
    {extra}
}}"""


def test_tanh_gelu_with_constants_on_the_left_fuses():
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x * x * x))), read left to right.
    model = make_model(TANH_CONSTANTS_LEFT.format(outputs="", extra=""), **constants())
    reference = model.copy()
    [m] = find(model, TanhGelu())
    assert m.tags == {"cubic": "left_to_right", "outer": "x_half_t"}
    assert dict(fuse(model).stats) == {"fused": 1, "TanhGelu": 1}
    assert ops(model) == {"Gelu": 1}
    assert_same_outputs(reference, model, feeds(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tensor", ["a", "b", "j"])
def test_tanh_gelu_constants_left_with_another_consumer_does_not_fuse(tensor):
    model = make_model(TANH_CONSTANTS_LEFT.format(outputs=", float z", extra=f"z = Neg({tensor})"),
                       **constants())
    before = ops(model)
    assert not fuse(model).changed
    assert ops(model) == before


def test_rounded_literals_fuse():
    # 1.4142 and 0.7979 are within the constants' tolerance; the fused op is exact GELU.
    for part, name, value in [("div", "sqrt2", 1.4142), ("mul", "inv_sqrt2", 0.7071)]:
        model = make_model(gelu_text("erf", part), **constants(**{name: value}))
        reference = model.copy()
        assert fuse(model).stats["fused"] == 1
        assert_same_outputs(reference, model, feeds())
    model = make_model(gelu_text("tanh", "pow"), **constants(sqrt_2_pi=0.7979))
    assert fuse(model).stats["fused"] == 1


@pytest.mark.parametrize("kind, part, name, value", [
    ("erf", "div", "half", 0.4), ("erf", "div", "sqrt2", 1.5), ("erf", "mul", "one", 2.0),
    ("tanh", "pow", "half", 0.4), ("tanh", "pow", "kappa", 0.05), ("tanh", "pow", "three", 2.0),
    ("tanh", "mul", "sqrt_2_pi", 0.7)])
def test_wrong_constant_does_not_fuse(kind, part, name, value):
    model = make_model(gelu_text(kind, part), **constants(**{name: value}))
    result = fuse(model)
    assert not result.changed and result.stats == {"fused": 0}
    assert "matches at" not in explain(model, rule(kind, part))


def test_constant_with_many_values_does_not_fuse():
    # A [8] vector of 0.5 matches by value, and would still be fine, but a [1, 2, 5, 8] one
    # would broadcast the output up a rank: constants must be single values.
    consts = constants()
    consts["half"] = np.full((1, 2, 5, 8), 0.5, np.float32)
    model = make_model(gelu_text().replace("float[2, 5, 8] y", "float y"), **consts)
    assert not fuse(model).changed
    assert "holds 80 values" in explain(model, ErfGelu())


def test_two_different_inputs_do_not_fuse():
    text = gelu_text().replace("a = Div(x, sqrt2)", "a = Div(w, sqrt2)").replace(
        "g (float[2, 5, 8] x)", "g (float[2, 5, 8] x, float[2, 5, 8] w)")
    model = make_model(text, **constants())
    assert not fuse(model).changed
    assert "would bind both" in explain(model, ErfGelu())


@pytest.mark.parametrize("kind, tensor", [("erf", "a"), ("erf", "e"), ("erf", "t"),
                                          ("erf", "xt"), ("tanh", "c"), ("tanh", "h")])
def test_intermediate_with_another_consumer_does_not_fuse(kind, tensor):
    part = "div" if kind == "erf" else "pow"
    model = make_model(gelu_text(kind, part, outputs=", float z", extra=f"z = Neg({tensor})"),
                       **constants())
    before = ops(model)
    result = fuse(model)
    assert not result.changed and result.stats == {"fused": 0}
    assert ops(model) == before
    assert "also read by" in explain(model, rule(kind, part))


@pytest.mark.parametrize("tensor", ["e", "t", "xt"])
def test_intermediate_graph_output_does_not_fuse(tensor):
    model = make_model(gelu_text(outputs=f", float {tensor}"), **constants())
    result = fuse(model)
    assert not result.changed and result.stats == {"fused": 0}
    assert "is a graph output" in explain(model, ErfGelu())


def test_input_read_elsewhere_still_fuses():
    # x is the pattern's variable, not an intermediate: other readers do not matter.
    model = make_model(gelu_text(outputs=", float z", extra="z = Neg(x)"), **constants())
    reference = model.copy()
    assert fuse(model).stats["fused"] == 1
    assert ops(model) == {"Gelu": 1, "Neg": 1}
    assert_same_outputs(reference, model, feeds())


def test_contrib_false_below_opset_20_reports_why():
    model = make_model(gelu_text(opset=13), **constants())
    result = fuse(model, contrib=False)
    assert not result.changed
    assert result.stats["fused"] == 0 and result.stats["candidates"] == 1
    assert "contrib=False" in result.stats["reason"]
    assert ops(model)["Erf"] == 1 and "com.microsoft" not in model.opsets


def test_contrib_false_at_opset_20_fuses():
    model = make_model(gelu_text(), **constants())
    assert fuse(model, contrib=False).stats["fused"] == 1


@pytest.mark.parametrize("contrib", [True, False])
def test_nothing_to_fuse(contrib):
    model = make_model("""<ir_version: 7, opset_import: ["": 13]>
        g (float[2, 8] x) => (float[2, 8] y) { y = Erf(x) }""")
    result = fuse(model, contrib=contrib)
    assert not result.changed and result.stats == {"fused": 0}
    assert "com.microsoft" not in model.opsets


# --------------------------------------------------------------------------------------------
# The exported transformers: cleanup, then both fusions
def transformer_feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(0, 100, (2, 7), dtype=np.int64)} for _ in range(2)]


@pytest.mark.parametrize("file, layernorm_stats, gelu_rule", [
    ("torch_transformer.onnx", {"fused": 5, "LayerNorm": 5, "FoldScale": 5,
                                "FoldBias": 5, "opset": "14 -> 17"}, "ErfGelu"),
    # The dynamo export already has LayerNormalization; only GELU is decomposed (as x*(0.5*t)).
    ("torch_transformer_opset18.onnx", {"fused": 0}, "ErfGelu"),
])
def test_torch_transformer(file, layernorm_stats, gelu_rule):
    # Both end below opset 20 (17 and 18), so GELU becomes onnxruntime's contrib Gelu.
    model = load(MODELS / file)
    reference = model.copy()
    Cleanup().run(model, ctx())
    model.invalidate()
    assert dict(FuseLayerNorm().run(model, ctx()).stats) == layernorm_stats
    model.invalidate()
    assert dict(fuse(model).stats) == {"fused": 2, gelu_rule: 2}
    counts = ops(model)
    assert counts["LayerNormalization"] == 5 and counts["com.microsoft.Gelu"] == 2
    assert counts["ReduceMean"] == counts["Erf"] == counts["Sqrt"] == 0
    assert_same_outputs(reference, model, transformer_feeds(), rtol=1e-4, atol=1e-4)
    assert not fuse(model).changed  # idempotent


def test_tensorrt_target_gets_no_contrib_gelu_below_opset_20():
    model = make_model(gelu_text(opset=13), **constants())
    result = FuseGelu().run(model, Context(target=get_target("tensorrt")))
    assert not result.changed and "not used for target 'tensorrt'" in result.stats["reason"]
    assert "com.microsoft" not in model.opsets
