"""The Q/DQ primitive: `qparams`, `quantize_array`, `weight_qparams` and the nodes they emit.

Expected numbers are computed by hand from the module's formulas (``q = clamp(round(r/s) + z)``,
symmetric ``s = amax / ((q_max - q_min) / 2)``, asymmetric ``s = (hi - lo) / (q_max - q_min)``,
``z = round(q_min - lo / s)``) and cross-checked against onnxruntime's QuantizeLinear.
"""

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxpress.passes.quantize.qdq import (
    MIN_SCALE,
    QParams,
    dequantized_constant,
    qparams,
    quantize_activation,
    quantize_array,
    weight_qparams,
)
from onnxpress.testing import make_model, run

HEADER = '<ir_version: 8, opset_import: ["": 17]>'


# --------------------------------------------------------------------------------------------
# qparams
def test_symmetric_int8_scale_is_amax_over_half_the_range_and_zero_point_0():
    p = qparams(-1.0, 2.0, np.int8, symmetric=True)
    assert p.scale == pytest.approx(2.0 / 127.5)  # (127 - (-128)) / 2 = 127.5
    assert p.zero_point == 0 and p.dtype == np.int8 and p.axis is None


def test_symmetric_int8_narrow_uses_127_levels():
    p = qparams(-2.0, 1.0, np.int8, symmetric=True, narrow=True)
    assert p.scale == pytest.approx(2.0 / 127)  # [-127, 127]
    assert p.zero_point == 0


def test_symmetric_uint8_has_zero_point_128():
    p = qparams(-1.0, 3.0, np.uint8, symmetric=True)
    assert p.scale == pytest.approx(3.0 / 127.5)
    assert p.zero_point == 128 and p.dtype == np.uint8


def test_asymmetric_uint8_against_hand_computed_values():
    # s = 4 / 255, z = round(0 - (-1) / s) = round(63.75) = 64
    p = qparams(-1.0, 3.0, np.uint8, symmetric=False)
    assert p.scale == pytest.approx(4.0 / 255)
    assert p.zero_point == 64 and p.dtype == np.uint8


def test_asymmetric_int8_against_hand_computed_values():
    # s = 4 / 255, z = round(-128 + 63.75) = round(-64.25) = -64
    p = qparams(-1.0, 3.0, np.int8, symmetric=False)
    assert p.scale == pytest.approx(4.0 / 255)
    assert p.zero_point == -64 and p.dtype == np.int8


@pytest.mark.parametrize("lo, hi, dtype, scale, zero", [
    (1.0, 3.0, np.uint8, 3.0 / 255, 0),       # widened to [0, 3]
    (-3.0, -1.0, np.uint8, 3.0 / 255, 255),   # widened to [-3, 0]
    (-3.0, -1.0, np.int8, 3.0 / 255, 127),
    (2.0, 5.0, np.int8, 5.0 / 255, -128),
])
def test_a_range_without_zero_is_widened_to_include_it(lo, hi, dtype, scale, zero):
    p = qparams(lo, hi, dtype, symmetric=False)
    assert p.scale == pytest.approx(scale)
    assert p.zero_point == zero
    # 0.0 is exactly representable: it quantizes to the zero point and back to 0.
    q = quantize_array(np.array([0.0]), p)
    assert q[0] == zero and float((q.astype(np.int64)[0] - int(p.zero_point)) * p.scale) == 0.0


def test_symmetric_range_without_zero_is_widened_too():
    p = qparams(2.0, 4.0, np.int8, symmetric=True)
    assert p.scale == pytest.approx(4.0 / 127.5) and p.zero_point == 0


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_zero_point_stays_in_the_type_range_for_extreme_ranges(dtype, symmetric):
    lo_q, hi_q = np.iinfo(dtype).min, np.iinfo(dtype).max
    for lo, hi in [(-1e30, 1e-30), (-1e-30, 1e30), (-1e-9, 0.0), (0.0, 1e-9), (-1e-13, 0.0),
                   (-5.0, 1e-7), (-1e-7, 5.0), (0.0, 0.0), (-7.0, 7.0)]:
        p = qparams(lo, hi, dtype, symmetric=symmetric)
        assert p.zero_point.dtype == dtype
        assert lo_q <= int(p.zero_point) <= hi_q, (lo, hi, p)
        assert np.isfinite(p.scale) and p.scale >= np.float32(MIN_SCALE)


@pytest.mark.parametrize("dtype, symmetric, zero", [
    (np.int8, True, 0), (np.uint8, True, 128), (np.uint8, False, 0), (np.int8, False, -128)])
