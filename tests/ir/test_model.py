"""`onnxpress.ir.model`: the facts gs drops, deep copies, the name authority."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from zoo import ZOO, feed_list

import onnxpress as ox
from onnxpress.ir.model import Model
from onnxpress.ir.scopes import iter_graphs, subgraphs
from onnxpress.testing import assert_same_outputs, make_model, run

OLD_IR = """<ir_version: 7, opset_import: ["": 13, "com.microsoft": 1]>
old (float[1,4] x) => (float[1,4] y) {
    y = Relu (x)
}"""


def _all_constants(model: Model, *, attributes: bool = False) -> list[gs.Constant]:
    """Every initializer in the model, subgraphs included (by identity, no repeats), and with
    `attributes` also the tensors held in node attributes (Constant nodes' values)."""
    found: dict[int, gs.Constant] = {}
    for graph in iter_graphs(model.graph):
        for node in graph.nodes:
            held = [v for v in node.attrs.values() if isinstance(v, gs.Constant)]
            for t in itertools.chain(node.inputs, held if attributes else ()):
                if isinstance(t, gs.Constant):
                    found.setdefault(id(t), t)
    return list(found.values())


def _exported_initializers(graph: onnx.GraphProto) -> list[str]:
    names = [i.name for i in graph.initializer]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names += _exported_initializers(attr.g)
    return names


def _all_names(model: Model) -> set[str]:
    names = set()
    for graph in iter_graphs(model.graph):
        names.update(t.name for t in itertools.chain(graph.inputs, graph.outputs))
        for node in graph.nodes:
            names.add(node.name)
            names.update(t.name for t in itertools.chain(node.inputs, node.outputs))
    return names - {""}


# --------------------------------------------------------------------------------------------
# The zoo itself
def test_zoo_model_passes_the_checker_and_runs(zoo_model):
    onnx.checker.check_model(zoo_model.to_onnx(), full_check=True)
    outputs = [run(zoo_model, feeds) for feeds in feed_list(zoo_model)]
    for first, second in zip(*outputs, strict=True):
        assert np.isfinite(first).all() and np.isfinite(second).all()
        assert not np.array_equal(first, second)  # the outputs depend on the inputs


def test_zoo_builders_return_fresh_models():
    first, second = ZOO["gemm"](), ZOO["gemm"]()
    assert first is not second and first.graph is not second.graph
    np.testing.assert_array_equal(next(first.constants()).values,
                                  next(second.constants()).values)  # seeded weights


# --------------------------------------------------------------------------------------------
# Model facts
def test_to_onnx_keeps_the_source_ir_version_and_opsets():
    model = make_model(OLD_IR)
    proto = model.to_onnx()
    # gs would stamp its own, newer IR version; onnxruntime may reject that.
    assert proto.ir_version == 7
    assert {o.domain: o.version for o in proto.opset_import} == {"": 13, "com.microsoft": 1}
    assert model.opset == 13


def test_to_onnx_keeps_metadata_doc_and_producer():
    proto = onnx.parser.parse_model(OLD_IR)
    proto.doc_string, proto.graph.doc_string = "model doc", "graph doc"
    proto.producer_name, proto.producer_version = "exporter", "1.2.3"
    proto.domain, proto.model_version = "org.example", 5
    onnx.helper.set_model_props(proto, {"b": "2", "a": "1"})
    model = ox.load(proto)
    assert model.metadata == {"b": "2", "a": "1"}
    assert model.doc_string == "model doc"
    out = model.to_onnx()
    assert [(p.key, p.value) for p in out.metadata_props] == [("b", "2"), ("a", "1")]
    assert (out.doc_string, out.graph.doc_string) == ("model doc", "graph doc")
    assert (out.producer_name, out.producer_version, out.domain, out.model_version) == (
        "exporter", "1.2.3", "org.example", 5)


def test_to_onnx_twice_is_identical(any_model):
    assert any_model.to_onnx().SerializeToString() == any_model.to_onnx().SerializeToString()


def test_node_doc_strings_and_metadata_survive():
    proto = onnx.parser.parse_model(OLD_IR)
    proto.graph.node[0].doc_string = "why this Relu exists"
    proto.graph.node[0].metadata_props.add(key="onnxpress.rule", value="ConvBatchNorm")
    node = ox.load(proto).to_onnx().graph.node[0]
    assert node.doc_string == "why this Relu exists"
    assert [(p.key, p.value) for p in node.metadata_props] == [("onnxpress.rule",
                                                                  "ConvBatchNorm")]


def test_len_constants_and_nbytes():
    # `w` is read twice: one initializer, counted once.
    model = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[2,4] x) => (float[2,4] y) {
        a = Add (x, w)
        y = Mul (a, w)
    }""", w=np.ones((2, 4), np.float32))
    assert len(model) == 2
    assert [c.name for c in model.constants()] == ["w"]
    assert model.nbytes == 2 * 4 * 4


def test_iter_graphs_and_subgraphs():
    model = ZOO["control_flow"]()
    names = [g.name for g in iter_graphs(model.graph)]
    assert names[0] == "control_flow"
    assert sorted(names[1:]) == ["body_g", "else_g", "then_g"]
    if_node = next(n for n in model.graph.nodes if n.op == "If")
    assert [g.name for g in subgraphs(if_node)] == ["then_g", "else_g"]
    assert subgraphs(model.graph.nodes[0]) == []


# --------------------------------------------------------------------------------------------
# copy
def test_copy_shares_no_arrays(any_model):
    theirs = _all_constants(any_model, attributes=True)
    original = {id(c): np.array(c.values, copy=True) for c in theirs}
    ours = _all_constants(any_model.copy(), attributes=True)
    assert bool(ours) == bool(theirs)
    for a in ours:
        for b in theirs:
            assert a is not b
            assert not np.shares_memory(a.values, b.values)
    for c in ours:
        c.values[...] = 0 if c.values.dtype != np.bool_ else False
    for c in theirs:
        np.testing.assert_array_equal(c.values, original[id(c)])


def test_copy_is_structurally_independent():
    model = ZOO["control_flow"]()
    model.pipeline.append({"name": "x", "options": {"a": 1}})
    model.metadata["k"] = "v"
    before = model.to_onnx().SerializeToString()
    clone = model.copy()
    assert clone.source == model.source
    assert clone.pipeline == model.pipeline
    clone_nodes = [n for g in iter_graphs(clone.graph) for n in g.nodes]
    for graph in iter_graphs(model.graph):
        for node in graph.nodes:
            assert all(node is not other for other in clone_nodes)
    clone.pipeline.append({"name": "y", "options": {}})
    clone.metadata["k"] = "changed"
    clone.graph.nodes.clear()
    assert model.pipeline == [{"name": "x", "options": {"a": 1}}]
    assert model.metadata == {"k": "v"}
    assert model.to_onnx().SerializeToString() == before


def test_copy_does_not_share_pipeline_options():
    model = ZOO["gemm"]()
    model.pipeline.append({"name": "x", "options": {"a": 1}})
    model.copy().pipeline[0]["options"]["a"] = 2
    assert model.pipeline[0]["options"] == {"a": 1}


def test_export_writes_each_initializer_once(any_model):
    expected = sorted(c.name for c in _all_constants(any_model))
    assert sorted(_exported_initializers(any_model.to_onnx().graph)) == expected


def test_copy_has_identical_outputs(any_model):
    assert_same_outputs(any_model, any_model.copy(), feed_list(any_model), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Name authority
def test_fresh_name_avoids_every_name_in_the_model_including_subgraphs():
    model = ZOO["control_flow"]()
    existing = _all_names(model)
    # Names that exist only inside subgraphs: then/else outputs, the loop body's tensors.
    assert {"t", "e", "i", "c", "v", "v_out", "c_out"} <= existing
    created = [model.fresh_name(hint) for hint in sorted(existing) for _ in range(3)]
    assert not set(created) & existing
    assert len(set(created)) == len(created)
    assert all(name.startswith(hint) for name, hint in zip(
        created, [h for h in sorted(existing) for _ in range(3)], strict=True))


def test_fresh_name_keeps_an_unused_hint_and_never_returns_it_twice():
    model = ZOO["gemm"]()
    assert model.fresh_name("scale") == "scale"
    assert model.fresh_name("scale") != "scale"
    assert model.fresh_name("") != ""


def test_fresh_name_avoids_names_that_look_like_its_own_suffixes():
    model = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[2] x) => (float[2] x_0) {
        x_1 = Relu (x)
        x_0 = Neg (x_1)
    }""")
    names = {model.fresh_name("x") for _ in range(5)}
    assert not names & {"x", "x_0", "x_1"}
    assert len(names) == 5


def test_fresh_names_survive_export():
    """Helpers name everything they create freshly; the result passes the checker and runs."""
    model = ZOO["matmul"]()
    y = model.graph.outputs[0]
    producer = y.inputs[0]
    hidden = model.variable("y", dtype=np.float32)
    producer.outputs[0] = hidden
    scale = model.constant("y", np.full((8,), 2.0, np.float32))
    model.graph.nodes.append(model.node("Mul", [hidden, scale], [y], hint="y"))
    names = [t.name for t in (hidden, scale)] + [model.graph.nodes[-1].name]
    assert len(set(names + ["y"])) == 4
    proto = model.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    feeds = feed_list(model, 1)[0]
    np.testing.assert_allclose(run(model, feeds)[0], 2 * run(ZOO["matmul"](), feeds)[0])


def test_constant_helper_copies_the_array():
    model = ZOO["gemm"]()
    array = np.ones(3, np.float32)
    constant = model.constant("c", array)
    array[0] = 5
    assert constant.values[0] == 1
