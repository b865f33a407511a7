"""`onnxpress.ir.ops`: every spelling of constants, optional inputs, axes, Pad and Slice."""

from __future__ import annotations

import numpy as np
import pytest

from onnxpress.ir import ops
from onnxpress.ir.model import Model
from onnxpress.testing import make_model


def _model(body: str, opset: int = 17, signature: str = "(float[2,3,4] x) => (float y)",
           **initializers: np.ndarray) -> Model:
    ir = {9: 4, 10: 5, 17: 8, 18: 8}[opset]
    return make_model(f'<ir_version: {ir}, opset_import: ["": {opset}]>\ng {signature} {{\n'
                      f"{body}\n}}", **initializers)


def _node(model: Model, op: str):
    return next(n for n in model.graph.nodes if n.op == op)


def test_constant_value_reads_initializers_constant_nodes_and_scalar_attributes():
    model = _model("c = Constant <value = float[2] {1, 2}> ()\n"
                   "d = Constant <value_int = 7> ()\nz = Relu (x)\n"
                   "a = Add (z, c)\nb = Add (a, k)\ny = Mul (b, d)", k=np.float32(3))
    add, add2, mul = (n for n in model.graph.nodes if n.op in ("Add", "Mul"))
    np.testing.assert_array_equal(ops.constant_value(add.inputs[1]), [1, 2])
    assert ops.constant_value(add2.inputs[1]) == 3
    assert ops.constant_value(mul.inputs[1]) == 7 and ops.constant_value(
        mul.inputs[1]).dtype == np.int64
    assert ops.constant_value(add.inputs[0]) is None  # computed (Relu)


def test_optional_input_treats_an_empty_name_as_absent():
    model = _model('p = Pad (x, pads, , axes)\ny = ReduceSum (p)', opset=18,
                   pads=np.array([1, 1], np.int64), axes=np.array([-1], np.int64))
    pad = _node(model, "Pad")
    assert ops.optional_input(pad, 1).name == "pads"
    assert ops.optional_input(pad, 2) is None and ops.optional_input(pad, 9) is None
    operands = ops.pad_operands(pad)
    np.testing.assert_array_equal(operands.pads, [1, 1])
    assert operands.value == 0 and list(operands.axes) == [-1]


def test_pad_operands_in_attribute_form():
    model = _model('p = Pad <pads = [0, 1, 0, 2], value = 0.5> (x)\ny = ReduceSum (p)', opset=10,
                   signature="(float[2,3] x) => (float y)")
    operands = ops.pad_operands(_node(model, "Pad"))
    assert list(operands.pads) == [0, 1, 0, 2] and operands.value == 0.5 and operands.axes is None


def test_a_computed_operand_raises_naming_it():
    model = _model("s = Shape (x)\nz = Sub (s, s)\nh = Concat <axis = 0> (z, z)\n"
                   "p = Pad (x, h)\ny = ReduceSum (p)")
    with pytest.raises(ops.DynamicOperand, match="the Pad's pads input is not constant"):
        ops.pad_operands(_node(model, "Pad"))
    with pytest.raises(ops.DynamicOperand, match="input 1 'h' is not constant"):
        ops.operand(_node(model, "Pad"), 1)


@pytest.mark.parametrize(("body", "opset", "rank", "want"), [
    ("y = ReduceMean <axes = [-1, 0]> (x)", 17, 3, [2, 0]),   # attribute form
    ("y = ReduceMean <axes = [-1]> (x)", 17, None, [-1]),     # rank unknown: kept as given
    ("y = ReduceSum (x, axes)", 17, 3, [2]),                  # input form (ReduceSum 13+)
    ("y = ReduceMean (x, axes)", 18, 3, [2]),                 # input form (ReduceMean 18+)
    ("y = ReduceMean (x)", 18, 3, None),                      # no axes given
])
def test_axes_in_attribute_and_input_forms(body, opset, rank, want):
    model = _model(body, opset=opset, axes=np.array([-1], np.int64))
    assert ops.axes(model.graph.nodes[0], rank) == want


@pytest.mark.parametrize(("body", "opset", "want"), [
    ("y = Slice <starts = [1], ends = [3], axes = [1]> (x)", 9, ([1], [3], [1], [1])),
    ("y = Slice <starts = [0, 1], ends = [2, 3]> (x)", 9, ([0, 1], [2, 3], [0, 1], [1, 1])),
    ("y = Slice (x, starts, ends)", 17, ([0, 1], [2, 3], [0, 1], [1, 1])),
    ("y = Slice (x, starts, ends, , steps)", 17, ([0, 1], [2, 3], [0, 1], [1, 2])),
])
def test_slice_operands_fill_defaults_in_both_forms(body, opset, want):
    model = _model(body, opset=opset, starts=np.array([0, 1], np.int64),
                   ends=np.array([2, 3], np.int64), steps=np.array([1, 2], np.int64))
    got = ops.slice_operands(model.graph.nodes[0])
    assert [list(v) for v in got] == [list(w) for w in want]


def test_rank_static_shape_and_dtype():
    model = _model("y = ReduceSum (x)", signature="(float[N,3] x) => (float y)",
                   k=np.zeros((2, 5), np.float16))
    x = model.graph.inputs[0]
    k = model.constant("k2", np.zeros((2, 5), np.float16))
    assert ops.rank(x) == 2 and ops.static_shape(x) is None and ops.static_dims(x) == ("N", 3)
    assert ops.rank(k) == 2 and ops.static_shape(k) == (2, 5) and ops.dtype(k) == np.float16


def test_one_list_of_float_dtypes():
    assert {np.dtype(t).name for t in ops.FLOAT_DTYPES} == {"float16", "bfloat16", "float32",
                                                            "float64"}
    assert ops.is_float(np.float16) and not ops.is_float(np.int8) and not ops.is_float(None)
