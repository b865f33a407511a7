"""fuse: cleanup + every fusion to a fixed point; ordering, stats, the demo model, the zoo."""

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import pytest
from zoo import feed_list

from onnxpress import load, optimize
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context
from onnxpress.passes.fusion.pipeline import Fuse
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs, make_model, run

RNG = np.random.default_rng(0)
DEMO = files("onnxpress.demo")


def _bn(channels: int) -> dict[str, np.ndarray]:
    return {"scale": RNG.uniform(0.5, 2.0, channels).astype(np.float32),
            "shift": RNG.standard_normal(channels).astype(np.float32),
            "mean": RNG.standard_normal(channels).astype(np.float32),
            "var": RNG.uniform(0.5, 2.0, channels).astype(np.float32)}


def _model(body: str, signature: str, **inits) -> Model:
    return make_model(f'<ir_version: 8, opset_import: ["": 17]>\ng {signature} {{\n{body}\n}}',
                      **inits)


def _ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]


def _fuse(model: Model, **options) -> tuple[Model, dict]:
    """The fused model, and fuse's own stats with its children's summed (``"<pass>.<key>"``)."""
    out = optimize(model, [Fuse(**options)])
    assert_same_outputs(model, out, feed_list(model), rtol=1e-4, atol=1e-5)
    record = out.report["fuse"]
    return out, {**record.stats, **record.totals()}


BN = "n = BatchNormalization (c, scale, shift, mean, var)"


def test_matmul_batchnorm_reaches_gemm_in_a_second_round():
    model = _model(f"c = MatMul (x, w)\n{BN}\ny = Relu (n)", "(float[2,6] x) => (float[2,4] y)",
                   w=RNG.standard_normal((6, 4)).astype(np.float32), **_bn(4))
    out, stats = _fuse(model)
    assert _ops(out) == ["Gemm", "Relu"]
    assert stats["fuse-batchnorm.MatMulBatchNorm"] == 1
    assert stats["fuse-gemm.MatMulAddToGemm"] == 1
    assert stats["rounds"] == 3  # fold BN; fuse the MatMul + Add it left; confirm nothing moves


def test_max_rounds_bounds_the_repetition():
    model = _model(f"c = MatMul (x, w)\n{BN}\ny = Relu (n)", "(float[2,6] x) => (float[2,4] y)",
                   w=RNG.standard_normal((6, 4)).astype(np.float32), **_bn(4))
    out, stats = _fuse(model, max_rounds=1)
    assert stats["rounds"] == 1 and _ops(out) == ["MatMul", "Add", "Relu"]


def test_producers_are_fused_before_batchnorm_is_folded():
    # A cancelling Transpose pair hides Conv → BN; MatMul + bias Add hides Gemm → BN. Were
    # BN handled first, it would become a Mul + Add that nothing folds back.
    conv = _model("c0 = Conv <kernel_shape = [1, 1]> (x, w)\n"
                  "t = Transpose <perm = [0, 2, 3, 1]> (c0)\n"
                  f"c = Transpose <perm = [0, 3, 1, 2]> (t)\n{BN}\ny = Relu (n)",
                  "(float[1,3,4,4] x) => (float[1,4,4,4] y)",
                  w=RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), **_bn(4))
    gemm = _model(f"m = MatMul (x, w)\nc = Add (m, b)\n{BN}\ny = Relu (n)",
                  "(float[2,6] x) => (float[2,4] y)",
                  w=RNG.standard_normal((6, 4)).astype(np.float32),
                  b=RNG.standard_normal(4).astype(np.float32), **_bn(4))
    assert _ops(_fuse(conv)[0]) == ["Conv", "Relu"]
    assert _ops(_fuse(gemm)[0]) == ["Gemm", "Relu"]


def test_pad_and_exporter_leftovers_fuse():
    body = ("k = Constant <value = int64[8] {0, 0, 1, 1, 0, 0, 1, 1}> ()\n"
            "p = Pad (x, k)\nc = Conv <kernel_shape = [3, 3]> (p, w)\ni = Identity (c)\n"
            "n = BatchNormalization (i, scale, shift, mean, var)\ny = Relu (n)")
    model = _model(body, "(float[1,3,4,4] x) => (float[1,4,4,4] y)",
                   w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), **_bn(4))
    out, stats = _fuse(model)
    assert _ops(out) == ["Conv", "Relu"] and out.graph.nodes[0].attrs["pads"] == [1, 1, 1, 1]
    assert stats["fuse-pad.PadConv"] == 1 and stats["fuse-batchnorm.ConvBatchNorm"] == 1


def test_kept_nd_is_the_final_count_not_a_sum_over_rounds():
    # Two rounds (Conv + BN folds, then a confirming round) with one N-D MatMul left alone.
    body = (f"c = Conv <kernel_shape = [1, 1]> (x, w)\n{BN}\nr = Reshape (n, shape)\n"
            "m = MatMul (r, v)\ny = Add (m, b)")
    model = _model(body, "(float[1,3,4,4] x) => (float[1,4,2] y)",
                   w=RNG.standard_normal((4, 3, 1, 1)).astype(np.float32),
                   shape=np.array([1, 4, 16], np.int64),
                   v=RNG.standard_normal((16, 2)).astype(np.float32),
                   b=RNG.standard_normal(2).astype(np.float32), **_bn(4))
    out, stats = _fuse(model)
    assert stats["rounds"] == 2 and stats["fuse-gemm.kept_nd"] == 2  # the sum over rounds
    assert out.report["fuse"].descendants("fuse-gemm")[-1].stats["kept_nd"] == 1
    assert _ops(out) == ["Conv", "Reshape", "MatMul", "Add"]


def test_nothing_to_do_reports_unchanged():
    out = optimize(_model("y = Relu (x)", "(float[2,3] x) => (float[2,3] y)"), ["fuse"])
    record = out.report["fuse"]
    assert not record.changed and record.stats == {"rounds": 1}
    assert [r.stats for r in record.descendants("cleanup")] == [{"rounds": 1}]


def test_digits_demo_fuses_every_batchnorm_and_keeps_its_predictions():
    model = load(DEMO / "digits.onnx")
    out = optimize(model, ["fuse"])
    # 27 nodes: 7 Conv + 7 BatchNormalization + 13 others; the 7 BN fold into their Conv.
    assert (len(model), len(out)) == (27, 20)
    assert "BatchNormalization" not in _ops(out)
    images = np.load(DEMO / "digits_test.npz")["input"]
    labels = np.load(DEMO / "digits_test_labels.npy")
    before = run(model, {"input": images})[0].argmax(axis=1)
    after = run(out, {"input": images})[0].argmax(axis=1)
    np.testing.assert_array_equal(after, before)
    top1 = json.loads((DEMO / "digits.json").read_text())["fp32_test_top1"]
    assert np.mean(after == labels) == pytest.approx(top1)


def test_fuse_on_every_zoo_and_real_model(any_model):
    """Equivalent, deterministic (same bytes from the same input) and idempotent."""
    first, _ = _fuse(any_model)
    second = optimize(any_model, [Fuse()])
    assert first.to_onnx().SerializeToString() == second.to_onnx().SerializeToString()
    again = Fuse().run(first, Context(target=get_target("cpu")))
    assert not again.changed
