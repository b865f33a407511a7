"""`onnxpress.ir.verify`: each kind of structural problem is found, and only real ones."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from zoo import ZOO

from onnxpress.errors import VerificationError
from onnxpress.ir.verify import check_structure, verify_structure
from onnxpress.testing import make_model

CHAIN = """<ir_version: 8, opset_import: ["": 17]>
chain (float[2,3] x) => (float[2,3] y) {
    a = Relu (x)
    b = Neg (a)
    y = Add (b, w)
}"""


def _chain():
    return make_model(CHAIN, w=np.ones((2, 3), np.float32))


def test_well_formed_models_have_no_problems(any_model):
    assert verify_structure(any_model) == []
    check_structure(any_model, after="nothing")


def test_unsorted_nodes():
    model = _chain()
    model.graph.nodes.reverse()
    problems = verify_structure(model)
    assert any("'a'" in p and "before it is produced" in p for p in problems)
    assert any("'b'" in p and "before it is produced" in p for p in problems)


def test_dangling_input():
    model = _chain()
    ghost = gs.Variable("ghost", dtype=np.float32, shape=[2, 3])
    model.graph.nodes[1].inputs[0] = ghost
    problems = verify_structure(model)
    assert len(problems) == 1
    assert "'ghost'" in problems[0] and "produced nowhere" in problems[0]
    assert "Neg" in problems[0]


def test_duplicate_tensor_names():
    model = _chain()
    model.graph.nodes[1].outputs[0].name = "a"  # two different tensors named 'a'
    problems = verify_structure(model)
    assert problems == ["two different tensors are named 'a'"]


def test_duplicate_name_across_a_subgraph():
    model = ZOO["control_flow"]()
    then_branch = next(n for n in model.graph.nodes if n.op == "If").attrs["then_branch"]
    then_branch.nodes[0].outputs[0].name = "h"  # shadows the outer tensor it reads
    assert any("named 'h'" in p for p in verify_structure(model))


def test_two_producers():
    model = _chain()
    a = model.graph.nodes[0].outputs[0]
    extra = gs.Node("Abs", "second_producer", inputs=[model.graph.inputs[0]], outputs=[a])
    model.graph.nodes.insert(1, extra)
    problems = verify_structure(model)
    assert any("'a' is produced by both" in p and "second_producer" in p for p in problems)


def test_unproduced_graph_output():
    model = _chain()
    model.graph.outputs.append(gs.Variable("phantom", dtype=np.float32, shape=[2, 3]))
    assert verify_structure(model) == ["graph output 'phantom' is not produced"]


def test_graph_input_or_constant_as_output_is_fine():
    model = _chain()
    model.graph.outputs.append(model.graph.inputs[0])
    model.graph.outputs.append(gs.Constant("k", np.zeros(2, np.float32)))
    assert verify_structure(model) == []


def test_missing_opset_domain():
    model = _chain()
    model.graph.nodes[1].domain = "com.microsoft"
    assert verify_structure(model) == [
        "domain 'com.microsoft' is used but not in the opset imports"]
    model.opsets["com.microsoft"] = 1
    assert verify_structure(model) == []


def test_ai_onnx_spelling_of_the_default_domain_is_accepted():
    model = _chain()
    model.graph.nodes[1].domain = "ai.onnx"
    assert verify_structure(model) == []


def test_missing_domain_inside_a_subgraph():
    model = ZOO["control_flow"]()
    body = next(n for n in model.graph.nodes if n.op == "Loop").attrs["body"]
    body.nodes[1].domain = "custom.ops"
    assert verify_structure(model) == ["domain 'custom.ops' is used but not in the opset imports"]


def test_subgraph_reading_an_outer_tensor_produced_later():
    model = ZOO["control_flow"]()
    sigmoid = model.graph.nodes[0]
    model.graph.nodes.remove(sigmoid)
    model.graph.nodes.append(sigmoid)
    problems = verify_structure(model)
    assert any("'h'" in p for p in problems)


def test_check_structure_names_the_pass_and_limits_the_list():
    model = _chain()
    for i in range(8):
        model.graph.outputs.append(gs.Variable(f"phantom{i}", dtype=np.float32))
    with pytest.raises(VerificationError) as info:
        check_structure(model, after="fuse-something")
    message = str(info.value)
    assert "after pass 'fuse-something'" in message
    assert "phantom0" in message and "phantom4" in message and "phantom5" not in message
    assert "3 more" in message
