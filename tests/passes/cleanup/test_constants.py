"""`fold-constants`: Constant nodes to initializers, static Shape/Size, all-constant subgraphs."""

from __future__ import annotations

import resource

import numpy as np
import onnx
import pytest
from zoo import MODELS_DIR, ZOO, count, feed_list

import onnxpress as ox
from onnxpress.ir.model import Model
from onnxpress.ir.scopes import iter_graphs
from onnxpress.passes import Context, FoldConstants
from onnxpress.passes.cleanup import constants
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs, make_model, run

H = '<ir_version: 8, opset_import: ["": 17]>'


def _fold(model: Model, **options):
    """Run fold-constants on `model` in place; return (result, the untouched original)."""
    reference = model.copy()
    result = FoldConstants(**options).run(model, Context(target=get_target("cpu")))
    return result, reference


def _second_run_is_a_no_op(model: Model, **options) -> None:
    again, _ = _fold(model, **options)
    assert not again.changed
    assert again.stats["constant_nodes"] == again.stats["shapes"] == 0
    assert again.stats["folded_tensors"] == again.stats["nodes_removed"] == 0


def _with_constant_node_weights(model: Model) -> Model:
    """`model` with every initializer turned into a Constant node at the top of the graph, the
    way tf2onnx and paddle2onnx write weights."""
    proto = model.to_onnx()
    nodes = [onnx.helper.make_node("Constant", [], [init.name], value=init)
             for init in proto.graph.initializer]
    nodes += list(proto.graph.node)
    del proto.graph.initializer[:]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return ox.load(proto)


# --------------------------------------------------------------------------------------------
# Constant nodes → initializers
def test_constant_node_weights_become_initializers():
    model = _with_constant_node_weights(ZOO["conv_bn_relu"]())
    assert count(model, "Constant") == 6 and len(model) == 9 and model.nbytes == 0
    result, reference = _fold(model)
    assert result.changed
    assert result.stats == {"constant_nodes": 6, "shapes": 0, "folded_tensors": 0,
                            "kept_large": 0, "nodes_removed": 0}
    assert [n.op for n in model.graph.nodes] == ["Conv", "BatchNormalization", "Relu"]
    # Initializers keep the Constant outputs' names (calibration tables key on names).
    assert sorted(c.name for c in model.constants()) == sorted(
        ["w", "b", "bn_scale", "bn_bias", "bn_mean", "bn_var"])
    assert model.nbytes == ZOO["conv_bn_relu"]().nbytes
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)
    _second_run_is_a_no_op(model)


@pytest.mark.skipif(not (MODELS_DIR / "constant_node_weights.onnx").exists(),
                    reason="tests/models/constant_node_weights.onnx not built yet")
def test_real_constant_node_weight_model():
    model = ox.load(MODELS_DIR / "constant_node_weights.onnx")
    assert len(model) == 17 and count(model, "Constant") == 8
    result, reference = _fold(model)
    assert result.stats["constant_nodes"] == 8
    assert len(model) == 9 and count(model, "Constant") == 0
    assert model.nbytes > 0
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)
    _second_run_is_a_no_op(model)


