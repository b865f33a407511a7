"""fuse-layernorm: every decomposed form, the safety rules, affine folding and opset handling."""

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
from onnxpress.passes.fusion.layernorm import FoldScale, FuseLayerNorm, LayerNorm
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs, make_model

MODELS = Path(__file__).resolve().parents[2] / "models"
CHANNELS = 8


def ctx() -> Context:
    return Context(target=get_target("cpu"))


def ops(model: Model) -> Counter:
    return Counter(node.op for node in model.graph.nodes)


def feeds() -> list[dict[str, np.ndarray]]:
    # A non-zero mean and a spread far from 1, so a wrong centring or scaling shows.
    rng = np.random.default_rng(0)
    return [{"x": (rng.standard_normal((2, 5, CHANNELS)) * 3 + 1).astype(np.float32)}
            for _ in range(2)]


def constants(**extra: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "gamma": rng.uniform(0.5, 1.5, CHANNELS).astype(np.float32),
        "beta": rng.normal(0.0, 0.1, CHANNELS).astype(np.float32),
        "eps": np.array(1e-5, np.float32), "two": np.array(2.0, np.float32),
        "minus_one": np.array(-1.0, np.float32), "half": np.array(0.5, np.float32),
        "minus_half": np.array(-0.5, np.float32), "axes": np.array([-1], np.int64), **extra}


def layernorm_text(centre="sub", square="pow", normalize="div_sqrt", *, opset=17, affine=True,
                   commuted=False, axes=-1, keepdims=1, shape="2, 5, 8", inputs="", outputs="",
                   extra="", mean_of="x") -> str:
    """A decomposed LayerNorm ``y`` of ``x`` in the given form, as ONNX text."""
    def pair(a, b):  # operands of a commutative op, in the order under test
        return f"{b}, {a}" if commuted else f"{a}, {b}"

    def reduce(out, inp):
        if opset >= 18:
            return f"{out} = ReduceMean<keepdims={keepdims}>({inp}, axes)"
        return f"{out} = ReduceMean<axes=[{axes}], keepdims={keepdims}>({inp})"

    lines = [reduce("mean", mean_of)]
    lines += {"sub": ["d = Sub(x, mean)"],
              "add_neg": ["nm = Neg(mean)", f"d = Add({pair('x', 'nm')})"],
              "add_mul_1": [f"nm = Mul({pair('mean', 'minus_one')})",
                            f"d = Add({pair('x', 'nm')})"]}[centre]
    lines += {"pow": ["sq = Pow(d, two)"], "mul": ["sq = Mul(d, d)"],
              "sqdiff": ["sd = Sub(x, mean)", "sq = Mul(sd, sd)"]}[square]
    lines += [reduce("var", "sq"), f"ve = Add({pair('var', 'eps')})"]
    n = "y" if not affine else "n"
    lines += {"div_sqrt": ["std = Sqrt(ve)", f"{n} = Div(d, std)"],
              "mul_reciprocal_sqrt": ["std = Sqrt(ve)", "inv = Reciprocal(std)",
                                      f"{n} = Mul({pair('d', 'inv')})"],
              "mul_pow": ["inv = Pow(ve, minus_half)", f"{n} = Mul({pair('d', 'inv')})"],
              "div_pow": ["std = Pow(ve, half)", f"{n} = Div(d, std)"]}[normalize]
    if affine:
        lines += [f"s = Mul({pair('n', 'gamma')})", f"y = Add({pair('s', 'beta')})"]
    if axes != -1 and opset >= 18:
        raise ValueError("give axes through the `axes` initializer from opset 18")
    body = "\n    ".join([*lines, *extra.splitlines()])
    return (f'<ir_version: 8, opset_import: ["": {opset}]>\n'
            f"g (float[{shape}] x{inputs}) => (float[{shape}] y{outputs}) {{\n    {body}\n}}")


def fuse(model: Model):
    return FuseLayerNorm().run(model, ctx())


#: Every export form: centre × square × normalise, named as LayerNorm's tags name them.
VARIANTS = list(itertools.product(("sub", "add_neg", "add_mul_1"), ("pow", "mul", "sqdiff"),
                                  ("div_sqrt", "mul_reciprocal_sqrt", "mul_pow", "div_pow")))


