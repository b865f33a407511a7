"""Targets: the machine-dependent part of the cpu target's weight precision."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from zoo import graph, ints

from onnxpress.targets import attention_blocks, get_target, x86_without_vnni


def test_weight_bits_drop_to_7_only_where_u8s8_products_saturate():
    cpu = get_target("cpu")
    assert cpu.weight_bits == (7 if x86_without_vnni() else 8)
    assert dataclasses.replace(cpu, saturating_u8s8=lambda: True).weight_bits == 7
    assert dataclasses.replace(cpu, saturating_u8s8=lambda: False).weight_bits == 8
    assert get_target("tensorrt").weight_bits == 8


def _matmul_integer(w: np.ndarray) -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [1, w.shape[0]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [1, w.shape[1]])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_7_bit_weights_are_exact_in_onnxruntime_u8s8_kernels():
    """The premise of `weight_bits`: uint8 × (7-bit) int8 products never saturate, on any CPU."""
    rng = np.random.default_rng(0)
    x = np.full((1, 64), 255, np.uint8)
    w = rng.choice(np.array([-63, 63], np.int8), size=(64, 32))
    (y,) = _matmul_integer(w).run(None, {"x": x})
    np.testing.assert_array_equal(y, x.astype(np.int32) @ w.astype(np.int32))


def _ops_in_blocks(model) -> list[str]:
    blocks = attention_blocks(model.graph)
    return [n.op for n in model.graph.nodes if id(n) in blocks]


def test_a_softmax_in_a_detector_head_marks_only_itself():
    """The first wave's detector: one Softmax (DFL) made the whole graph a 'transformer'."""
    model = graph("(float[1,3,8,8] x) => (float[1,4,64] y)",
                  "c = Conv <pads = [1, 1, 1, 1]> (x, w)\nr = Reshape (c, shape)\n"
                  "s = Softmax <axis = 1> (r)\ny = Conv (s, arange)",
                  w=np.ones((16, 3, 3, 3), np.float32), shape=ints(1, 16, 4, 16),
                  arange=np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1))
    assert _ops_in_blocks(model) == ["Softmax"]


def test_layers_between_layernorms_are_inside_and_a_conv_stem_is_not():
    model = graph("(float[1,3,4,2] x) => (float[1,16,8] y)",
                  "c = Conv (x, w)\nr = Reshape (c, shape)\n"
                  "n0 = LayerNormalization <axis = -1> (r, g, b)\nm = MatMul (n0, v)\n"
                  "a = Add (m, n0)\ny = LayerNormalization <axis = -1> (a, g, b)",
                  w=np.ones((16, 3, 1, 1), np.float32), shape=ints(1, 16, 8),
                  g=np.ones(8, np.float32), b=np.zeros(8, np.float32),
                  v=np.ones((8, 8), np.float32))
    assert _ops_in_blocks(model) == ["LayerNormalization", "MatMul", "Add",
                                     "LayerNormalization"]


def test_a_layernorm_written_with_reductions_is_a_marker():
    model = graph("(float[2,8] x) => (float[2,8] y)",
                  "m = ReduceMean <axes = [-1]> (x)\nd = Sub (x, m)\nq = Mul (d, d)\n"
                  "v = ReduceMean <axes = [-1]> (q)\ne = Add (v, eps)\ns = Sqrt (e)\n"
                  "y = Div (d, s)", eps=np.array(1e-5, np.float32))
    assert "Sqrt" in _ops_in_blocks(model)
