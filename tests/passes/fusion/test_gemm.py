"""fuse-gemm: 2-D MatMul + bias Add → Gemm; N-D MatMul left alone and counted (R-C4)."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import feed_list

from onnxpress import optimize
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import explain
from onnxpress.passes.fusion.gemm import FuseGemm, MatMulAddToGemm
from onnxpress.passes.manager import PassRecord
from onnxpress.testing import assert_same_outputs, make_model

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)
BIAS = RNG.standard_normal(3).astype(np.float32)


def _model(body: str, x: str = "float[2,4] x", y: str = "float[2,3] y", **inits) -> Model:
    return make_model(f'<ir_version: 8, opset_import: ["": 17]>\ng ({x}) => ({y}) {{\n{body}\n}}',
                      **{"w": W, "b": BIAS, **inits})


def _fuse(model: Model) -> tuple[Model, PassRecord]:
    out = optimize(model, [FuseGemm()])
    assert_same_outputs(model, out, feed_list(model), rtol=1e-4, atol=1e-5)
    return out, out.report["fuse-gemm"]


def _ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]


@pytest.mark.parametrize("add", ["y = Add (m, b)", "y = Add (b, m)"], ids=["bias-last", "commuted"])
def test_matmul_add_becomes_gemm(add):
    out, rec = _fuse(_model(f"m = MatMul (x, w)\n{add}"))
    assert rec.changed and rec.stats == {"MatMulAddToGemm": 1, "kept_nd": 0}
    [gemm] = out.graph.nodes
    assert gemm.op == "Gemm" and not gemm.attrs
    assert [t.name for t in gemm.inputs] == ["x", "w", "b"]
    assert gemm.outputs[0].name == "y"


@pytest.mark.parametrize("shape", [(3,), (1, 3), (), (1,), (1, 1)])
def test_bias_broadcastable_to_a_row_fuses(shape):
    bias = RNG.standard_normal(shape).astype(np.float32)
    out, rec = _fuse(_model("m = MatMul (x, w)\ny = Add (m, b)", b=bias))
    assert rec.changed and _ops(out) == ["Gemm"]


@pytest.mark.parametrize(("shape", "y"), [((2, 3), "float[2,3] y"),
                                          ((1, 1, 3), "float[1,2,3] y")])
def test_bias_that_widens_the_result_does_not_fuse(shape, y):
    model = _model("m = MatMul (x, w)\ny = Add (m, b)", y=y,
                   b=RNG.standard_normal(shape).astype(np.float32))
    out, rec = _fuse(model)
    assert not rec.changed and _ops(out) == ["MatMul", "Add"]
    assert "Gemm needs one broadcastable to [1, 3]" in explain(model, MatMulAddToGemm())


def test_dynamic_batch_still_fuses():
    model = _model("m = MatMul (x, w)\ny = Add (m, b)", "float[N,4] x", "float[N,3] y")
    assert _fuse(model)[1].stats["MatMulAddToGemm"] == 1


def test_float64_fuses():
    model = _model("m = MatMul (x, w)\ny = Add (m, b)", "double[2,4] x", "double[2,3] y",
                   w=W.astype(np.float64), b=BIAS.astype(np.float64))
    assert _fuse(model)[1].changed


def test_weight_from_a_constant_node_fuses():
    model = _model("k = Constant <value = float[4,3] {1,2,3,4,5,6,7,8,9,10,11,12}> ()\n"
                   "m = MatMul (x, k)\ny = Add (m, b)")
    out, rec = _fuse(model)
    assert rec.changed and _ops(out) == ["Constant", "Gemm"]


def test_nd_matmul_is_kept_and_counted():
    model = _model("m = MatMul (x, w)\ny = Add (m, b)\nm2 = MatMul (x, w)\ny2 = Add (b, m2)",
                   "float[2,5,4] x", "float[2,5,3] y, float[2,5,3] y2")
    out, rec = _fuse(model)
    assert not rec.changed and rec.stats == {"MatMulAddToGemm": 0, "kept_nd": 2}
    assert _ops(out) == ["MatMul", "Add", "MatMul", "Add"]
    assert "has rank 3, Gemm needs 2" in explain(model, MatMulAddToGemm())


def test_no_match_without_constant_operands():
    for model in (_model("m = MatMul (x, v)\ny = Add (m, b)", "float[2,4] x, float[4,3] v"),
                  _model("m = MatMul (x, w)\ny = Add (m, c)", "float[2,4] x, float[3] c")):
        rec = _fuse(model)[1]
        assert not rec.changed and rec.stats == {"MatMulAddToGemm": 0, "kept_nd": 0}
        assert "is not a constant" in explain(model, MatMulAddToGemm())


def test_integer_matmul_does_not_fuse():
    model = _model("m = MatMul (x, w)\ny = Add (m, b)", "int32[2,4] x", "int32[2,3] y",
                   w=np.ones((4, 3), np.int32), b=np.ones(3, np.int32))
    assert not _fuse(model)[1].changed
    assert "Gemm needs one float type" in explain(model, MatMulAddToGemm())


def test_matmul_with_another_consumer_does_not_fuse():
    model = _model("m = MatMul (x, w)\ny = Add (m, b)\nz = Relu (m)",
                   y="float[2,3] y, float[2,3] z")
    out, rec = _fuse(model)
    assert not rec.changed and _ops(out) == ["MatMul", "Add", "Relu"]


def test_matmul_that_is_a_graph_output_does_not_fuse():
    out, rec = _fuse(_model("m = MatMul (x, w)\ny = Add (m, b)", y="float[2,3] y, float[2,3] m"))
    assert not rec.changed and _ops(out) == ["MatMul", "Add"]
