"""`onnxpress.ir.edit`: use-def helpers, safe removal, ordered insertion, toposort, dead code."""

from __future__ import annotations

import random
import time

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from zoo import ZOO, feed_list

from onnxpress.errors import VerificationError
from onnxpress.ir import edit
from onnxpress.ir.edit import CycleError
from onnxpress.ir.model import Model
from onnxpress.ir.scopes import iter_graphs
from onnxpress.ir.verify import verify_structure
from onnxpress.testing import assert_same_outputs, make_model, run

DIAMOND = """<ir_version: 8, opset_import: ["": 17]>
diamond (float[2,3] x) => (float[2,3] y) {
    a = Relu (x)
    b = Neg (a)
    c = Mul (a, a)
    y = Add (b, c)
}"""


def _node(model: Model, output: str) -> gs.Node:
    return next(n for n in model.graph.nodes if n.outputs[0].name == output)


def _tensor(model: Model, name: str) -> gs.Tensor:
    for graph in iter_graphs(model.graph):
        for node in graph.nodes:
            for t in [*node.inputs, *node.outputs]:
                if t.name == name:
                    return t
    raise KeyError(name)


def _branch(model: Model, op: str, attr: str) -> gs.Graph:
    return next(n for n in model.graph.nodes if n.op == op).attrs[attr]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------
# producer / consumers
def test_producer():
    model = make_model(DIAMOND)
    assert edit.producer(_tensor(model, "a")) is _node(model, "a")
    assert edit.producer(model.graph.inputs[0]) is None
    weights = ZOO["gemm"]()
    assert edit.producer(_tensor(weights, "w")) is None


def test_consumers_in_order_without_repeats():
    model = make_model(DIAMOND)
    readers = edit.consumers(_tensor(model, "a"))
    # Mul reads `a` twice but is listed once.
    assert _same(readers, [_node(model, "b"), _node(model, "c")])
    assert edit.consumers(model.graph.outputs[0]) == []


def test_consumers_include_subgraph_nodes():
    model = ZOO["control_flow"]()
    then_mul = _branch(model, "If", "then_branch").nodes[0]
    assert _same(edit.consumers(_tensor(model, "h")), [then_mul])
    loop_add = _branch(model, "Loop", "body").nodes[1]
    assert any(n is loop_add for n in edit.consumers(_tensor(model, "step")))


def test_captures_and_dependencies():
    model = ZOO["control_flow"]()
    if_node = next(n for n in model.graph.nodes if n.op == "If")
    assert [t.name for t in edit.captures(if_node)] == ["h", "w", "x"]
    assert [t.name for t in edit.dependencies(if_node)] == ["cond", "h", "w", "x"]
    loop = next(n for n in model.graph.nodes if n.op == "Loop")
    assert [t.name for t in edit.captures(loop)] == ["step"]


# --------------------------------------------------------------------------------------------
# replace_uses
def test_replace_uses_redirects_every_reader():
    model = make_model(DIAMOND)
    a, x = _tensor(model, "a"), model.graph.inputs[0]
    edit.replace_uses(model.graph, a, x)
    assert edit.consumers(a) == []
    assert list(_node(model, "c").inputs) == [x, x]
    assert _same(edit.consumers(x), [_node(model, "a"), _node(model, "b"), _node(model, "c")])
    feeds = {"x": np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)}
    np.testing.assert_allclose(run(model, feeds)[0], -feeds["x"] + feeds["x"] ** 2, rtol=1e-6)


def test_replace_uses_inside_subgraphs():
    model = ZOO["control_flow"]()
    before = [run(model, f)[0] for f in feed_list(model)]
    h, x = _tensor(model, "h"), model.graph.inputs[0]
    # A tensor computing the same values as h, under another name.
    twin = model.variable("h_twin", dtype=np.float32)
    sigmoid = model.node("Sigmoid", [x], [twin])
    edit.insert_after(model.graph, edit.producer(h), [sigmoid])
    edit.replace_uses(model.graph, h, twin)
    then_mul = _branch(model, "If", "then_branch").nodes[0]
    assert then_mul.inputs[0] is twin
    assert edit.consumers(h) == []
    assert verify_structure(model) == []
    for feeds, want in zip(feed_list(model), before, strict=True):
        np.testing.assert_array_equal(run(model, feeds)[0], want)


