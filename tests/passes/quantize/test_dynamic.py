"""quantize-dynamic: MatMul / Gemm with constant weights → onnxruntime's dynamic int8 kernels.

The pass must touch only MatMul / Gemm whose weight is a constant 2-D float matrix (never
Conv, never an activation × activation MatMul), emit the exact shape onnxruntime fuses into
DynamicQuantizeMatMul, and keep the outputs close to FP32.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from zoo import MODELS_DIR, ZOO, feed_list

import onnxpress as ox
from onnxpress import demo
from onnxpress.ir.model import Model
from onnxpress.passes import QuantizeDynamic
from onnxpress.runtime.compare import compare
from onnxpress.runtime.fusion import fusion_report
from onnxpress.targets import get_target
from onnxpress.testing import make_model, run

#: Weight levels on this machine's cpu target (63 where u8s8 kernels saturate, else 127).
LEVELS = 2 ** (get_target("cpu").weight_bits - 1) - 1

HEADER = '<ir_version: 8, opset_import: ["": 17]>'
TRANSFORMER = MODELS_DIR / "torch_transformer.onnx"


def _source(source: str) -> Model:
    if source == "digits":
        return ox.load(demo.model_path())
    if source in ZOO:
        return ZOO[source]()
    return ox.load(MODELS_DIR / f"{source}.onnx")


@functools.cache
def _dynamic_bytes(source: str, **options) -> bytes:
    result = ox.optimize(_source(source), [QuantizeDynamic(**options)])
    return result.to_onnx().SerializeToString()


def dynamic(source: str, **options) -> Model:
    """`source` ("digits", a zoo name or a tests/models stem) after quantize-dynamic."""
    return ox.load(_dynamic_bytes(source, **options))


def ops(model: Model, op: str) -> list[gs.Node]:
    return [n for n in model.graph.nodes if n.op == op]


def cosines(want: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine of each row (last axis) of two arrays."""
    a, b = want.reshape(-1, want.shape[-1]), got.reshape(-1, got.shape[-1])
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_conv_is_never_quantized_only_gemm():
    original, model = ox.load(demo.model_path()), dynamic("digits")
    convs = ops(model, "Conv")
    assert len(convs) == len(ops(original, "Conv")) == 7
    for conv in convs:
        assert isinstance(conv.inputs[1], gs.Constant)
        assert np.asarray(conv.inputs[1].values).dtype == np.float32
        assert conv.inputs[1].inputs == []  # no DequantizeLinear in front
    assert not ops(model, "Gemm") and not ops(model, "ConvInteger")
    assert len(ops(model, "MatMulInteger")) == len(ops(model, "DynamicQuantizeLinear")) == 2
    record = ox.optimize(demo.model_path(), ["quantize-dynamic"]).report.records[-1]
    assert record.stats["Gemm"] == 2 and record.stats["MatMul"] == 0 and record.changed


def test_only_matmuls_with_constant_weights_in_a_transformer():
    original, model = ox.load(TRANSFORMER), dynamic("torch_transformer")
    weighted = [m for m in ops(original, "MatMul") if isinstance(m.inputs[1], gs.Constant)]
    attention = [m for m in ops(original, "MatMul") if not isinstance(m.inputs[1], gs.Constant)]
    assert len(weighted) == 8 and len(attention) == 4
    assert len(ops(model, "MatMulInteger")) == 8
    remaining = ops(model, "MatMul")
    assert len(remaining) == 4  # activation × activation: Q·Kᵀ and P·V stay float
    assert all(not isinstance(m.inputs[1], gs.Constant) for m in remaining)
    for node in ops(model, "MatMulInteger"):
        w, w_zero = node.inputs[1], node.inputs[3]
        assert np.asarray(w.values).dtype == np.int8 and w.values.ndim == 2
        assert np.asarray(w_zero.values).dtype == np.int8 and (w_zero.values == 0).all()
        assert node.inputs[0].inputs[0].op == "DynamicQuantizeLinear"


def test_transformer_is_100_percent_dynamic_quantize_matmul():
    report = fusion_report(dynamic("torch_transformer"))
    assert report.ratio == 1.0 and not report.unfused
    assert dict(report.fused) == {"DynamicQuantizeMatMul": 8}


