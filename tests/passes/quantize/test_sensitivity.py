"""mixed-precision: int8 where the outputs stay within the stated cosine of FP32."""

import numpy as np
import onnx
import pytest
from zoo import REAL_MODELS

import onnxpress as ox
from onnxpress.errors import PreconditionError
from onnxpress.passes import Calibrate, MixedPrecision
from onnxpress.passes.quantize.qdq import qparams, weight_qparams
from onnxpress.passes.quantize.sensitivity import _cosine, fake_quantize
from onnxpress.passes.quantize.static import is_quantized
from onnxpress.runtime.data import DataSource
from onnxpress.testing import run

TRANSFORMER = next(p for p in REAL_MODELS if p.name == "torch_transformer.onnx")


def _tokens(n: int, seed: int) -> DataSource:
    ids = np.random.default_rng(seed).integers(0, 100, (n, 12)).astype(np.int64)
    return DataSource.from_arrays({"input_ids": ids})


def _ort_qdq(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None) -> np.ndarray:
    attrs = {"axis": axis} if axis is not None else {}
    nodes = [onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    graph = onnx.helper.make_graph(
        nodes, "qdq", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, x.shape)],
        [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zero, "z")])
    return run(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)],
                                      ir_version=8), {"x": x})[0]


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_fake_quantize_equals_onnxruntime_quantize_dequantize(axis):
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32) * 3
    p = (weight_qparams(x, axis) if axis is not None
         else qparams(float(x.min()), float(x.max()), np.uint8, symmetric=False))
    np.testing.assert_allclose(fake_quantize(x, p), _ort_qdq(x, p.scale, p.zero_point, axis),
                               rtol=0, atol=1e-6)


def test_reaches_the_cosine_it_promises():
    calibration, evaluation = _tokens(32, 0), _tokens(16, 1)
    model = ox.optimize(TRANSFORMER, ["cleanup", Calibrate(),
                                      MixedPrecision(min_cosine=0.999, samples=16)],
                        data=calibration)
    stats = model.report["mixed-precision"].stats
    assert is_quantized(model) and stats["cosine"] >= 0.999
    feeds = evaluation.take(16)
    reference = [run(TRANSFORMER, f)[0].reshape(1, -1) for f in feeds]
    candidate = [run(model, f)[0].reshape(1, -1) for f in feeds]
    # On other samples than it measured on, it stays close to the promise.
    assert _cosine([np.concatenate(reference)], [np.concatenate(candidate)]) >= 0.998


def test_an_unreachable_target_leaves_the_model_float_and_says_why():
    model = ox.optimize(TRANSFORMER, ["cleanup", Calibrate(),
                                      MixedPrecision(min_cosine=1.0, samples=8)],
                        data=_tokens(8, 0))
    record = model.report["mixed-precision"]
    assert not record.changed and "no layer can be quantized" in record.stats["reason"]
    assert not is_quantized(model)


def test_needs_data_and_a_real_output_name():
    with pytest.raises(PreconditionError, match="calibrate"):
        ox.optimize(TRANSFORMER, ["mixed-precision"])
    with pytest.raises(PreconditionError, match="not outputs of the model"):
        ox.optimize(TRANSFORMER, [Calibrate(), MixedPrecision(outputs=("nope",))],
                    data=_tokens(8, 0))