def test_scalar_and_list_attribute_forms():
    model = make_model(f"""{H}
    g (float[2] x) => (float[2] y, float z) {{
        a = Constant <value_float = 2.0> ()
        b = Constant <value_floats = [1.0, -3.0]> ()
        c = Constant <value_int = 1> ()
        d = Constant <value_ints = [2]> ()
        m = Mul (x, a)
        p = Add (m, b)
        y = Reshape (p, d)
        z = Gather (p, c)
    }}""")
    result, reference = _fold(model)
    assert result.stats["constant_nodes"] == 4
    values = {c.name: c.values for c in model.constants()}
    assert values["a"].dtype == np.float32 and values["a"].shape == ()
    np.testing.assert_array_equal(values["b"], np.array([1.0, -3.0], np.float32))
    assert values["c"].dtype == np.int64 and values["c"].shape == ()
    assert values["d"].dtype == np.int64 and values["d"].tolist() == [2]
    assert [n.op for n in model.graph.nodes] == ["Mul", "Add", "Reshape", "Gather"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_constant_node_that_is_a_graph_output_is_kept():
    model = make_model(f"""{H}
    g (float[2] x) => (float[2] y, float[2] k) {{
        k = Constant <value_floats = [1.0, 2.0]> ()
        y = Add (x, k)
    }}""")
    result, _ = _fold(model)
    assert not result.changed
    assert [n.op for n in model.graph.nodes] == ["Constant", "Add"]
    assert [t.name for t in model.graph.outputs] == ["y", "k"]


def test_string_constant_folding_keeps_a_valid_model():
    model = make_model("""<ir_version: 8, opset_import: ["": 19]>
    g (string[2] x) => (bool[2] y) {
        s = Constant <value_strings = ["a", "b"]> ()
        y = Equal (x, s)
    }""")
    _, reference = _fold(model)
    feeds = {"x": np.array(["a", "c"], dtype=object)}
    np.testing.assert_array_equal(run(model, feeds)[0], run(reference, feeds)[0])


def test_constant_nodes_inside_subgraphs():
    model = make_model(f"""{H}
    g (float[2] x, bool cond) => (float[2] y) {{
        y = If (cond) <
            then_branch = then_g () => (float[2] t) {{
                two = Constant <value_float = 2.0> ()
                t = Mul (x, two)
            }},
            else_branch = else_g () => (float[2] e) {{ e = Neg (x) }}
        >
    }}""")
    result, reference = _fold(model)
    assert result.stats["constant_nodes"] == 1
    ops = [n.op for g in iter_graphs(model.graph) for n in g.nodes]
    assert sorted(ops) == ["If", "Mul", "Neg"]
    x = np.array([1.5, -2.0], np.float32)
    feeds = [{"x": x, "cond": np.array(True)}, {"x": x, "cond": np.array(False)}]
    assert_same_outputs(reference, model, feeds, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Shape / Size of static tensors
def test_shape_arithmetic_of_a_static_tensor_folds():
    model = ZOO["reshape"]()
    assert len(model) == 8
    result, reference = _fold(model)
    # Shape → int64 initializer; Constant i0 → initializer; Gather/Unsqueeze/Concat evaluated.
    assert result.stats == {"constant_nodes": 1, "shapes": 1, "folded_tensors": 1,
                            "kept_large": 0, "nodes_removed": 4}
    assert [n.op for n in model.graph.nodes] == ["Reshape", "MatMul", "Reshape"]
    target = model.graph.nodes[0].inputs[1]
    assert target.name == "target" and target.values.tolist() == [2, -1]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)
    _second_run_is_a_no_op(model)


def test_shape_with_start_end_and_size():
    model = make_model(f"""{H}
    g (float[2,3,4] x) => (float[2,12] y, int64 n) {{
        s = Shape <start = -2> (x)
        k = ReduceProd <keepdims = 1> (s)
        target = Concat <axis = 0> (two, k)
        y = Reshape (x, target)
        size = Size (x)
        n = Identity (size)
    }}""", two=np.array([2], np.int64))
    result, reference = _fold(model)
    assert result.stats["shapes"] == 2
    assert [n.op for n in model.graph.nodes] == ["Reshape", "Identity"]
    assert model.graph.nodes[0].inputs[1].values.tolist() == [2, 12]
    assert model.graph.nodes[1].inputs[0].values.tolist() == 24
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_shape_of_a_dynamic_batch_is_kept():
    model = ZOO["dynamic_batch"]()
    result, _ = _fold(model)
    assert not result.changed
    assert count(model, "Shape") == 1 and len(model) == 8
    for batch in (1, 3):
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 3, 8, 8),
                                                                   dtype=np.float32)}
        assert run(model, feeds)[0].shape == (batch, 4)


def test_static_axes_of_a_dynamic_shape_fold():
    model = make_model(f"""{H}
    g (float[N,3,4] x) => (float[N,12] y) {{
        s = Shape (x)
        n = Gather <axis = 0> (s, i0)
        c = Gather <axis = 0> (s, i12)
        k = ReduceProd <keepdims = 0> (c)
        nu = Unsqueeze (n, axes0)
        ku = Unsqueeze (k, axes0)
        target = Concat <axis = 0> (nu, ku)
        y = Reshape (x, target)
    }}""", i0=np.array(0, np.int64), i12=np.array([1, 2], np.int64),
        axes0=np.array([0], np.int64))
    result, reference = _fold(model)
    # Gather(Shape, [1, 2]) picks static axes: [3, 4], and ReduceProd/Unsqueeze fold after it.
    # Gather(Shape, 0) is the dynamic batch: it stays, and so does the Concat.
    assert result.stats["shapes"] == 1 and result.stats["folded_tensors"] == 1
    assert [n.op for n in model.graph.nodes] == ["Shape", "Gather", "Unsqueeze", "Concat",
                                                 "Reshape"]
    assert model.graph.nodes[3].inputs[1].values.tolist() == [12]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)
    _second_run_is_a_no_op(model)


def test_shape_that_is_a_graph_output_is_kept():
    model = make_model(f"""{H}
    g (float[2,3] x) => (int64[2] s) {{
        s = Shape (x)
    }}""")
    result, _ = _fold(model)
    assert not result.changed and count(model, "Shape") == 1


