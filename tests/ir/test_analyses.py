"""`onnxpress.ir.analyses` and the model's analysis cache."""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
from zoo import ZOO

from onnxpress.ir import analyses
from onnxpress.ir.model import Model


def _variables(model: Model) -> dict[str, tuple]:
    return {t.name: (t.dtype, t.shape) for n in model.graph.nodes for t in n.outputs}


def test_shapes_annotates_variables_with_symbolic_dims():
    model = ZOO["dynamic_batch"]()
    assert _variables(model)["c"] == (None, None)
    found = model.analysis(analyses.shapes)
    annotated = _variables(model)
    assert annotated["c"] == (np.float32, ["N", 4, 8, 8])
    assert annotated["p"] == (np.float32, ["N", 4, 1, 1])
    assert annotated["s"] == (np.int64, [4])
    assert annotated["n"] == (np.int64, [])
    assert found["x"] == (onnx.TensorProto.FLOAT, ("N", 3, 8, 8))
    assert found["target"] == (onnx.TensorProto.INT64, (2,))


def test_shapes_annotates_every_zoo_variable(zoo_model):
    zoo_model.analysis(analyses.shapes)
    # ONNX shape inference leaves loop-carried shapes open (they may change per iteration).
    loop_outputs = {t.name for n in zoo_model.graph.nodes if n.op == "Loop" for t in n.outputs}
    for name, (dtype, shape) in _variables(zoo_model).items():
        assert dtype is not None, name
        assert shape is not None or name in loop_outputs, name


def test_shapes_does_not_change_the_exported_model_semantics():
    model = ZOO["reshape"]()
    model.analysis(analyses.shapes)
    onnx.checker.check_model(model.to_onnx(), full_check=True)


def test_analysis_is_cached_until_invalidated():
    model = ZOO["gemm"]()
    calls = []

    def count_nodes(m: Model) -> list[int]:
        calls.append(1)
        return [len(m)]

    first = model.analysis(count_nodes)
    assert model.analysis(count_nodes) is first
    assert len(calls) == 1
    model.invalidate()
    second = model.analysis(count_nodes)
    assert second is not first and second == first
    assert len(calls) == 2


def test_invalidate_keeps_preserved_analyses():
    model = ZOO["gemm"]()
    shapes = model.analysis(analyses.shapes)
    view = model.analysis(analyses.nx_view)
    model.invalidate(keep=frozenset({analyses.shapes}))
    assert model.analysis(analyses.shapes) is shapes
    assert model.analysis(analyses.nx_view) is not view


def test_nx_view_edges_follow_data_and_subgraph_captures():
    model = ZOO["control_flow"]()
    view = model.analysis(analyses.nx_view)
    ops = [n.op for n in model.graph.nodes]
    assert ops == ["Sigmoid", "ReduceSum", "Greater", "If", "Constant", "Constant", "Loop", "Add"]
    assert all(view.nodes[i]["node"] is n for i, n in enumerate(model.graph.nodes))
    edges = {(u, v): d["tensor"].name for u, v, d in view.edges(data=True)}
    assert edges == {
        (0, 3): "h",       # captured by the If's then-branch: no input of the If lists it
        (1, 2): "s", (2, 3): "cond",
        (3, 6): "b", (3, 7): "b",
        (4, 6): "trip", (5, 6): "keep", (6, 7): "l",
    }
    assert nx.is_directed_acyclic_graph(view)
    assert 0 in nx.ancestors(view, 7)


def test_nx_view_components():
    model = ZOO["concat"]()
    view = model.analysis(analyses.nx_view)
    # Both branches meet in the Concat: one weakly connected component.
    assert nx.number_weakly_connected_components(view) == 1
    assert sorted(view.in_degree(i) for i in view.nodes) == [0, 0, 1, 1, 2]