@pytest.mark.parametrize("commuted", [False, True], ids=["", "commuted"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[",".join(v) for v in VARIANTS])
def test_every_form_fuses_with_its_affine(variant, commuted):
    model = make_model(layernorm_text(*variant, commuted=commuted), **constants())
    reference = model.copy()
    [m] = find(model, LayerNorm())
    assert m.tags == {**dict(zip(("centre", "square", "normalize"), variant, strict=True)),
                      "mean_by": "reduce_mean", "variance": "centred",
                      "variance_by": "reduce_mean"}
    result = fuse(model)
    assert result.changed
    assert dict(result.stats) == {"fused": 1, "LayerNorm": 1, "FoldScale": 1, "FoldBias": 1}
    assert ops(model) == {"LayerNormalization": 1}
    ln = model.graph.nodes[0]
    assert ln.attrs["axis"] == -1 and ln.attrs["epsilon"] == pytest.approx(1e-5)
    np.testing.assert_allclose(ln.inputs[1].values, constants()["gamma"])
    np.testing.assert_allclose(ln.inputs[2].values, constants()["beta"])
    assert_same_outputs(reference, model, feeds())


def test_without_affine_scale_is_ones_and_bias_zeros():
    model = make_model(layernorm_text(affine=False), **constants())
    reference = model.copy()
    result = fuse(model)
    assert dict(result.stats) == {"fused": 1, "LayerNorm": 1}
    (ln,) = model.graph.nodes
    np.testing.assert_array_equal(ln.inputs[1].values, np.ones(CHANNELS, np.float32))
    np.testing.assert_array_equal(ln.inputs[2].values, np.zeros(CHANNELS, np.float32))
    assert_same_outputs(reference, model, feeds())


def test_axes_as_input_from_opset_18():
    model = make_model(layernorm_text("sub", "mul", "mul_pow", opset=18), **constants())
    reference = model.copy()
    assert fuse(model).stats["fused"] == 1
    assert ops(model) == {"LayerNormalization": 1}
    assert_same_outputs(reference, model, feeds())


def test_positive_last_axis_fuses():
    model = make_model(layernorm_text(axes=2), **constants())
    reference = model.copy()
    assert fuse(model).stats["fused"] == 1
    assert_same_outputs(reference, model, feeds())


@pytest.mark.parametrize("axes, opset", [([1], 17), ([-2], 17), ([-2, -1], 17), ([1], 18)])
def test_reduction_over_other_axes_does_not_fuse(axes, opset):
    if opset >= 18:  # axes are an input
        model = make_model(layernorm_text(opset=opset), **constants(axes=np.array(axes)))
    else:
        model = make_model(layernorm_text(axes=", ".join(map(str, axes))), **constants())
    before = ops(model)
    result = fuse(model)
    assert not result.changed and result.stats == {"fused": 0}
    assert ops(model) == before
    assert "not the last axis only" in explain(model, LayerNorm())


def test_mean_without_kept_axis_does_not_fuse():
    # [8, 8] minus a [8] mean broadcasts the row means along columns: valid, but not LN.
    model = make_model(layernorm_text(shape="8, 8", keepdims=0), **constants())
    assert not fuse(model).changed
    assert "keepdims=0" in explain(model, LayerNorm())


@pytest.mark.parametrize("constant, value", [("two", 3.0), ("minus_half", -0.4)])
def test_wrong_constant_does_not_fuse(constant, value):
    normalize = "mul_pow" if constant == "minus_half" else "div_sqrt"
    model = make_model(layernorm_text(normalize=normalize),
                       **constants(**{constant: np.array(value, np.float32)}))
    result = fuse(model)
    assert not result.changed and result.stats == {"fused": 0}
    assert "is not" in explain(model, LayerNorm())


def test_mean_of_another_tensor_does_not_fuse():
    # ReduceMean reads x2 = x + 0, Sub reads x: two tensors, so no LayerNorm of either.
    text = layernorm_text(mean_of="x2").replace("mean = ", "x2 = Add(x, zero)\n    mean = ", 1)
    model = make_model(text, **constants(zero=np.array(0.0, np.float32)))
    assert not fuse(model).changed


def test_variance_of_another_tensor_does_not_fuse():
    # mean(x²) instead of mean((x - mean)²): the square must read the centred tensor itself.
    text = layernorm_text().replace("sq = Pow(d, two)", "sq = Pow(x, two)")
    model = make_model(text, **constants())
    assert not fuse(model).changed
    assert "which the same sub-pattern Or(centre: sub | add_neg | add_mul_1) matched" in (
        explain(model, LayerNorm()))


def test_reversed_sub_does_not_fuse():
    # mean - x normalises to -LN(x): Sub is not commutative.
    model = make_model(layernorm_text().replace("d = Sub(x, mean)", "d = Sub(mean, x)"),
                       **constants())
    assert not fuse(model).changed


@pytest.mark.parametrize("tensor", ["mean", "d", "var", "std"])
def test_intermediate_with_another_consumer_does_not_fuse(tensor):
    model = make_model(layernorm_text(outputs=", float z", extra=f"z = Neg({tensor})"),
                       **constants())
    reference = model.copy()
    result = fuse(model)
    assert not result.changed and result.stats == {"fused": 0}
    assert ops(model) == ops(reference)
    assert "also read by" in explain(model, LayerNorm())


@pytest.mark.parametrize("tensor", ["mean", "var", "std"])
def test_intermediate_graph_output_does_not_fuse(tensor):
    model = make_model(layernorm_text(outputs=f", float {tensor}"), **constants())
    result = fuse(model)
    assert not result.changed and result.stats == {"fused": 0}
    assert "is a graph output" in explain(model, LayerNorm())


def test_normalized_tensor_read_elsewhere_keeps_the_affine_ops():
    # The normalisation fuses; folding gamma/beta would change what the other reader sees.
    model = make_model(layernorm_text(outputs=", float[2, 5, 8] z", extra="z = Neg(n)"),
                       **constants())
    reference = model.copy()
    result = fuse(model)
    assert dict(result.stats) == {"fused": 1, "LayerNorm": 1}
    assert ops(model) == {"LayerNormalization": 1, "Mul": 1, "Add": 1, "Neg": 1}
    assert_same_outputs(reference, model, feeds())


def test_dynamic_last_dimension_does_not_fuse():
    model = make_model(layernorm_text(shape="2, 5, C"), **constants())
    assert not fuse(model).changed
    assert "not static" in explain(model, LayerNorm())


def test_existing_layernorm_absorbs_constant_scale_and_shift():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2, 5, 8] x) => (float[2, 5, 8] y) {
        n = LayerNormalization<axis=-1, epsilon=0.001>(x, scale)
        s = Mul(k, n)
        y = Add(s, shift)
    }"""
    rng = np.random.default_rng(2)
    model = make_model(text, scale=rng.uniform(0.5, 1.5, 8).astype(np.float32),
                       k=np.full((1, 1, 8), 1.5, np.float32), shift=np.float32(0.25))
    reference = model.copy()
    result = fuse(model)
    assert dict(result.stats) == {"fused": 0, "FoldScale": 1, "FoldBias": 1}
    assert result.changed
    (ln,) = model.graph.nodes
    assert ln.attrs["epsilon"] == pytest.approx(1e-3)
    assert_same_outputs(reference, model, feeds())


@pytest.mark.parametrize("shape, reason", [((5, 1), "not one value per channel"),
                                           ((2, 5, 8), "not one value per channel"),
                                           ((1, 1, 1, 8), "above the rank")])
def test_constant_that_is_not_per_channel_is_not_folded(shape, reason):
    # Per position, per element, or of higher rank than x (which broadcasts the output up).
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2, 5, 8] x) => (float y) {
        n = LayerNormalization<axis=-1>(x, scale)
        y = Mul(n, k)
    }"""
    model = make_model(text, scale=np.ones(8, np.float32),
                       k=np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
    assert not fuse(model).changed
    assert reason in explain(model, FoldScale())


# --------------------------------------------------------------------------------------------
# jax2tf / flax forms: means as ReduceSum and a scaling, variance as E[x²] - E[x]²
JAX_FORMS = {
    # mean = sum(x) / C; var = sum(d * d) / C
    "sum_div": ("s1 = ReduceSum<keepdims=1>(x, axes)\nmean = Div(s1, count)\nd = Sub(x, mean)\n"
                "sq = Mul(d, d)\ns2 = ReduceSum<keepdims=1>(sq, axes)\nvar = Div(s2, count)",
                {"mean_by": "sum_div", "variance": "centred", "variance_by": "sum_div"}),
    # constants on the left: mean = (1/C) * sum(x); var = (1/C) * sum(x * x) - mean * mean
    "sum_mul_moments": ("s1 = ReduceSum<keepdims=1>(x, axes)\nmean = Mul(inverse, s1)\n"
                        "d = Sub(x, mean)\nxx = Mul(x, x)\ns2 = ReduceSum<keepdims=1>(xx, axes)\n"
                        "ex2 = Mul(inverse, s2)\nmm = Mul(mean, mean)\nvar = Sub(ex2, mm)",
                        {"mean_by": "sum_mul", "variance": "moments", "variance_by": "sum_mul",
                         "x_squared": "mul", "mean_squared": "mul"}),
    # flax: var = max(0, E[x²] - E[x]²), with ReduceMean and Pow
    "moments_clamped": ("mean = ReduceMean<axes=[-1]>(x)\nd = Sub(x, mean)\n"
                        "xx = Pow(x, two)\nex2 = ReduceMean<axes=[-1]>(xx)\n"
                        "mm = Pow(mean, two)\nv0 = Sub(ex2, mm)\nvar = Max(zero, v0)",
                        {"mean_by": "reduce_mean", "variance": "moments_clamped",
                         "variance_by": "reduce_mean", "x_squared": "pow",
                         "mean_squared": "pow"}),
}


def jax_text(form: str, *, outputs: str = "", extra: str = "", count: float = CHANNELS) -> str:
    body = JAX_FORMS[form][0] + ("\nve = Add(eps, var)\nstd = Sqrt(ve)\ninv = Reciprocal(std)\n"
                                 "n = Mul(d, inv)\ns = Mul(gamma, n)\ny = Add(beta, s)\n"
                                 + extra)
    lines = "\n    ".join(body.splitlines())
    return ('<ir_version: 8, opset_import: ["": 17]>\n'
            f"g (float[2, 5, 8] x) => (float[2, 5, 8] y{outputs}) {{\n    {lines}\n}}")


def jax_constants(count: float = CHANNELS) -> dict[str, np.ndarray]:
    return constants(count=np.array(count, np.float32),
                     inverse=np.array(1.0 / count, np.float32), zero=np.array(0.0, np.float32))


@pytest.mark.parametrize("form", list(JAX_FORMS))
def test_reduce_sum_and_moments_forms_fuse(form):
    model = make_model(jax_text(form), **jax_constants())
    reference = model.copy()
    [m] = find(model, LayerNorm())
    assert {k: m.tags[k] for k in JAX_FORMS[form][1]} == JAX_FORMS[form][1]
    result = fuse(model)
    assert dict(result.stats) == {"fused": 1, "LayerNorm": 1, "FoldScale": 1, "FoldBias": 1}
    assert ops(model) == {"LayerNormalization": 1}
    assert_same_outputs(reference, model, feeds(), rtol=1e-4, atol=1e-5)


FLAX = """<ir_version: 8, opset_import: ["": 17]>
g (float[2, 5, 8] x) => (float[2, 5, 8] y{outputs}) {{
    s1 = ReduceSum<keepdims=1>(x, axes)
    mean = Div(s1, count)
    xx = Mul(x, x)
    s2 = ReduceSum<keepdims=1>(xx, axes)
    ex2 = Div(s2, count)
    mm = Mul(mean, mean)
    v0 = Sub(ex2, mm)
    var = Max(v0, zero)
    ve = Add(var, eps)
    std = Sqrt(ve)
    inv = Reciprocal(std)
    k = Mul(inv, gamma)
    d = Sub(x, mean)
    n = Mul(d, k)
    y = Add(n, beta)
    {extra}
}}"""


def test_flax_layernorm_with_the_scale_inside_fuses():
    # flax.linen.LayerNorm via jax2tf: mul = rsqrt(var + eps) * scale; y = (x - mean) * mul.
    model = make_model(FLAX.format(outputs="", extra=""), **jax_constants())
    reference = model.copy()
    [m] = find(model, LayerNorm())
    assert m.tags["normalize"] == "scaled" and m.tags["variance"] == "moments_clamped"
    result = fuse(model)
    assert dict(result.stats) == {"fused": 1, "LayerNorm": 1, "FoldBias": 1}
    (ln,) = model.graph.nodes
    np.testing.assert_allclose(ln.inputs[1].values, constants()["gamma"])
    assert_same_outputs(reference, model, feeds(), rtol=1e-4, atol=1e-5)


def test_flax_layernorm_whose_scaled_inverse_is_read_elsewhere_does_not_fuse():
    model = make_model(FLAX.format(outputs=", float z", extra="z = Neg(k)"), **jax_constants())
    assert not fuse(model).changed
    assert "also read by" in explain(model, LayerNorm())


@pytest.mark.parametrize("form", ["sum_div", "sum_mul_moments"])
def test_sum_scaled_by_another_count_does_not_fuse(form):
    # Dividing a sum over 8 values by 7 is not a mean.
    model = make_model(jax_text(form), **jax_constants(count=7.0))
    assert not fuse(model).changed
    assert "scaled by 0.142857, not 1/8: not a mean" in explain(model, LayerNorm())


@pytest.mark.parametrize("tensor", ["ex2", "mm", "s1"])
def test_moments_intermediate_with_another_consumer_does_not_fuse(tensor):
    form = "sum_mul_moments" if tensor != "mm" else "moments_clamped"
    model = make_model(jax_text(form, outputs=", float z", extra=f"z = Neg({tensor})"),
                       **jax_constants())
    before = ops(model)
    result = fuse(model)
    assert not result.changed and result.stats == {"fused": 0}
    assert ops(model) == before
    assert "also read by" in explain(model, LayerNorm())


# --------------------------------------------------------------------------------------------
# Opset handling
def test_opset_13_is_raised_to_17_and_fuses():
    model = make_model(layernorm_text(opset=13).replace("ir_version: 8", "ir_version: 7"),
                       **constants())
    reference = model.copy()
    result = fuse(model)
    assert dict(result.stats) == {"fused": 1, "LayerNorm": 1, "FoldScale": 1,
                                  "FoldBias": 1, "opset": "13 -> 17"}
    assert model.opset == 17 and model.ir_version == 8
    assert_same_outputs(reference, model, feeds())


def test_opset_13_with_a_node_that_changes_meaning_reports_why():
    # RoiAlign-16 added coordinate_transformation_mode with a different default: at opset 17
    # the node would compute something else, so the pass must not raise the opset.
    text = layernorm_text(
        opset=13, inputs=", float[1, 1, 8, 8] img, float[2, 4] rois, int64[2] idx",
        outputs=", float[2, 1, 2, 2] r",
        extra="r = RoiAlign<output_height=2, output_width=2>(img, rois, idx)")
    model = make_model(text, **constants())
    before = ops(model)
    result = fuse(model)
    assert not result.changed
    assert result.stats["fused"] == 0 and result.stats["candidates"] == 1
    assert "RoiAlign" in result.stats["reason"]
    assert model.opset == 13 and ops(model) == before


def test_opset_13_without_candidates_is_left_alone():
    model = make_model("""<ir_version: 7, opset_import: ["": 13]>
        g (float[2, 8] x) => (float[2, 8] y) { y = Relu(x) }""")
    result = fuse(model)
    assert not result.changed and result.stats == {"fused": 0}
    assert model.opset == 13


# --------------------------------------------------------------------------------------------
# The exported transformer
def test_torch_transformer():
    model = load(MODELS / "torch_transformer.onnx")
    reference = model.copy()
    Cleanup().run(model, ctx())
    model.invalidate()
    result = fuse(model)
    assert dict(result.stats) == {"fused": 5, "LayerNorm": 5, "FoldScale": 5,
                                  "FoldBias": 5, "opset": "14 -> 17"}
    counts = ops(model)
    assert counts["LayerNormalization"] == 5
    assert counts["ReduceMean"] == counts["Sqrt"] == counts["Pow"] == 0
    rng = np.random.default_rng(0)
    data = [{"input_ids": rng.integers(0, 100, (2, 7), dtype=np.int64)} for _ in range(2)]
    assert_same_outputs(reference, model, data, rtol=1e-4, atol=1e-4)
    assert not fuse(model).changed  # idempotent


def test_deterministic():
    def once() -> bytes:
        model = load(MODELS / "torch_transformer.onnx")
        fuse(model)
        return model.to_onnx().SerializeToString()

    assert once() == once()
