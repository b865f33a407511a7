"""Item 5 of issue 11: sparse tensors are densified with their own dtype (as onnxruntime does),
memory bombs and malformed ones are refused, and saves run the full checker."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxpress as ox
from onnxpress.errors import ModelLoadError, SaveError
from onnxpress.testing import run


def _sparse(dtype, dims=(2, 3), indices=(1, 4), values=(1.5, 2.5), name="s"):
    vals = onnx.numpy_helper.from_array(np.array(values, dtype), name)
    idx = onnx.numpy_helper.from_array(np.array(indices, np.int64), "")
    return helper.make_sparse_tensor(vals, idx, list(dims))


def _model(sparse, elem=TensorProto.FLOAT, dims=(2, 3)) -> onnx.ModelProto:
    """``z = (x + s) + k`` with `s` a sparse initializer and `k` a Constant(sparse_value)."""
    k = onnx.SparseTensorProto.FromString(sparse.SerializeToString())
    k.values.name = "k"
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "s"], ["y"]),
         helper.make_node("Constant", [], ["k"], sparse_value=k),
         helper.make_node("Add", ["y", "k"], ["z"])], "g",
        [helper.make_tensor_value_info("x", elem, list(dims))],
        [helper.make_tensor_value_info("z", elem, list(dims))], sparse_initializer=[sparse])
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_sparse_tensors_are_densified_with_their_dtype(tmp_path, dtype):
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    proto = _model(_sparse(dtype), elem)
    onnx.checker.check_model(proto)
    x = np.arange(6, dtype=dtype).reshape(2, 3)
    expected = run(proto.SerializeToString(), {"x": x})[0]  # onnxruntime densifies too
    np.testing.assert_array_equal(expected, x + np.array([[0, 3, 0], [0, 5, 0]], dtype))
    path = ox.load(proto).save(tmp_path / "dense.onnx")
    saved = onnx.load(str(path))
    onnx.checker.check_model(saved, full_check=True)
    assert not saved.graph.sparse_initializer
    assert [(t.name, t.data_type) for t in saved.graph.initializer] == [("s", elem)]
    (constant,) = [n for n in saved.graph.node if n.op_type == "Constant"]
    assert [(a.name, a.t.data_type) for a in constant.attribute] == [("value", elem)]
    np.testing.assert_array_equal(run(path, {"x": x})[0], expected)


def test_coordinate_indices_are_densified(tmp_path):
    sparse = _sparse(np.float32, indices=[[0, 1], [1, 1]])
    x = np.zeros((2, 3), np.float32)
    proto = _model(sparse)
    expected = run(proto.SerializeToString(), {"x": x})[0]
    np.testing.assert_array_equal(run(ox.load(proto), {"x": x})[0], expected)


@pytest.mark.parametrize("sparse, fragment", [
    (_sparse(np.float32, dims=(1 << 20, 1 << 20), indices=(7,), values=(1.0,)), "too large"),
    (_sparse(np.float32, indices=(1, 99)), "index outside"),
    (_sparse(np.float32, indices=(1,)), "1 indices for 2 values"),
], ids=["2^40 elements", "index out of range", "indices and values differ"])
def test_bad_sparse_tensors_are_refused(sparse, fragment):
    dims = tuple(sparse.dims)
    with pytest.raises(ModelLoadError, match=fragment):
        ox.load(_model(sparse, dims=dims))


def test_save_runs_the_full_checker(tmp_path):
    """A type error only shape inference sees (float + int64) is caught before writing."""
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[3] x) => (float[3] y) { y = Add(x, w) }""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(3, np.int64), "w"))
    onnx.checker.check_model(proto)  # the plain checker accepts it
    with pytest.raises(SaveError, match="checker"):
        ox.load(proto).save(tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []
