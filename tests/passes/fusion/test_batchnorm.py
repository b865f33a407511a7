"""fuse-batchnorm: BN folded into Conv / ConvTranspose / Gemm / 2-D MatMul, or Mul + Add."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import feed_list

from onnxpress import optimize
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import explain
from onnxpress.passes.fusion.batchnorm import (
    ConvBatchNorm,
    ConvTransposeBatchNorm,
    FuseBatchNorm,
    MatMulBatchNorm,
)
from onnxpress.passes.manager import PassRecord
from onnxpress.testing import assert_same_outputs, make_model

RNG = np.random.default_rng(0)
BN = "n = BatchNormalization <epsilon = 0.001> (c, scale, shift, mean, var)"
RULES = ("ConvBatchNorm", "ConvTransposeBatchNorm", "GemmBatchNorm", "MatMulBatchNorm",
         "LoneBatchNorm")


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _bn(channels: int) -> dict[str, np.ndarray]:
    """Non-trivial BN parameters (ones and zeros would hide a wrong axis)."""
    return {"scale": RNG.uniform(0.5, 2.0, channels).astype(np.float32), "shift": _f32(channels),
            "mean": _f32(channels), "var": RNG.uniform(0.5, 2.0, channels).astype(np.float32)}


def _model(body: str, signature: str, channels: int, **inits) -> Model:
    return make_model(f'<ir_version: 8, opset_import: ["": 17]>\ng {signature} {{\n{body}\n}}',
                      **_bn(channels), **inits)


def _fuse(model: Model) -> tuple[Model, PassRecord]:
    out = optimize(model, [FuseBatchNorm()])
    assert_same_outputs(model, out, feed_list(model), rtol=1e-4, atol=1e-5)
    return out, out.report["fuse-batchnorm"]


def _fired(rec: PassRecord) -> dict[str, int]:
    assert set(rec.stats) == set(RULES)
    return {k: v for k, v in rec.stats.items() if v}


def _ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]


@pytest.mark.parametrize("bias", [", b", ""], ids=["bias", "no-bias"])
def test_conv_batchnorm_folds_on_weight_axis_0(bias):
    body = f"c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w{bias})\n{BN}\ny = Relu (n)"
    model = _model(body, "(float[1,3,5,5] x) => (float[1,4,5,5] y)", 4, w=_f32(4, 3, 3, 3),
                   b=_f32(4))
    out, rec = _fuse(model)
    assert rec.changed and _fired(rec) == {"ConvBatchNorm": 1}
    assert _ops(out) == ["Conv", "Relu"] and len(out.graph.nodes[0].inputs) == 3


def test_conv_transpose_batchnorm_folds_on_weight_axis_1():
    # Weight (Cin=2, Cout=3, k, k): scaling axis 0 would not even broadcast.
    body = f"c = ConvTranspose <kernel_shape = [2, 2], strides = [2, 2]> (x, w, b)\n{BN}\n" \
           "y = Relu (n)"
    out, rec = _fuse(_model(body, "(float[1,2,3,3] x) => (float[1,3,6,6] y)", 3,
                            w=_f32(2, 3, 2, 2), b=_f32(3)))
    assert _fired(rec) == {"ConvTransposeBatchNorm": 1}
    assert _ops(out) == ["ConvTranspose", "Relu"]


def test_grouped_conv_transpose_is_not_folded():
    body = f"c = ConvTranspose <kernel_shape = [2, 2], group = 2> (x, w)\n{BN}\ny = Relu (n)"
    model = _model(body, "(float[1,4,3,3] x) => (float[1,4,4,4] y)", 4, w=_f32(4, 2, 2, 2))
    assert _fired(_fuse(model)[1]) == {"LoneBatchNorm": 1}
    assert "grouped ConvTranspose" in explain(model, ConvTransposeBatchNorm())


@pytest.mark.parametrize(("trans_b", "shape"), [(0, (6, 4)), (1, (4, 6))])
def test_gemm_batchnorm_folds_on_the_output_channel_axis(trans_b, shape):
    body = f"c = Gemm <transB = {trans_b}> (x, w, b)\n{BN}\ny = Relu (n)"
    out, rec = _fuse(_model(body, "(float[2,6] x) => (float[2,4] y)", 4, w=_f32(*shape),
                            b=_f32(4)))
    assert _fired(rec) == {"GemmBatchNorm": 1}
    assert _ops(out) == ["Gemm", "Relu"] and out.graph.nodes[0].attrs["transB"] == trans_b


def test_matmul_2d_batchnorm_becomes_matmul_add():
    out, rec = _fuse(_model(f"c = MatMul (x, w)\n{BN}\ny = Relu (n)",
                            "(float[2,6] x) => (float[2,4] y)", 4, w=_f32(6, 4)))
    assert _fired(rec) == {"MatMulBatchNorm": 1}
    assert _ops(out) == ["MatMul", "Add", "Relu"]


def test_matmul_3d_batchnorm_is_not_folded_into_the_weight():
    # BN's channel is axis 1 (the sequence), not the MatMul's output features.
    out, rec = _fuse(_model(f"c = MatMul (x, w)\n{BN}\ny = Relu (n)",
                            "(float[2,4,6] x) => (float[2,4,5] y)", 4, w=_f32(6, 5)))
    assert _fired(rec) == {"LoneBatchNorm": 1}
    assert _ops(out) == ["MatMul", "Mul", "Add", "Relu"]


def test_lone_batchnorm_becomes_mul_add():
    out, rec = _fuse(_model("c = Relu (x)\n" + BN + "\ny = Relu (n)",
                            "(float[2,3,4,4] x) => (float[2,3,4,4] y)", 3))
    assert _fired(rec) == {"LoneBatchNorm": 1}
    assert _ops(out) == ["Relu", "Mul", "Add", "Relu"]


def test_batchnorm_that_is_a_graph_output_keeps_its_name():
    out, rec = _fuse(_model("c = Conv <kernel_shape = [1, 1]> (x, w)\n"
                            "y = BatchNormalization (c, scale, shift, mean, var)",
                            "(float[1,3,4,4] x) => (float[1,4,4,4] y)", 4, w=_f32(4, 3, 1, 1)))
    assert _fired(rec) == {"ConvBatchNorm": 1}
    assert [t.name for t in out.graph.outputs] == ["y"]


SHARED = {
    "weight-shared": (f"c = Conv <kernel_shape = [1, 1]> (x, w)\n{BN}\n"
                      + "d = Conv <kernel_shape = [1, 1]> (x, w)\ny = Add (n, d)",
                      "(float[1,3,4,4] x) => (float[1,4,4,4] y)",
                      "the weight 'w' is shared with another node"),
    "conv-output-read-twice": (f"c = Conv <kernel_shape = [1, 1]> (x, w)\n{BN}\ny = Add (n, c)",
                               "(float[1,3,4,4] x) => (float[1,4,4,4] y)", "is also read by"),
    "conv-output-is-graph-output": (f"c = Conv <kernel_shape = [1, 1]> (x, w)\n{BN}\ny = Relu (n)",
                                    "(float[1,3,4,4] x) => (float[1,4,4,4] y, float[1,4,4,4] c)",
                                    "is a graph output"),
}


@pytest.mark.parametrize("case", list(SHARED))
def test_conv_batchnorm_not_folded_when_the_conv_is_shared(case):
    body, signature, reason = SHARED[case]
    model = _model(body, signature, 4, w=_f32(4, 3, 1, 1))
    out, rec = _fuse(model)
    # The Conv weight stays; BN alone still becomes Mul + Add.
    assert _fired(rec) == {"LoneBatchNorm": 1}
    assert out.graph.nodes[0].inputs[1].name == "w"
    assert reason in explain(model, ConvBatchNorm())


def test_training_mode_batchnorm_is_left_alone():
    body = ("c = Conv <kernel_shape = [1, 1]> (x, w)\n"
            "y, m, v = BatchNormalization <training_mode = 1> (c, scale, shift, mean, var)")
    model = _model(body, "(float[2,3,4,4] x) => (float[2,4,4,4] y, float[4] m, float[4] v)", 4,
                   w=_f32(4, 3, 1, 1))
    out = optimize(model, [FuseBatchNorm()])
    rec = out.report["fuse-batchnorm"]
    assert not rec.changed and _fired(rec) == {}
    assert _ops(out) == ["Conv", "BatchNormalization"]
    assert "training mode" in explain(model, ConvBatchNorm())


def test_matmul_of_two_activations_then_batchnorm_is_left_to_mul_add():
    # Regression: MatMulBatchNorm read `.values` of its (activation) weight and crashed
    # `fuse` with "'Variable' object has no attribute 'values'". The weight is now a Const
    # in the pattern, so the fold does not match and BN alone becomes Mul + Add.
    model = _model(f"c = MatMul (x, z)\n{BN}\ny = Relu (n)",
                   "(float[2,6] x, float[6,4] z) => (float[2,4] y)", 4)
    out = optimize(model, ["fuse"])
    assert_same_outputs(model, out, feed_list(model), rtol=1e-4, atol=1e-5)
    assert _ops(out) == ["MatMul", "Mul", "Add", "Relu"]
    assert "is not a constant" in explain(model, MatMulBatchNorm())


@pytest.mark.parametrize("conv", ["Conv", "MatMul"])
def test_float16_batchnorm_folds_like_float16_matmul_add_fuses(conv):
    # FLOAT_DTYPES is one list now: fp16 BN folds (it never did while fp16 MatMul + Add fused).
    rng = np.random.default_rng(3)
    bn = {k: v.astype(np.float16) for k, v in _bn(4).items()}
    if conv == "Conv":
        body, signature = ("c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w)",
                           "(float16[1,3,5,5] x) => (float16[1,4,5,5] y)")
        w, x = _f32(4, 3, 3, 3), rng.standard_normal((1, 3, 5, 5))
    else:
        body, signature = "c = MatMul (x, w)", "(float16[2,6] x) => (float16[2,4] y)"
        w, x = _f32(6, 4), rng.standard_normal((2, 6))
    model = make_model(f'<ir_version: 8, opset_import: ["": 17]>\ng {signature} {{\n{body}\n'
                       f"n = BatchNormalization <epsilon = 0.001> (c, scale, shift, mean, var)\n"
                       "y = Relu (n)\n}", w=w.astype(np.float16), **bn)
    out = optimize(model, [FuseBatchNorm()])
    assert _fired(out.report["fuse-batchnorm"]) == {f"{conv}BatchNorm": 1}
    assert "BatchNormalization" not in _ops(out)
    assert out.graph.nodes[0].inputs[1].values.dtype == np.float16
    # fp16 rounds to ~1e-3 relative; the fold (in float64) differs by that rounding only.
    assert_same_outputs(model, out, {"x": x.astype(np.float16)}, rtol=1e-2, atol=1e-2)
