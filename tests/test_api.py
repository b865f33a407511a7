"""`onnxpress.optimize`: never touches its input, accepts names and objects, checks data."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from zoo import ZOO, feed_list

import onnxpress as ox
from onnxpress.errors import DataError, PassError, TargetError
from onnxpress.passes import EliminateDeadCode, EliminateIdentity, FoldConstants, Report
from onnxpress.testing import assert_same_outputs

#: cleanup turns its two Constant nodes into initializers: the result really differs.
CHANGING = "layernorm_decomposed"


def test_path_input_is_byte_identical_afterwards(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(ZOO[CHANGING]().to_onnx().SerializeToString())
    before, stat = path.read_bytes(), path.stat()
    result = ox.optimize(path, ["cleanup"])
    assert len(result) == 9
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert result.source == path.resolve()


def test_model_proto_is_equal_afterwards():
    proto = ZOO[CHANGING]().to_onnx()
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    result = ox.optimize(proto, ["cleanup"])
    assert len(result) == 9
    assert proto == copy
    assert proto.SerializeToString() == copy.SerializeToString()


def test_gs_graph_is_unchanged_afterwards():
    graph = gs.import_onnx(ZOO[CHANGING]().to_onnx())
    nodes = list(graph.nodes)
    before = gs.export_onnx(graph).SerializeToString()
    result = ox.optimize(graph, ["cleanup"])
    assert len(result) == 9
    assert len(graph.nodes) == 11 and all(a is b for a, b in zip(graph.nodes, nodes, strict=True))
    assert gs.export_onnx(graph).SerializeToString() == before


def test_model_is_unchanged_afterwards():
    model = ZOO[CHANGING]()
    before = model.to_onnx().SerializeToString()
    result = ox.optimize(model, ["cleanup"])
    assert result is not model and len(result) == 9
    assert len(model) == 11 and model.pipeline == [] and model.report is None
    assert model.to_onnx().SerializeToString() == before


def test_names_objects_and_single_passes():
    model = ZOO["reshape"]()
    result = ox.optimize(model, ["fold-constants", EliminateIdentity(), EliminateDeadCode()])
    assert isinstance(result.report, Report)
    assert result.report.names() == ["fold-constants", "eliminate-identity",
                                      "eliminate-dead-code"]
    assert [p["name"] for p in result.pipeline] == result.report.names()
    assert ox.optimize(model, "cleanup").report.names() == ["cleanup"]
    assert ox.optimize(model, FoldConstants(size_limit=1)).report.records[0].options == {
        "size_limit": 1}
    assert ox.optimize(model).report.names() == ["cleanup"]  # the default pipeline
    assert ox.optimize(model, []).report.names() == []
    assert_same_outputs(model, result, feed_list(model), rtol=0, atol=0)


def test_reference_is_the_untouched_input():
    seen = {}

    @dataclass(frozen=True)
    class Peek(ox.Pass):
        def run(self, model, ctx):
            seen["reference"], seen["working"] = ctx.teacher(), model
            seen["reference_nodes"] = len(ctx.teacher())
            return ox.PassResult(False)

    Peek.name = "test-peek"  # not registered
    model = ZOO[CHANGING]()
    result = ox.optimize(model, ["cleanup", Peek()])
    assert seen["working"] is result
    assert seen["reference"] is not model and seen["reference"] is not result
    assert seen["reference_nodes"] == 11


def test_numeric_verification_with_feed_dicts():
    model = ZOO["reshape"]()
    result = ox.optimize(model, ["cleanup"], data=feed_list(model), verify="numeric")
    assert result.report.records[0].changed
    assert "numeric" in {r.verified for _, r in result.report.walk()}


def test_unknown_target_and_verify_mode():
    model = ZOO["gemm"]()
    with pytest.raises(TargetError, match="unknown target 'tpu'.*cpu"):
        ox.optimize(model, ["cleanup"], target="tpu")
    with pytest.raises(PassError, match="verify"):
        ox.optimize(model, ["cleanup"], verify="sometimes")


# --------------------------------------------------------------------------------------------
# Data that does not fit the model: DataError before any pass runs
def _samples(*shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("data,message", [
    ({"input": _samples(3, 3, 4, 4)}, r"missing \['x'\].*not inputs of the model \['input'\]"),
    ({"x": _samples(3, 3, 4, 4, dtype=np.float64)}, "'x' is float64, the model expects float32"),
    ({"x": _samples(3, 3, 4, 5)}, r"\(axis 3\)"),
    ({"x": _samples(3, 48)}, "expects rank 4"),
    ([{"x": _samples(1, 3, 4, 4)}], r"\(axis 0\)"),
    ([], "no samples"),
    ({"x": _samples(0, 3, 4, 4)}, "no samples"),
    (42, "cannot use a int as data"),
], ids=["names", "dtype", "shape", "rank", "batch", "empty_iterable", "no_samples", "int"])
def test_wrong_data(data, message):
    with pytest.raises(DataError, match=message):
        ox.optimize(ZOO["gemm"](), ["cleanup"], data=data)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        ox.optimize(ZOO["gemm"](), ["cleanup"], data=tmp_path / "calib.npz")


def test_npz_with_wrong_names(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, images=_samples(2, 3, 4, 4))
    with pytest.raises(DataError) as info:
        ox.optimize(ZOO["gemm"](), ["cleanup"], data=path)
    assert str(path) in str(info.value) and "'images'" in str(info.value)
