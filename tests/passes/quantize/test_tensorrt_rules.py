"""tensorrt placement: what TensorRT gains nothing from stays float (R-B4)."""

import numpy as np

import onnxpress as ox
from onnxpress.passes import Calibrate
from onnxpress.runtime.data import DataSource
from onnxpress.testing import make_model

HEADER = '<ir_version: 8, opset_import: ["": 17]>'


def _quantized_weights(model) -> set[str]:
    return {n.outputs[0].name for n in model.graph.nodes if n.op == "DequantizeLinear"
            and n.inputs[0].name.endswith("_q") and not n.inputs[0].inputs}


def _tensorrt(model, shape):
    data = DataSource.from_arrays({"x": np.random.default_rng(0).normal(
        size=(8, *shape[1:])).astype(np.float32)})
    return ox.optimize(model, [Calibrate(run_on="cpu"), "quantize-static"], data=data,
                       target="tensorrt")


def test_convolutions_with_too_few_channels_stay_float():
    rng = np.random.default_rng(0)
    model = make_model(f"""{HEADER}
    g (float[N,3,8,8] x) => (float[N,16,8,8] y) {{
        a = Conv <pads = [1,1,1,1]> (x, w3)
        y = Conv <pads = [1,1,1,1]> (a, w16)
    }}""", w3=rng.normal(size=(16, 3, 3, 3)).astype(np.float32),
        w16=rng.normal(size=(16, 16, 3, 3)).astype(np.float32))
    q = _tensorrt(model, (1, 3, 8, 8))
    convs = [n for n in q.graph.nodes if n.op == "Conv"]
    # 3 input channels: float weight; 16 → 16: int8 weight behind a DequantizeLinear.
    assert [type(n.inputs[1].inputs[0]).__name__ if n.inputs[1].inputs else "Constant"
            for n in convs] == ["Constant", "Node"]


def test_gemv_shaped_matmul_stays_float():
    rng = np.random.default_rng(0)
    model = make_model(f"""{HEADER}
    g (float[N,32] x) => (float[N,1] y) {{
        h = MatMul (x, w)
        y = MatMul (h, v)
    }}""", w=rng.normal(size=(32, 32)).astype(np.float32),
        v=rng.normal(size=(32, 1)).astype(np.float32))
    q = _tensorrt(model, (1, 32))
    matmuls = [n for n in q.graph.nodes if n.op == "MatMul"]
    assert matmuls[0].inputs[1].inputs[0].op == "DequantizeLinear"
    assert not matmuls[1].inputs[1].inputs  # the [32, 1] weight is still a float initializer