def test_replace_uses_of_itself_is_a_no_op():
    model = make_model(DIAMOND)
    a = _tensor(model, "a")
    edit.replace_uses(model.graph, a, a)
    assert len(edit.consumers(a)) == 2


def test_replace_graph_output_needs_the_flag():
    model = make_model(DIAMOND)
    y, b = model.graph.outputs[0], _tensor(model, "b")
    with pytest.raises(VerificationError, match="'y' is a graph output.*graph_outputs=True"):
        edit.replace_uses(model.graph, y, b)
    assert model.graph.outputs[0] is y and y.name == "y"


def test_refused_replace_leaves_the_graph_unchanged():
    model = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[2] x) => (float[2] a, float[2] b) {
        a = Relu (x)
        b = Neg (a)
    }""")
    a, x = _tensor(model, "a"), model.graph.inputs[0]
    with pytest.raises(VerificationError):
        edit.replace_uses(model.graph, a, x)
    assert _node(model, "b").inputs[0] is a


def test_replace_graph_output_keeps_its_name():
    model = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[2,3] x) => (float[2,3] y, float[2,3] z) {
        a = Relu (x)
        y = Identity (a)
        z = Neg (y)
    }""")
    feeds = feed_list(model)
    reference = model.copy()
    identity = _node(model, "y")
    old, new = identity.outputs[0], identity.inputs[0]
    edit.replace_uses(model.graph, old, new, graph_outputs=True)
    edit.remove(model.graph, [identity])
    assert [t.name for t in model.graph.outputs] == ["y", "z"]
    assert model.graph.outputs[0] is new and new.name == "y"
    assert old.name != "y"
    assert _node(model, "z").inputs[0] is new
    assert verify_structure(model) == []
    assert_same_outputs(reference, model, feeds, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# remove
def test_remove_refuses_a_node_whose_output_is_still_read():
    model = make_model(DIAMOND)
    relu = _node(model, "a")
    with pytest.raises(VerificationError, match=r"output 'a' is still read by"):
        edit.remove(model.graph, [relu])
    assert len(model) == 4 and relu.inputs[0] is model.graph.inputs[0]
    # Removing one reader is not enough either.
    with pytest.raises(VerificationError):
        edit.remove(model.graph, [relu, _node(model, "b")])
    assert len(model) == 4 and verify_structure(model) == []


def test_remove_refuses_a_graph_output_producer():
    model = make_model(DIAMOND)
    with pytest.raises(VerificationError, match="'y' is a graph output"):
        edit.remove(model.graph, [_node(model, "y")])
    assert len(model) == 4


def test_remove_a_batch_disconnects_it():
    model = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[2,3] x) => (float[2,3] y) {
        y = Relu (x)
        a = Neg (x)
        b = Abs (a)
        c = Exp (b)
    }""")
    x = model.graph.inputs[0]
    doomed = [_node(model, "c"), _node(model, "a"), _node(model, "b")]  # any order
    assert edit.remove(model.graph, doomed) == 3
    assert [n.op for n in model.graph.nodes] == ["Relu"]
    assert _same(edit.consumers(x), [model.graph.nodes[0]])
    for node in doomed:
        assert list(node.inputs) == [] and list(node.outputs) == []
    assert edit.remove(model.graph, []) == 0
    assert verify_structure(model) == []


def test_remove_unsafe_skips_the_checks():
    model = make_model(DIAMOND)
    assert edit.remove(model.graph, [_node(model, "a")], safe=False) == 1
    assert any("'a'" in p for p in verify_structure(model))


# --------------------------------------------------------------------------------------------
# insert_before / insert_after
def test_insert_before_and_after_keep_the_order():
    model = make_model(DIAMOND)
    relu, neg, mul, add = model.graph.nodes
    x = model.graph.inputs[0]
    t1, t2, t3 = (model.variable("t", dtype=np.float32) for _ in range(3))
    first = model.node("Abs", [x], [t1])
    second = model.node("Exp", [t1], [t2])
    edit.insert_before(model.graph, relu, [first, second])
    late = model.node("Sqrt", [_tensor(model, "b")], [t3])
    edit.insert_after(model.graph, neg, [late])
    assert _same(model.graph.nodes, [first, second, relu, neg, late, mul, add])
    edit.insert_after(model.graph, add, [])
    assert len(model) == 7
    assert verify_structure(model) == []


def test_insert_next_to_a_missing_anchor():
    model = make_model(DIAMOND)
    stranger = gs.Node("Relu", "stranger")
    with pytest.raises(VerificationError, match="stranger"):
        edit.insert_after(model.graph, stranger, [])


# --------------------------------------------------------------------------------------------
# toposort
def _chain(length: int) -> gs.Graph:
    x = gs.Variable("x", dtype=np.float32, shape=[1])
    nodes, current = [], x
    for i in range(length):
        out = gs.Variable(f"t{i}", dtype=np.float32, shape=[1])
        nodes.append(gs.Node("Neg", f"n{i}", inputs=[current], outputs=[out]))
        current = out
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[current], opset=17)


def test_toposort_reversed_5000_chain_is_fast():
    graph = _chain(5000)
    chain = list(graph.nodes)
    graph.nodes.reverse()
    start = time.perf_counter()
    edit.toposort(graph)
    elapsed = time.perf_counter() - start
    assert _same(graph.nodes, chain)
    assert elapsed < 1.0, f"toposort of 5,000 nodes took {elapsed:.2f} s"


def test_toposort_keeps_a_sorted_order(any_model):
    before = list(any_model.graph.nodes)
    edit.toposort(any_model.graph)
    assert _same(any_model.graph.nodes, before)


def test_toposort_restores_a_shuffled_model(any_model):
    feeds = feed_list(any_model)
    reference = any_model.copy()
    random.Random(0).shuffle(any_model.graph.nodes)
    edit.toposort(any_model.graph)
    assert verify_structure(any_model) == []
    assert_same_outputs(reference, any_model, feeds, rtol=0, atol=0)


def test_toposort_is_stable_for_independent_nodes():
    model = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[2] x) => (float[2] y) {
        a = Neg (x)
        b = Abs (x)
        c = Relu (x)
        d = Exp (c)
        y = Sum (a, b, d)
    }""")
    neg, absolute, relu, exp, total = model.graph.nodes
    model.graph.nodes[:] = [exp, neg, absolute, relu, total]
    edit.toposort(model.graph)
    # Only Exp moves (behind its producer); the rest keep their relative order.
    assert _same(model.graph.nodes, [neg, absolute, relu, exp, total])