# --------------------------------------------------------------------------------------------
# What is never folded
def test_dequantize_of_a_quantized_weight_is_kept():
    model = make_model(f"""{H}
    g (float[2,4] x) => (float[2,3] y) {{
        w = DequantizeLinear (w_q, scale, zero)
        y = MatMul (x, w)
    }}""", w_q=np.arange(12, dtype=np.int8).reshape(4, 3), scale=np.array(0.1, np.float32),
        zero=np.array(0, np.int8))
    nbytes = model.nbytes
    result, _ = _fold(model)
    assert not result.changed
    assert [n.op for n in model.graph.nodes] == ["DequantizeLinear", "MatMul"]
    assert model.nbytes == nbytes  # still int8: folding would quadruple the weight


def test_quantize_dequantize_of_a_float_weight_is_kept():
    model = make_model(f"""{H}
    g (float[2,4] x) => (float[2,3] y) {{
        q = QuantizeLinear (w, scale, zero)
        wd = DequantizeLinear (q, scale, zero)
        y = MatMul (x, wd)
    }}""", w=np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3),
        scale=np.array(0.01, np.float32), zero=np.array(0, np.int8))
    result, _ = _fold(model)
    assert not result.changed
    assert [n.op for n in model.graph.nodes] == ["QuantizeLinear", "DequantizeLinear", "MatMul"]


@pytest.mark.parametrize("random_op", [
    "r = RandomNormal <shape = [2, 3]> ()",
    "r = RandomUniform <shape = [2, 3]> ()",
    "r = RandomNormalLike (w)",
    "r = RandomUniformLike (w)",
    "r = Bernoulli (p)",
], ids=lambda s: s.split()[2])
def test_random_ops_are_not_folded(random_op):
    model = make_model(f"""{H}
    g (float[2,3] x) => (float[2,3] y) {{
        {random_op}
        y = Add (x, r)
    }}""", w=np.zeros((2, 3), np.float32), p=np.full((2, 3), 0.5, np.float32))
    result, _ = _fold(model)
    assert not result.changed and len(model) == 2


def test_large_results_do_not_inflate_the_model():
    text = f"""{H}
    g (float[1024,1024] x) => (float[1024,1024] y) {{
        z = ConstantOfShape <value = float[1] {{1.0}}> (shape)
        y = Add (x, z)
    }}"""
    shape = np.array([1024, 1024], np.int64)
    model = make_model(text, shape=shape)
    result, _ = _fold(model)
    # 4 MiB of ones computed from 16 bytes: kept as a ConstantOfShape.
    assert not result.changed
    assert result.stats["kept_large"] == 1 and result.stats["folded_tensors"] == 0
    assert [n.op for n in model.graph.nodes] == ["ConstantOfShape", "Add"]
    assert model.nbytes == 16
    again, _ = _fold(model)
    assert not again.changed and again.stats["kept_large"] == 1
    # A larger limit lets it fold.
    model = make_model(text, shape=shape)
    result, _ = _fold(model, size_limit=8 << 20)
    assert result.stats["folded_tensors"] == 1 and result.stats["kept_large"] == 0
    assert [n.op for n in model.graph.nodes] == ["Add"]
    assert model.nbytes == 1024 * 1024 * 4


def test_small_constant_of_shape_folds():
    model = make_model(f"""{H}
    g (float[2,3] x) => (float[2,3] y) {{
        z = ConstantOfShape <value = float[1] {{0.5}}> (shape)
        y = Add (x, z)
    }}""", shape=np.array([2, 3], np.int64))
    result, reference = _fold(model)
    assert result.stats["folded_tensors"] == 1 and result.stats["nodes_removed"] == 1
    assert [n.op for n in model.graph.nodes] == ["Add"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_custom_domain_and_control_flow_are_not_folded():
    model = make_model("""<ir_version: 8, opset_import: ["": 17, "com.microsoft": 1]>
    g (float[2,3] x) => (float[2,3] y) {
        f = com.microsoft.Gelu (w)
        c = If (flag) <
            then_branch = then_g () => (float[2,3] t) { t = Neg (w) },
            else_branch = else_g () => (float[2,3] e) { e = Abs (w) }
        >
        s = Add (f, c)
        y = Add (x, s)
    }""", w=np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), flag=np.array(True))
    result, _ = _fold(model)
    assert not result.changed
    assert [n.op for n in model.graph.nodes] == ["Gelu", "If", "Add", "Add"]


# --------------------------------------------------------------------------------------------
# Interface and sharing
def test_constant_expression_that_is_a_graph_output_is_kept():
    model = make_model(f"""{H}
    g (float[2,3] x) => (float[2,3] y, float[2,3] k) {{
        k = Add (a, b)
        y = Add (x, k)
    }}""", a=np.ones((2, 3), np.float32), b=np.full((2, 3), 2.0, np.float32))
    result, _ = _fold(model)
    assert not result.changed and len(model) == 2
    assert [t.name for t in model.graph.outputs] == ["y", "k"]


