"""sparsify-2to4 and check_2to4: groups of four along the reduction axis, as TensorRT checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from zoo import feed_list

from onnxpress import demo, optimize
from onnxpress.ir.model import Model
from onnxpress.passes.sparsity.semi_structured import Sparsify2to4, check_2to4, is_2to4
from onnxpress.testing import make_model, run

RNG = np.random.default_rng(0)


def _model(signature: str, body: str, **inits: np.ndarray) -> Model:
    return make_model(f'<ir_version: 8, opset_import: ["": 17]>\ng {signature} {{\n{body}\n}}',
                      **inits)


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _reference(values: np.ndarray, axis: int) -> np.ndarray:
    """2:4 by the definition, one group at a time: in W[..., 4c:4c+4 on axis, ...] keep the two
    largest |w| (the earlier of equal ones)."""
    out = np.zeros_like(values)
    others = [range(n) for i, n in enumerate(values.shape) if i != axis]
    for index in itertools.product(*others):
        for start in range(0, values.shape[axis], 4):
            cells = [index[:axis] + (start + j,) + index[axis:] for j in range(4)]
            keep = sorted(range(4), key=lambda j: (-abs(values[cells[j]]), j))[:2]
            for j in keep:
                out[cells[j]] = values[cells[j]]
    return out


def _sparsify(model: Model) -> tuple[Model, dict]:
    out = optimize(model, [Sparsify2to4()])
    # Same interface, and the result runs in onnxruntime with the original output shapes.
    for feed in feed_list(model):
        assert [a.shape for a in run(out, feed)] == [a.shape for a in run(model, feed)]
    return out, out.report["sparsify-2to4"].stats


def _weight(model: Model, name: str) -> np.ndarray:
    return next(np.asarray(c.values) for c in model.constants() if c.name == name)


# Each weight has at least two axes whose length is a multiple of 4, so grouping along the
# wrong one gives a valid-looking but different result; the assertions tell them apart.
AXES = {
    "conv": ("(float[1,8,5,5] x) => (float[1,4,3,3] y)",
             "y = Conv <kernel_shape = [3, 3]> (x, w, b)", (4, 8, 3, 3), 1),
    "gemm_transB0": ("(float[2,8] x) => (float[2,12] y)",
                     "y = Gemm (x, w, b)", (8, 12), 0),
    "gemm_transB1": ("(float[2,8] x) => (float[2,12] y)",
                     "y = Gemm <transB = 1> (x, w, b)", (12, 8), 1),
    "matmul": ("(float[2,3,8] x) => (float[2,3,12] y)",
               "m = MatMul (x, w)\ny = Add (m, b)", (8, 12), 0),
}


@pytest.mark.parametrize("case", list(AXES))
def test_groups_of_four_run_along_the_reduction_axis(case):
    signature, body, shape, axis = AXES[case]
    w = _f32(*shape)
    bias = _f32(shape[0] if case == "conv" else 12)
    out, stats = _sparsify(_model(signature, body, w=w, b=bias))
    got = _weight(out, "w")
    np.testing.assert_array_equal(got, _reference(w, axis))
    assert is_2to4(got, axis)
    wrong = 1 - axis if got.ndim == 2 else 0
    assert not np.array_equal(got, _reference(w, wrong)) and not is_2to4(got, wrong)
    assert check_2to4(out) == {"w": True}
    np.testing.assert_array_equal(_weight(out, "b"), bias)  # the bias is never touched
    assert stats["sparsified"] == 1 and stats["sparsity"] == 0.5 and stats["skipped"] == {}


def test_equal_magnitudes_keep_the_earlier_two():
    w = np.array([[1, -1, 1, -1], [0, 2, -2, 2]], np.float32).T  # MatMul [K=4, N=2]
    out, _ = _sparsify(_model("(float[3,4] x) => (float[3,2] y)", "y = MatMul (x, w)", w=w))
    np.testing.assert_array_equal(_weight(out, "w"), [[1, 0], [-1, 2], [0, -2], [0, 0]])


def test_grouped_conv_with_four_channels_per_group_is_sparsified_depthwise_is_not():
    body = ("g = Conv <group = 2, kernel_shape = [1, 1]> (x, wg)\n"
            "y = Conv <group = 8, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (g, wd)")
    model = _model("(float[1,8,4,4] x) => (float[1,8,4,4] y)", body, wg=_f32(8, 4, 1, 1),
                   wd=_f32(8, 1, 3, 3))
    out, stats = _sparsify(model)
    assert stats["sparsified"] == 1
    assert stats["skipped"] == {"wd": "depthwise Conv (group=8) has 1 input channels per group, "
                                      "not a multiple of 4"}
    assert check_2to4(out) == {"wg": True, "wd": False}
    np.testing.assert_array_equal(_weight(out, "wd"), _weight(model, "wd"))


def test_shared_weight_is_sparsified_once_and_conflicting_axes_are_skipped():
    w = _f32(8, 8)
    shared = _model("(float[2,8] x) => (float[2,8] y)",
                    "a = MatMul (x, w)\nb = Gemm (x, w)\ny = Add (a, b)", w=w)
    out, stats = _sparsify(shared)
    assert stats["sparsified"] == 1 and check_2to4(out) == {"w": True}
    np.testing.assert_array_equal(_weight(out, "w"), _reference(w, 0))
    # A MatMul sums over axis 0 of w, a Gemm(transB=1) over axis 1: no mask suits both.
    tied = _model("(float[2,8] x) => (float[2,8] y)",
                  "a = MatMul (x, w)\nb = Gemm <transB = 1> (x, w)\ny = Add (a, b)", w=w)
    out, stats = _sparsify(tied)
    assert not out.report["sparsify-2to4"].changed
    assert "different axes" in stats["skipped"]["w"]


def test_no_eligible_weight_is_a_no_op_with_the_reason():
    model = _model("(float[2,10] x) => (float[2,3] y)",
                   "h = Gemm <transB = 1> (x, w, b)\ny = MatMul (h, v)", w=_f32(6, 10),
                   b=_f32(6), v=_f32(6, 3))
    out, stats = _sparsify(model)
    assert not out.report["sparsify-2to4"].changed
    assert stats["skipped"] == {"w": "reduction length 10 is not a multiple of 4",
                                "v": "reduction length 6 is not a multiple of 4"}
    assert "can be made 2:4" in stats["reason"]


def test_a_constant_node_weight_is_skipped_with_what_to_do():
    body = "w = Constant <value = float[4,2] {1, 2, 3, 4, 5, 6, 7, 8}> ()\ny = MatMul (x, w)"
    _, stats = _sparsify(_model("(float[3,4] x) => (float[3,2] y)", body))
    assert "run 'cleanup' first" in stats["skipped"]["w"]


def test_check_2to4_is_false_on_a_dense_model_and_sees_through_dequantize():
    dense = _model("(float[2,8] x) => (float[2,4] y)", "y = MatMul (x, w)", w=_f32(8, 4))
    assert check_2to4(dense) == {"w": False}
    # int8 weight [K=8, N=4] with per-column zero points (axis 1): zero wherever q == zp.
    zp = np.array([0, 3, -2, 5], np.int8)
    q = np.tile(zp, (8, 1)).astype(np.int8)
    q[0::4] += 7
    q[1::4] -= 9
    body = "wd = DequantizeLinear <axis = 1> (q, s, zp)\ny = MatMul (x, wd)"
    quantized = _model("(float[2,8] x) => (float[2,4] y)", body, q=q,
                       s=np.full(4, 0.1, np.float32), zp=zp)
    assert check_2to4(quantized) == {"q": True}
    q[2, 1] += 1  # a third non-zero in rows 0..3 of column 1
    assert check_2to4(_model("(float[2,8] x) => (float[2,4] y)", body, q=q,
                             s=np.full(4, 0.1, np.float32), zp=zp)) == {"q": False}


def test_digits_model_every_eligible_layer_passes_check_and_accuracy_is_pinned():
    before = check_2to4(optimize(demo.model_path(), []))
    assert not any(before.values())
    out, stats = _sparsify(optimize(demo.model_path(), []))
    after = check_2to4(out)
    assert sorted(stats["skipped"]) == ["depthwise.0.0.weight", "stem.0.0.weight"]
    assert {name for name, ok in after.items() if not ok} == set(stats["skipped"])
    predictions = run(out, {"input": demo.test_data().arrays["input"]})[0].argmax(axis=1)
    # Measured 0.769 (fp32 0.993): magnitude 2:4 without recovery is lossy, as NVIDIA warns.
    assert np.mean(predictions == demo.test_labels()) >= 0.75
