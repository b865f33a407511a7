"""fusion_report: which Q/DQ units onnxruntime really fused into int8 kernels.

Two halves: the counter itself on hand-built graphs whose fate in onnxruntime is known, and
the end-to-end claim — after fuse + calibrate + quantize-static, onnxruntime's CPU provider
fuses every unit of the CNN zoo graphs and of the digits model.

The CNN zoo graphs end in a unit that writes the graph output (a Relu or a Concat).
onnxruntime's selectors refuse a unit whose own node writes a graph output
(``NodeGroupSelector::CheckQDQNodes`` in
``onnxruntime/core/optimizer/qdq_transformer/selectors_actions/qdq_selectors.cc``), so
quantize-static ends such a unit with Q → DQ and lets the DequantizeLinear write the output.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from zoo import ZOO

import onnxpress as ox
from onnxpress import demo
from onnxpress.errors import TargetError
from onnxpress.passes import Calibrate, MixedPrecision
from onnxpress.recipes import RECIPES
from onnxpress.runtime.data import DataSource
from onnxpress.runtime.fusion import FusionReport, fusion_report

CNN_ZOO = ["conv_bn_relu", "residual_add", "depthwise_conv", "gemm", "concat"]


@functools.cache
def _int8_cpu_bytes(name: str) -> bytes:
    if name == "digits":
        source, data = demo.model_path(), demo.calibration_data()
    else:
        source = ZOO[name]()
        data = DataSource.random(source, n=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ox.optimize(source, ["fuse", Calibrate(method="percentile"), "quantize-static"],
                            data=data)
    return model.to_onnx().SerializeToString()


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _init(name, value, dtype) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(value, dtype), name)


def _float(name, shape):
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def _qdq_conv(bias_dtype=np.int32, output_q=True) -> onnx.ModelProto:
    """DQ(x) → Conv(DQ(w), DQ(b)) [→ Q → DQ]: one QDQ Conv unit, fusable or not."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0)]
    inits = [_init("xs", 0.02, np.float32), _init("xz", 128, np.uint8),
             _init("wq", rng.integers(-127, 128, (4, 3, 3, 3)), np.int8),
             _init("ws", [0.01, 0.02, 0.03, 0.04], np.float32), _init("wz", [0] * 4, np.int8)]
    if bias_dtype == np.int32:
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0))
        inits += [_init("bq", [10, -20, 30, 0], np.int32),
                  _init("bs", [0.0002, 0.0004, 0.0006, 0.0008], np.float32),
                  _init("bz", [0] * 4, np.int32)]
    else:
        inits.append(_init("bd", [0.1, -0.2, 0.3, 0.0], np.float32))
    conv_out = "c" if output_q else "y"
    nodes.append(helper.make_node("Conv", ["xd", "wd", "bd"], [conv_out], pads=[1, 1, 1, 1]))
    if output_q:
        nodes += [helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
                  helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"])]
        inits += [_init("ys", 0.05, np.float32), _init("yz", 128, np.uint8)]
    return _model(nodes, [_float("x", [1, 3, 8, 8])], [_float("y", [1, 4, 8, 8])], inits)


# --------------------------------------------------------------------------------------------
# The counter
def test_a_well_formed_conv_unit_is_fused():
    report = fusion_report(_qdq_conv())
    assert dict(report.fused) == {"QLinearConv": 1} and not report.unfused
    assert report.ratio == 1.0


def test_a_float_bias_is_quantized_by_onnxruntime_itself():
    """Level-1 WeightBiasQuantization turns a float bias into DQ(int32, s_x·s_w): still fused."""
    report = fusion_report(_qdq_conv(bias_dtype=np.float32))
    assert dict(report.fused) == {"QLinearConv": 1} and report.ratio == 1.0


def test_a_conv_with_an_output_edge_not_going_to_q_is_counted_unfused():
    """R-A1: every output edge of the unit must go to its Q; here a float Sigmoid also reads
    the Conv output."""
    proto = _qdq_conv()
    proto.graph.node.append(helper.make_node("Sigmoid", ["c"], ["side"]))
    proto.graph.output.append(_float("side", [1, 4, 8, 8]))
    report = fusion_report(proto)
    assert not report.fused and report.unfused["Conv"] == 1 and report.ratio == 0.0


def test_a_conv_writing_a_graph_output_is_counted_unfused():
    """R-A1: no Q after the Conv (its output is the graph output) — not fusable."""
    report = fusion_report(_qdq_conv(output_q=False))
    assert report.unfused["Conv"] == 1 and report.ratio == 0.0


def test_a_float_op_on_a_dequantized_activation_is_unfused_but_a_weight_dq_is_not():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Sin", ["d"], ["a"]),               # no int8 kernel for Sin
             helper.make_node("DequantizeLinear", ["k", "s", "z"], ["kd"]),
             helper.make_node("Mul", ["a", "kd"], ["y"])]         # reads a *weight* DQ only
    inits = [_init("s", 0.1, np.float32), _init("z", 0, np.uint8),
             _init("k", np.arange(4), np.uint8)]
    report = fusion_report(_model(nodes, [_float("x", [4])], [_float("y", [4])], inits))
    assert dict(report.unfused) == {"Sin": 1}  # the Mul on a constant's DQ is not counted