def test_toposort_counts_subgraph_captures_as_edges():
    model = ZOO["control_flow"]()
    sigmoid = _node(model, "h")
    if_node = next(n for n in model.graph.nodes if n.op == "If")
    model.graph.nodes.remove(sigmoid)
    model.graph.nodes.append(sigmoid)  # now after the If that captures its output
    assert verify_structure(model) != []
    edit.toposort(model.graph)
    order = [id(n) for n in model.graph.nodes]
    assert order.index(id(sigmoid)) < order.index(id(if_node))
    assert verify_structure(model) == []


def test_toposort_raises_on_a_cycle():
    x = gs.Variable("x", dtype=np.float32, shape=[1])
    a, b, y = (gs.Variable(n, dtype=np.float32, shape=[1]) for n in "aby")
    nodes = [gs.Node("Add", "add", inputs=[x, b], outputs=[a]),
             gs.Node("Relu", "relu", inputs=[a], outputs=[b]),
             gs.Node("Neg", "out", inputs=[b], outputs=[y])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y], name="loopy")
    with pytest.raises(CycleError, match=r"'loopy'.*'add'.*'relu'"):
        edit.toposort(graph)
    assert _same(graph.nodes, nodes)
    assert issubclass(CycleError, VerificationError)


# --------------------------------------------------------------------------------------------
# dead_code
def test_dead_code_removes_what_no_output_needs():
    model = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[2,3] x) => (float[2,3] y) {
        y = Relu (x)
        a = Add (x, unused_w)
        b = Neg (a)
    }""", unused_w=np.ones((2, 3), np.float32))
    reference = model.copy()
    assert edit.dead_code(model.graph) == 2
    assert [n.op for n in model.graph.nodes] == ["Relu"]
    assert [i.name for i in model.to_onnx().graph.initializer] == []
    assert edit.dead_code(model.graph) == 0
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_dead_code_keeps_a_node_with_one_used_output():
    model = make_model("""<ir_version: 8, opset_import: ["": 18]>
    g (float[4] x) => (float[2] y) {
        a, b = Split <num_outputs = 2> (x)
        y = Neg (a)
    }""")
    assert edit.dead_code(model.graph) == 0
    assert len(model) == 2


def test_dead_code_honours_subgraph_captures():
    model = ZOO["control_flow"]()
    reference = model.copy()
    # h is read only inside the If's then-branch; step only inside the Loop body.
    assert edit.dead_code(model.graph) == 0
    assert len(model) == 8
    assert any(n.op == "Sigmoid" for n in model.graph.nodes)
    assert_same_outputs(reference, model, feed_list(model, 4), rtol=0, atol=0)


def test_dead_code_inside_subgraphs():
    model = ZOO["control_flow"]()
    then_branch = _branch(model, "If", "then_branch")
    junk = model.variable("junk", dtype=np.float32)
    then_branch.nodes.append(model.node("Exp", [_tensor(model, "h")], [junk]))
    assert edit.dead_code(model.graph) == 1
    assert [n.op for n in then_branch.nodes] == ["Mul"]
    assert len(model) == 8


def test_dead_code_on_every_model_keeps_outputs(any_model):
    reference = any_model.copy()
    removed = edit.dead_code(any_model.graph)
    assert len(any_model) == len(reference) - removed
    assert edit.dead_code(any_model.graph) == 0
    assert verify_structure(any_model) == []
    assert_same_outputs(reference, any_model, feed_list(any_model), rtol=0, atol=0)


NESTED = """<ir_version: 8, opset_import: ["": 17]>
nested (float[2] x, bool flag) => (float[2] y) {
    h = Sigmoid (x)
    trip = Constant <value = int64 {2}> ()
    y = Loop (trip, flag, x) <
        body = body_g (int64 i, bool c, float[2] v) => (bool c_out, float[2] v_out) {
            c_out = Identity (c)
            v_out = If (c) <
                then_branch = then_g () => (float[2] t) { t = Add (v, h) },
                else_branch = else_g () => (float[2] e) { e = Identity (v) }
            >
        }
    >
}"""


def test_dead_code_and_toposort_see_captures_two_levels_deep():
    model = make_model(NESTED)
    sigmoid, trip, loop = model.graph.nodes
    assert [t.name for t in edit.captures(loop)] == ["h"]
    assert edit.dead_code(model.graph) == 0
    model.graph.nodes[:] = [loop, trip, sigmoid]
    edit.toposort(model.graph)
    assert model.graph.nodes[-1] is loop
    feeds = {"x": np.ones(2, np.float32), "flag": np.array(True)}
    # Two iterations of v + sigmoid(x), starting from x = 1.
    np.testing.assert_allclose(run(model, feeds)[0], 1 + 2 / (1 + np.exp(-1)), rtol=1e-6)