def test_an_all_zero_range_gets_min_scale(dtype, symmetric, zero):
    p = qparams(0.0, 0.0, dtype, symmetric=symmetric)
    assert p.scale == np.float32(MIN_SCALE) and p.scale > 0
    assert p.zero_point == zero


def test_scale_is_float32_and_zero_point_the_integer_type():
    p = qparams(-1.0, 1.0, np.uint8, symmetric=False)
    assert np.asarray(p.scale).dtype == np.float32
    assert np.asarray(p.zero_point).dtype == np.uint8


def test_per_channel_ranges_give_one_scale_and_zero_point_per_channel():
    lo, hi = np.array([-1.0, 0.0, 1.0]), np.array([3.0, 2.0, 4.0])
    p = qparams(lo, hi, np.uint8, symmetric=False, axis=1)
    np.testing.assert_allclose(p.scale, [4 / 255, 2 / 255, 4 / 255], rtol=1e-6)
    np.testing.assert_array_equal(p.zero_point, [64, 0, 0])  # channel 2 widened to [0, 4]
    assert p.axis == 1 and p.scale.shape == (3,)


def test_per_channel_all_zero_channel_gets_min_scale_alone():
    p = qparams(np.array([-1.0, 0.0]), np.array([1.0, 0.0]), np.int8, symmetric=True,
                axis=0, narrow=True)
    np.testing.assert_allclose(p.scale, [1 / 127, MIN_SCALE], rtol=1e-6)
    np.testing.assert_array_equal(p.zero_point, [0, 0])


# --------------------------------------------------------------------------------------------
# quantize_array
def test_quantize_array_per_tensor_hand_computed():
    p = qparams(-1.0, 3.0, np.uint8, symmetric=False)  # s = 4/255, z = 64
    values = np.array([-1.0, 0.0, 1.0, 3.0, 0.01])
    np.testing.assert_array_equal(quantize_array(values, p), [0, 64, 128, 255, 65])


def test_quantize_array_clips_to_the_type_range():
    p = qparams(-1.0, 1.0, np.int8, symmetric=True)  # s = 1/127.5
    np.testing.assert_array_equal(quantize_array(np.array([-10.0, 10.0, 1.0]), p),
                                  [-128, 127, 127])
    p = qparams(-1.0, 3.0, np.uint8, symmetric=False)
    np.testing.assert_array_equal(quantize_array(np.array([-5.0, 50.0]), p), [0, 255])


def test_quantize_array_rounds_half_to_even_like_quantize_linear():
    p = qparams(-127.5, 127.5, np.int8, symmetric=True)  # scale exactly 1
    assert p.scale == 1.0
    np.testing.assert_array_equal(quantize_array(np.array([0.5, 1.5, 2.5, -0.5, -1.5]), p),
                                  [0, 2, 2, 0, -2])


@pytest.mark.parametrize("axis", [0, 1])
def test_quantize_array_per_channel_broadcasts_along_the_axis(axis):
    values = np.array([[1.0, -2.0, 0.5], [4.0, 1.0, -1.0]])
    amax = np.abs(values).max(axis=1 - axis)
    p = qparams(-amax, amax, np.int8, symmetric=True, axis=axis, narrow=True)
    scale = amax / 127
    expected = np.round(values / (scale[:, None] if axis == 0 else scale[None, :]))
    np.testing.assert_array_equal(quantize_array(values, p), expected.astype(np.int8))
    # the channel maximum maps to ±127 exactly
    assert (np.abs(quantize_array(values, p)).max(axis=1 - axis) == 127).all()


@pytest.mark.parametrize("dtype, symmetric, axis", [
    (np.uint8, False, None), (np.int8, False, None), (np.int8, True, 1), (np.uint8, False, 1)])