def test_constant_expression_with_many_readers_becomes_one_initializer():
    model = make_model(f"""{H}
    g (float[2,3] x) => (float[2,3] y) {{
        k = Mul (a, b)
        u = Add (x, k)
        y = Sub (u, k)
    }}""", a=np.ones((2, 3), np.float32), b=np.full((2, 3), 3.0, np.float32))
    result, reference = _fold(model)
    assert result.stats["folded_tensors"] == 1 and result.stats["nodes_removed"] == 1
    add, sub = model.graph.nodes
    assert add.inputs[1] is sub.inputs[1]
    assert add.inputs[1].name == "k"
    np.testing.assert_array_equal(add.inputs[1].values, np.full((2, 3), 3.0, np.float32))
    assert [c.name for c in model.constants()] == ["k"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_folded_value_read_inside_a_subgraph():
    model = make_model(f"""{H}
    g (float[2] x, bool cond) => (float[2] y) {{
        k = Mul (a, b)
        y = If (cond) <
            then_branch = then_g () => (float[2] t) {{ t = Add (x, k) }},
            else_branch = else_g () => (float[2] e) {{ e = Neg (x) }}
        >
    }}""", a=np.array([1.0, 2.0], np.float32), b=np.array([3.0, 4.0], np.float32))
    result, reference = _fold(model)
    assert result.stats["folded_tensors"] == 1
    assert [n.op for n in model.graph.nodes] == ["If"]
    x = np.array([1.0, 1.0], np.float32)
    feeds = [{"x": x, "cond": np.array(True)}, {"x": x, "cond": np.array(False)}]
    assert_same_outputs(reference, model, feeds, rtol=0, atol=0)
    np.testing.assert_array_equal(run(model, feeds[0])[0], [4.0, 9.0])


# --------------------------------------------------------------------------------------------
# Stats are what happened
def _all_constant_nodes(model: Model) -> int:
    return sum(n.op == "Constant" for g in iter_graphs(model.graph) for n in g.nodes)


def test_on_every_model_stats_match_and_outputs_are_kept(any_model):
    reference = any_model.copy()
    result, _ = _fold(any_model)
    stats = result.stats
    converted_here = count(reference, "Constant") - count(any_model, "Constant")
    assert len(reference) - len(any_model) == converted_here + stats["nodes_removed"]
    assert stats["constant_nodes"] == _all_constant_nodes(reference) - _all_constant_nodes(
        any_model)
    assert result.changed == bool(stats["constant_nodes"] or stats["shapes"]
                                  or stats["folded_tensors"])
    assert_same_outputs(reference, any_model, feed_list(any_model), rtol=0, atol=0)
    _second_run_is_a_no_op(any_model)


# --------------------------------------------------------------------------------------------
# Bounded evaluation (issue 11, item 9)
def _expand_then_reduce(elements: int) -> Model:
    return make_model(f"""{H}
    g (float[1] x) => (float[1] y) {{
        e = Expand(one, shape)
        s = ReduceSum(e)
        y = Add(x, s)
    }}""", one=np.ones(1, np.float32), shape=np.array([elements], np.int64))


@pytest.mark.parametrize("op", ["Expand", "ConstantOfShape"])
def test_huge_intermediates_are_never_evaluated(op):
    """A ~200-byte model whose all-constant Expand would hold 5e9 floats (20 GB), or whose
    ConstantOfShape would hold 2^31: shape inference gives their sizes before anything runs,
    so nothing is evaluated and memory does not move."""
    model = (_expand_then_reduce(5_000_000_000) if op == "Expand" else make_model(f"""{H}
    g (float[1] x) => (float[1] y) {{
        c = ConstantOfShape(big)
        m = ReduceMax(c)
        y = Add(x, m)
    }}""", big=np.array([65536, 32768], np.int64)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result, reference = _fold(model)
    assert result.stats["too_large"] == 1 and result.stats["folded_tensors"] == 0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    assert [n.op for n in model.graph.nodes] == [n.op for n in reference.graph.nodes]


def test_the_evaluation_limit_is_on_each_intermediate(monkeypatch):
    model = _expand_then_reduce(1000)  # 4000 bytes inside, a scalar at the frontier
    monkeypatch.setattr(constants, "EVAL_LIMIT", 1000)
    result, reference = _fold(model)
    assert result.stats["too_large"] == 1 and not result.stats["folded_tensors"]
    monkeypatch.undo()
    result, _ = _fold(model)
    assert result.stats["folded_tensors"] == 1 and "too_large" not in result.stats
    assert_same_outputs(reference, model, {"x": np.ones(1, np.float32)})