def test_a_float_model_reports_nothing_and_ratio_one():
    report = fusion_report(demo.model_path())
    assert not report.fused and not report.unfused and report.ratio == 1.0


def test_report_arithmetic_and_summary():
    from collections import Counter

    report = FusionReport(Counter({"QLinearConv": 3, "QGemm": 1}), Counter({"Relu": 1}))
    assert report.ratio == pytest.approx(0.8)
    assert report.summary() == ("80% fused (int8 kernels: QGemm×1, QLinearConv×3; "
                                "float ops on DQ: Relu×1)")
    assert FusionReport().ratio == 1.0
    assert FusionReport().summary() == "100% fused (int8 kernels: none; float ops on DQ: none)"


@pytest.mark.parametrize("form", ["path", "bytes", "proto", "model"])
def test_accepts_every_model_form(form, tmp_path):
    proto = _qdq_conv()
    path = tmp_path / "conv.onnx"
    onnx.save(proto, str(path))
    model = {"path": path, "bytes": proto.SerializeToString(), "proto": proto,
             "model": ox.load(proto)}[form]
    assert dict(fusion_report(model).fused) == {"QLinearConv": 1}


def test_a_target_whose_provider_is_missing_fails_naming_the_package():
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(TargetError, match="TensorrtExecutionProvider.*onnxruntime-gpu"):
        fusion_report(_qdq_conv(), "tensorrt")


def test_the_input_model_is_not_changed(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(_qdq_conv(), str(path))
    before = path.read_bytes()
    fusion_report(path)
    assert path.read_bytes() == before


# --------------------------------------------------------------------------------------------
# End to end: what quantize-static places, onnxruntime fuses
@pytest.mark.parametrize("name", CNN_ZOO)
def test_cnn_zoo_graphs_are_fully_fused_on_cpu(name):
    report = fusion_report(_int8_cpu_bytes(name))
    assert report.fused, report.summary()
    assert report.ratio == 1.0, report.summary()


def test_digits_int8_cpu_is_fully_fused():
    report = fusion_report(_int8_cpu_bytes("digits"))
    assert report.ratio == 1.0, report.summary()
    assert dict(report.fused) == {"QLinearConv": 7, "QLinearAdd": 2, "QGemm": 2,
                                  "QLinearGlobalAveragePool": 1}


def test_the_recipe_reports_the_fusion_in_its_stats():
    recipe = [*RECIPES["int8-cpu"][:-1], MixedPrecision(allow_slower=True)]
    model = ox.optimize(demo.model_path(), recipe, data=demo.calibration_data())
    record = model.report["mixed-precision"]  # the recipe's guard reports what it kept
    assert record.stats.get("onnxruntime", "").startswith("100% fused")
