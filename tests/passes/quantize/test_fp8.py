"""quantize-fp8: FP8 E4M3 Q/DQ for TensorRT, on the nodes int8 would quantize.

GPU execution is not available here: the tests check that the emitted model is valid (full
checker), that placement equals quantize-static's selection for the same table, and that
onnxruntime's CPU FP8 QuantizeLinear / DequantizeLinear (reference kernels) compute exactly
the numpy reference of the FP8 math; outputs of a small CNN stay close to FP32 (stated below).
"""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
import onnx
import pytest
from zoo import MODELS_DIR, feed_list

import onnxpress as ox
from onnxpress.errors import PassError
from onnxpress.passes import QuantizeFP8, QuantizeStatic
from onnxpress.passes.calibrate import Calibrate
from onnxpress.targets import TENSORRT_RULES, get_target
from onnxpress.testing import make_model, run

CNN = MODELS_DIR / "torch_cnn_opset13.onnx"


@functools.cache
def _fp8_cnn():
    data = feed_list(ox.load(CNN), 8)
    return ox.optimize(CNN, [Calibrate(method="minmax", run_on="cpu"), QuantizeFP8()],
                       data=data, target="tensorrt"), data


def test_cnn_valid_and_close_to_fp32():
    model, data = _fp8_cnn()
    proto = model.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    assert model.opset >= 19
    types = {i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT8E4M3FN in types  # weights stored as FP8
    for feed in data[:2]:
        want, got = run(CNN, feed)[0], run(model, feed)[0]
        # FP8 keeps ~2 significant digits: relative error of the logits within 10%.
        assert np.linalg.norm(got - want) <= 0.1 * np.linalg.norm(want)


def test_placement_is_quantize_static_selection():
    model, _ = _fp8_cnn()
    source = ox.load(CNN)
    chosen = [u.node for u in QuantizeStatic().plan(source, get_target("tensorrt")).units]
    quantized = [n.name for n in model.graph.nodes if n.op in TENSORRT_RULES
                 and any(t.inputs and t.inputs[0].op == "DequantizeLinear" for t in n.inputs)]
    assert quantized == [n.name for n in chosen]


def test_onnxruntime_fp8_qdq_matches_numpy():
    """X → Q → DQ on the CPU provider equals saturate(round_fp8(x / s)) · s, value for value."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 8)).astype(np.float32)
    model = make_model('<ir_version: 9, opset_import: ["": 19]> g (float[4, 32] x) => '
                       '(float[4, 8] y) { y = MatMul(x, w) }', w=w)
    x = (rng.standard_normal((4, 32)) * 3).astype(np.float32)
    x[0, 0] = 1e4  # beyond amax: saturates at 448 · s
    calibration = np.linspace(-4, 4, 4 * 32, dtype=np.float32).reshape(4, 32)  # amax 4
    out = ox.optimize(model, [Calibrate(method="minmax", run_on="cpu"),
                              QuantizeFP8(skip_unprofitable=False)],
                      data=[{"x": calibration}], target="tensorrt")
    onnx.checker.check_model(out.to_onnx(), full_check=True)

    def fp8(values, scale):
        return (np.clip(values / scale, -448, 448).astype(ml_dtypes.float8_e4m3fn)
                .astype(np.float32) * scale)

    s_x = np.float32(4.0 / 448)
    s_w = (np.abs(w).max(axis=0) / 448).astype(np.float32)
    want = fp8(x, s_x) @ fp8(w, s_w)
    np.testing.assert_allclose(run(out, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_needs_tensorrt_and_ranges():
    with pytest.raises(PassError, match="tensorrt"):
        ox.optimize(CNN, [QuantizeFP8()], target="cpu")
    with pytest.raises(PassError, match="calibrate"):
        ox.optimize(CNN, [QuantizeFP8()], target="tensorrt")