def test_transformer_outputs_within_cosine_0999_of_fp32():
    original, model = ox.load(TRANSFORMER), dynamic("torch_transformer")
    for feed in feed_list(original, 4):
        (want,), (got,) = run(original, feed, optimize=True), run(model, feed, optimize=True)
        assert cosines(want, got).min() >= 0.999
    result = compare(TRANSFORMER, model, [feed_list(original, 1)[0]])
    assert result[0].cosine >= 0.999


def test_digits_accuracy_holds():
    result = compare(demo.model_path(), dynamic("digits"), demo.test_data(),
                     labels=demo.test_labels())
    assert result.reference_accuracy - result.candidate_accuracy <= 0.005


@pytest.mark.parametrize("source", ["gemm", "matmul"])
def test_zoo_products_match_fp32(source):
    original, model = ZOO[source](), dynamic(source)
    assert ops(model, "MatMulInteger")
    for feed in feed_list(original, 2):
        (want,), (got,) = run(original, feed), run(model, feed)
        assert cosines(want, got).min() > 0.999
        np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))


def test_weights_are_symmetric_per_output_column_and_transposed_for_transB():
    original, model = ZOO["gemm"](), dynamic("gemm")  # Gemm(transB=1), w [10, 48]
    w = np.asarray(original.graph.nodes[-1].inputs[1].values)
    (node,) = ops(model, "MatMulInteger")
    stored = np.asarray(node.inputs[1].values)
    assert stored.shape == (48, 10)  # [K, N]
    (scale_mul,) = [n for n in ops(model, "Mul") if isinstance(n.inputs[1], gs.Constant)]
    scale = np.asarray(scale_mul.inputs[1].values)
    assert scale.shape == (10,)
    np.testing.assert_allclose(scale, np.abs(w).max(1) / LEVELS, rtol=1e-6)
    np.testing.assert_allclose(stored * scale, w.T, atol=float(scale.max()) / 2 + 1e-7)
    assert np.abs(stored).max() == LEVELS


def test_per_channel_false_has_one_weight_scale():
    model = dynamic("gemm", per_channel=False)
    (scale_mul,) = [n for n in ops(model, "Mul") if isinstance(n.inputs[1], gs.Constant)]
    assert np.asarray(scale_mul.inputs[1].values).shape == ()
    assert np.asarray(ops(model, "MatMulInteger")[0].inputs[3].values).shape == ()


def test_gemm_that_is_not_a_plain_product_is_left_alone():
    rng = np.random.default_rng(3)
    model = make_model(f"""{HEADER}
    g (float[2,8] x) => (float[2,4] y, float[2,4] z) {{
        y = Gemm <alpha = 0.5> (x, w, b)
        z = Gemm <beta = 2.0> (x, w, b)
    }}""", w=rng.standard_normal((8, 4)).astype(np.float32),
        b=rng.standard_normal(4).astype(np.float32))
    result = ox.optimize(model, ["quantize-dynamic"])
    assert [n.op for n in result.graph.nodes] == ["Gemm", "Gemm"]
    assert result.report.records[-1].changed is False


def test_exclude_keeps_matching_nodes_float():
    original = ox.load(TRANSFORMER)
    names = [m.name for m in ops(original, "MatMul") if isinstance(m.inputs[1], gs.Constant)]
    model = dynamic("torch_transformer", exclude=("*/feed_forward*",))
    kept = [n for n in names if "/feed_forward" in n]
    assert len(kept) == 4
    remaining = {m.name for m in ops(model, "MatMul")}
    assert set(kept) <= remaining
    assert len(ops(model, "MatMulInteger")) == 4


def test_an_already_quantized_model_is_skipped():
    model = dynamic("torch_transformer")
    again = ox.optimize(model, ["quantize-dynamic"])
    record = again.report.records[-1]
    assert record.changed is False and "already quantized" in record.stats["skipped"]
    assert len(again) == len(model)


def test_graph_outputs_keep_their_names():
    model = dynamic("digits")
    assert [t.name for t in model.graph.outputs] == ["logits"]
    (logits,) = run(model, {"input": np.asarray(demo.test_data().arrays["input"][:2])})
    assert logits.shape == (2, 10)
