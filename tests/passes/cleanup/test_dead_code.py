"""`eliminate-dead-code`: remove what no graph output depends on, subgraph captures counted."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from zoo import ZOO, feed_list

from onnxpress.ir.model import Model
from onnxpress.ir.scopes import iter_graphs
from onnxpress.passes import Context, EliminateDeadCode
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs, make_model

H = '<ir_version: 8, opset_import: ["": 17]>'


def _sweep(model: Model):
    reference = model.copy()
    result = EliminateDeadCode().run(model, Context(target=get_target("cpu")))
    return result, reference


def _no_op_second_time(model: Model) -> None:
    again, _ = _sweep(model)
    assert not again.changed
    assert again.stats == {"nodes": 0, "initializers": 0, "initializer_inputs": 0}


def test_removes_a_dead_chain_and_its_weights():
    model = make_model(f"""{H}
    g (float[2,3] x) => (float[2,3] y) {{
        y = Add (x, used_w)
        a = Mul (x, dead_w)
        b = Neg (a)
        c = Abs (b)
    }}""", used_w=np.ones((2, 3), np.float32), dead_w=np.full((2, 3), 7.0, np.float32))
    result, reference = _sweep(model)
    assert result.changed
    assert result.stats == {"nodes": 3, "initializers": 1, "initializer_inputs": 0}
    assert [n.op for n in model.graph.nodes] == ["Add"]
    assert [i.name for i in model.to_onnx().graph.initializer] == ["used_w"]
    assert model.nbytes == 2 * 3 * 4
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)
    _no_op_second_time(model)


def test_a_tensor_with_a_live_reader_stays():
    model = make_model(f"""{H}
    g (float[2,3] x) => (float[2,3] y) {{
        a = Relu (x)
        y = Neg (a)
        dead = Exp (a)
    }}""")
    result, reference = _sweep(model)
    assert result.stats["nodes"] == 1
    assert [n.op for n in model.graph.nodes] == ["Relu", "Neg"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_graph_outputs_and_their_producers_stay():
    model = make_model(f"""{H}
    g (float[2,3] x) => (float[2,3] y, float[2,3] a) {{
        a = Relu (x)
        y = Neg (x)
    }}""")
    result, _ = _sweep(model)
    assert not result.changed
    assert [n.op for n in model.graph.nodes] == ["Relu", "Neg"]


def test_a_tensor_read_only_inside_a_subgraph_survives():
    model = ZOO["control_flow"]()
    result, reference = _sweep(model)
    assert not result.changed
    assert model.graph.nodes[0].op == "Sigmoid"
    assert len(model) == 8
    assert_same_outputs(reference, model, feed_list(model, 4), rtol=0, atol=0)


def test_dead_nodes_inside_subgraphs_go():
    model = ZOO["control_flow"]()
    body = next(n for n in model.graph.nodes if n.op == "Loop").attrs["body"]
    v = body.inputs[2]
    junk = [model.variable("junk", dtype=np.float32) for _ in range(2)]
    body.nodes.append(model.node("Exp", [v], [junk[0]]))
    body.nodes.append(model.node("Neg", [junk[0]], [junk[1]]))
    result, reference = _sweep(model)
    assert result.stats["nodes"] == 2
    assert [n.op for n in body.nodes] == ["Identity", "Add"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_unused_initializer_input_is_dropped():
    model = make_model(f"""{H}
    g (float[2,3] x) => (float[2,3] y) {{
        y = Relu (x)
    }}""")
    model.graph.inputs.append(gs.Constant("stale_default", np.zeros(3, np.float32)))
    result, _ = _sweep(model)
    assert result.stats == {"nodes": 0, "initializers": 0, "initializer_inputs": 1}
    assert [t.name for t in model.graph.inputs] == ["x"]


def test_every_model_keeps_its_outputs(any_model):
    nodes = sum(len(g.nodes) for g in iter_graphs(any_model.graph))
    result, reference = _sweep(any_model)
    assert result.stats["nodes"] == nodes - sum(len(g.nodes) for g in iter_graphs(
        any_model.graph))
    assert result.changed == bool(result.stats["nodes"] or result.stats["initializer_inputs"])
    assert_same_outputs(reference, any_model, feed_list(any_model), rtol=0, atol=0)
    _no_op_second_time(any_model)