def test_quantize_array_matches_onnxruntime_quantize_linear(dtype, symmetric, axis):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 4)) * 3).astype(np.float32)
    if axis is None:
        p = qparams(-2.0, 5.0, dtype, symmetric=symmetric)
    else:
        p = qparams(np.array([-1.0, -2.0, 0.0]), np.array([1.0, 6.0, 2.0]), dtype,
                    symmetric=symmetric, axis=axis)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"],
                            **({"axis": axis} if axis is not None else {}))
    graph = helper.make_graph(
        [node], "q", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", elem, [2, 3, 4])],
        [onnx.numpy_helper.from_array(np.asarray(p.scale, np.float32), "s"),
         onnx.numpy_helper.from_array(np.asarray(p.zero_point), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (ort,) = run(model, {"x": x})
    np.testing.assert_array_equal(quantize_array(x, p), ort)


# --------------------------------------------------------------------------------------------
# weight_qparams
def test_weight_qparams_per_tensor_is_symmetric_narrow_int8():
    w = np.array([[0.5, -2.54], [1.0, 0.0]], np.float32)
    p = weight_qparams(w, None)
    assert p.scale == pytest.approx(2.54 / 127) and p.zero_point == 0
    assert p.axis is None and p.dtype == np.int8
    np.testing.assert_array_equal(quantize_array(w, p), [[25, -127], [50, 0]])


@pytest.mark.parametrize("axis", [0, 1])
def test_weight_qparams_per_channel(axis):
    w = np.arange(-12, 12, dtype=np.float32).reshape(4, 6) / 7
    p = weight_qparams(w, axis)
    amax = np.abs(w).max(axis=1 - axis)
    np.testing.assert_allclose(p.scale, amax / 127, rtol=1e-6)
    assert p.scale.shape == (w.shape[axis],) and p.axis == axis
    assert (p.zero_point == 0).all() and p.zero_point.dtype == np.int8
    q = quantize_array(w, p)
    assert q.min() >= -127  # narrow: -128 is never produced
    shape = [1, 1]
    shape[axis] = -1
    np.testing.assert_allclose(q * p.scale.reshape(shape), w,
                               atol=float(p.scale.max()) / 2 + 1e-7)


def test_weight_qparams_all_zero_channel():
    w = np.array([[0.0, 0.0], [1.0, -0.5]], np.float32)
    p = weight_qparams(w, 0)
    assert p.scale[0] == np.float32(MIN_SCALE)
    np.testing.assert_array_equal(quantize_array(w, p)[0], [0, 0])


# --------------------------------------------------------------------------------------------
# Nodes
def _relu_and_sigmoid():
    return make_model(f"""{HEADER}
    g (float[2,4] x) => (float[2,4] a, float[2,4] b) {{
        a = Relu (x)
        b = Sigmoid (x)
    }}""")


def test_quantize_activation_rewires_only_the_given_readers():
    model = _relu_and_sigmoid()
    x = model.graph.inputs[0]
    relu, sigmoid = model.graph.nodes
    p = qparams(-1.0, 1.0, np.uint8, symmetric=False)
    out = quantize_activation(model, x, p, readers=[relu])
    assert relu.inputs[0] is out and sigmoid.inputs[0] is x  # float reader keeps the exact tensor
    dq = out.inputs[0]
    q = dq.inputs[0].inputs[0]
    assert (q.op, dq.op) == ("QuantizeLinear", "DequantizeLinear") and q.inputs[0] is x
    feed = {"x": np.array([[0.3, -0.7, 1.0, 0.001]] * 2, np.float32)}
    a, b = run(model, feed)
    dequantized = (quantize_array(feed["x"], p).astype(np.int64) - int(p.zero_point)) * p.scale
    expected = np.maximum(dequantized, 0)
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    np.testing.assert_allclose(b, 1 / (1 + np.exp(-feed["x"])), rtol=1e-6)


def test_dequantized_constant_stores_integers_with_an_explicit_zero_point():
    w = np.array([[1.0, -0.5], [0.25, 2.0]], np.float32)
    model = make_model(f"""{HEADER}
    g (float[1,2] x) => (float[1,2] y) {{ y = MatMul (x, w) }}""", w=w)
    (matmul,) = model.graph.nodes
    p = weight_qparams(w, 1)
    dequantized_constant(model, matmul, 1, p)
    dq = matmul.inputs[1].inputs[0]
    assert dq.op == "DequantizeLinear" and dq.attrs == {"axis": 1}
    assert len(dq.inputs) == 3  # zero point present even though it is 0
    stored, scale, zero = (np.asarray(t.values) for t in dq.inputs)
    assert stored.dtype == np.int8 and zero.dtype == np.int8 and (zero == 0).all()
    np.testing.assert_array_equal(stored, quantize_array(w, p))
    (y,) = run(model, {"x": np.array([[1.0, 1.0]], np.float32)})
    np.testing.assert_allclose(y, [w.sum(0)], atol=float(scale.max()))


def test_qparams_dataclass_reports_its_dtype():
    p = QParams(np.float32(0.1), np.uint8(3))
    assert p.dtype == np.uint8 and p.axis is None


def test_seven_bit_weights_use_63_levels_in_int8_storage():
    values = np.array([[0.5, -2.0], [1.0, 0.25]], np.float32)
    p = weight_qparams(values, axis=0, bits=7)
    q = quantize_array(values, p)
    assert q.dtype == np.int8 and np.abs(q).max(axis=1).tolist() == [63, 63]
    np.testing.assert_allclose(p.scale, [2.0 / 63, 1.0 / 63], rtol=1e-6)
