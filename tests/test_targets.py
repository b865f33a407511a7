"""Targets: the machine-dependent part of the cpu target's weight precision."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxpress.targets import get_target, x86_without_vnni


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
