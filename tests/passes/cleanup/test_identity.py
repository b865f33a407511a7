"""`eliminate-identity`: every no-op kind of the module docstring, and look-alikes that are not."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import MODELS_DIR, feed_list

from onnxpress import load
from onnxpress.ir.model import Model
from onnxpress.passes import Context, EliminateIdentity
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs, make_model, run

H = '<ir_version: 8, opset_import: ["": 17]>'
BIG = np.iinfo(np.int64).max

#: Initializers the graphs below may read.
I64 = {
    "same_shape": np.array([2, 3, 4], np.int64),
    "zero_minus1": np.array([0, -1, 4], np.int64),
    "zero_4_minus1": np.array([0, 4, -1], np.int64),
    "other_shape": np.array([6, 4], np.int64),
    "zero_pads": np.zeros(6, np.int64),
    "some_pads": np.array([0, 1, 0, 0, 1, 0], np.int64),
    "starts0": np.array([0], np.int64),
    "starts1": np.array([1], np.int64),
    "ends_big": np.array([BIG], np.int64),
    "ends3": np.array([3], np.int64),
    "ends2": np.array([2], np.int64),
    "axis1": np.array([1], np.int64),
    "axis0": np.array([0], np.int64),
    "axis_minus1": np.array([-1], np.int64),
    "axis2": np.array([2], np.int64),
    "step1": np.array([1], np.int64),
    "step2": np.array([2], np.int64),
    "no": np.array(False),
    "yes": np.array(True),
    "ratio": np.array(0.5, np.float32),
}


def _graph(body: str, *, header: str = H, x: str = "float[2,3,4] x",
           y: str = "float[2,3,4] y", outputs: str | None = None) -> Model:
    """A model `x -> <body> -> t`, followed by `y = Relu(t)` so `t` is not a graph output."""
    used = {k: v for k, v in I64.items() if k in body}
    return make_model(f"""{header}
    g ({x}) => ({outputs or y}) {{
        {body}
        {"" if outputs else "y = Relu (t)"}
    }}""", **used)


def _eliminate(model: Model):
    reference = model.copy()
    result = EliminateIdentity().run(model, Context(target=get_target("cpu")))
    return result, reference


def _ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]


# --------------------------------------------------------------------------------------------
# Every no-op kind
NO_OPS = {
    "identity": ("t = Identity (x)", "Identity"),
    "dropout": ("t = Dropout (x)", "Dropout"),
    "dropout_ratio": ("t = Dropout (x, ratio)", "Dropout"),
    "dropout_training_false": ("t = Dropout (x, ratio, no)", "Dropout"),
    "dropout_unused_mask": ("t, mask = Dropout (x)", "Dropout"),
    "reshape_same": ("t = Reshape (x, same_shape)", "Reshape"),
    "reshape_zero_minus1": ("t = Reshape (x, zero_minus1)", "Reshape"),
    "transpose_identity_perm": ("t = Transpose <perm = [0, 1, 2]> (x)", "Transpose"),
    "cast_same_type": ("t = Cast <to = 1> (x)", "Cast"),
    "pad_zero": ("t = Pad (x, zero_pads)", "Pad"),
    "slice_to_int64_max": ("t = Slice (x, starts0, ends_big, axis1)", "Slice"),
    "slice_to_dim": ("t = Slice (x, starts0, ends3, axis1, step1)", "Slice"),
    "slice_negative_axis": ("t = Slice (x, starts0, ends_big, axis_minus1)", "Slice"),
}


@pytest.mark.parametrize("body,op", NO_OPS.values(), ids=NO_OPS.keys())
def test_single_no_op_is_removed(body, op):
    model = _graph(body)
    assert _ops(model) == [op, "Relu"]
    result, reference = _eliminate(model)
    assert result.changed and result.stats == {op: 1}
    assert _ops(model) == ["Relu"]
    assert model.graph.nodes[0].inputs[0] is model.graph.inputs[0]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)
    again, _ = _eliminate(model)
    assert not again.changed and again.stats == {}


PAIRS = {
    "unsqueeze_of_squeeze": ("float[2,1,4] x", "float[2,1,4] y",
                             "s = Squeeze (x, axis1)\n t = Unsqueeze (s, axis1)", "Unsqueeze"),
    "squeeze_of_unsqueeze": ("float[2,3,4] x", "float[2,3,4] y",
                             "u = Unsqueeze (x, axis0)\n t = Squeeze (u, axis0)", "Squeeze"),
    "squeeze_of_unsqueeze_negative": ("float[2,3,4] x", "float[2,3,4] y",
                                      ("u = Unsqueeze (x, axis_minus1)\n"
                                       " t = Squeeze (u, axis_minus1)"), "Squeeze"),
    "unsqueeze_of_squeeze_mixed_sign": ("float[2,3,1] x", "float[2,3,1] y",
                                        ("s = Squeeze (x, axis2)\n"
                                         " t = Unsqueeze (s, axis_minus1)"), "Unsqueeze"),
}


@pytest.mark.parametrize("x,y,body,outer", PAIRS.values(), ids=PAIRS.keys())
def test_inverse_pair_is_removed(x, y, body, outer):
    model = _graph(body, x=x, y=y)
    assert len(model) == 3
    result, reference = _eliminate(model)
    # The outer node is bypassed; the inner one, now unread, goes to dead code.
    assert result.stats == {outer: 1}
    assert _ops(model) == ["Relu"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_attribute_forms_of_older_opsets():
    model = _graph("""a = Squeeze <axes = [1]> (x)
        b = Unsqueeze <axes = [1]> (a)
        c = Pad <pads = [0, 0, 0, 0, 0, 0]> (b)
        t = Slice <starts = [0], ends = [4], axes = [2]> (c)""",
                   header='<ir_version: 6, opset_import: ["": 9]>',
                   x="float[2,1,4] x", y="float[2,1,4] y")
    result, reference = _eliminate(model)
    assert result.stats == {"Unsqueeze": 1, "Pad": 1, "Slice": 1}
    assert _ops(model) == ["Relu"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_chain_of_no_ops_collapses_in_one_run():
    model = _graph("""a = Identity (x)
        b = Cast <to = 1> (a)
        c = Transpose <perm = [0, 1, 2]> (b)
        t = Reshape (c, same_shape)""")
    result, reference = _eliminate(model)
    assert result.stats == {"Identity": 1, "Cast": 1, "Transpose": 1, "Reshape": 1}
    assert _ops(model) == ["Relu"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Look-alikes that change something
NOT_NO_OPS = {
    "reshape_changes_shape": ("t = Reshape (x, other_shape)", "float[6,4] y"),
    "cast_to_another_type": ("t = Cast <to = 11> (x)", "double[2,3,4] y"),
    "transpose_real_perm": ("t = Transpose <perm = [0, 2, 1]> (x)", "float[2,4,3] y"),
    "transpose_without_perm": ("t = Transpose (x)", "float[4,3,2] y"),
    "pad_nonzero": ("t = Pad (x, some_pads)", "float[2,5,4] y"),
    "slice_partial_end": ("t = Slice (x, starts0, ends2, axis1)", "float[2,2,4] y"),
    "slice_nonzero_start": ("t = Slice (x, starts1, ends_big, axis1)", "float[2,2,4] y"),
    "slice_step2": ("t = Slice (x, starts0, ends_big, axis1, step2)", "float[2,2,4] y"),
    "dropout_training": ("t = Dropout (x, ratio, yes)", None),
}


@pytest.mark.parametrize("body,y", NOT_NO_OPS.values(), ids=NOT_NO_OPS.keys())
def test_real_computation_is_kept(body, y):
    model = _graph(body, y=y or "float[2,3,4] y")
    result, _ = _eliminate(model)
    assert not result.changed and result.stats == {}
    assert len(model) == 2


def test_dropout_whose_mask_is_read_is_bypassed_but_kept_for_the_mask():
    model = _graph("""d, mask = Dropout (x)
        m = Cast <to = 1> (mask)
        t = Mul (d, m)""")
    result, reference = _eliminate(model)
    assert result.stats["Dropout"] == 1      # readers of d now read x ...
    assert "Dropout" in _ops(model)          # ... and the node stays for its mask
    assert_same_outputs(reference, model)
    again, _ = _eliminate(model)
    assert not again.changed


def test_squeeze_without_axes_is_not_undone():
    # Squeeze without axes removes *every* size-1 axis, which Unsqueeze cannot know about.
    model = _graph("u = Unsqueeze (x, axis0)\n t = Squeeze (u)")
    result, _ = _eliminate(model)
    assert not result.changed and len(model) == 3


def test_inverse_pair_with_different_axes_is_kept():
    model = _graph("u = Unsqueeze (x, axis0)\n t = Squeeze (u, axis1)",
                   x="float[2,1,4] x", y="float[1,2,4] y")
    result, _ = _eliminate(model)
    assert not result.changed and len(model) == 3


def test_reshape_keeping_every_axis_of_a_dynamic_shape_is_removed():
    # 0 copies N, 4 matches, so the single -1 can only be 3.
    model = _graph("t = Reshape (x, zero_minus1)", x="float[N,3,4] x", y="float[N,3,4] y")
    result, reference = _eliminate(model)
    assert result.stats == {"Reshape": 1} and _ops(model) == ["Relu"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_reshape_of_a_dynamic_shape_that_moves_axes_is_kept():
    model = _graph("t = Reshape (x, zero_4_minus1)", x="float[N,3,4] x", y="float[N,4,3] y")
    result, _ = _eliminate(model)
    assert not result.changed and len(model) == 2


def test_slice_with_run_time_steps_is_kept():
    model = make_model(f"""{H}
    g (float[6] x, int64[1] steps) => (float[N] y) {{
        t = Slice (x, starts0, ends_big, axis0, steps)
        y = Relu (t)
    }}""", starts0=I64["starts0"], ends_big=I64["ends_big"], axis0=I64["axis0"])
    result, reference = _eliminate(model)
    feeds = {"x": np.arange(6, dtype=np.float32), "steps": np.array([2], np.int64)}
    np.testing.assert_array_equal(run(model, feeds)[0], run(reference, feeds)[0])
    assert not result.changed


# --------------------------------------------------------------------------------------------
# Readers, graph outputs, subgraphs
def test_every_reader_is_redirected():
    model = _graph("""a = Abs (x)
        t = Identity (a)
        u = Neg (t)
        v = Exp (t)
        w = Add (u, v)""", outputs="float[2,3,4] w")
    result, reference = _eliminate(model)
    assert result.stats == {"Identity": 1}
    assert _ops(model) == ["Abs", "Neg", "Exp", "Add"]
    a = model.graph.nodes[0].outputs[0]
    assert model.graph.nodes[1].inputs[0] is a and model.graph.nodes[2].inputs[0] is a
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_graph_output_name_moves_to_the_source():
    model = _graph("a = Relu (x)\n y = Identity (a)", outputs="float[2,3,4] y")
    result, reference = _eliminate(model)
    assert result.stats == {"Identity": 1}
    assert _ops(model) == ["Relu"]
    assert [t.name for t in model.graph.outputs] == ["y"]
    assert model.graph.outputs[0] is model.graph.nodes[0].outputs[0]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


@pytest.mark.parametrize("body,outputs", [
    ("y = Identity (x)", "float[2,3,4] y"),
    ("y = Identity (w)", "float[2,3,4] y"),
    ("a = Relu (x)\n y = Identity (a)", "float[2,3,4] y, float[2,3,4] a"),
], ids=["graph_input", "initializer", "other_graph_output"])
def test_graph_output_whose_source_is_interface_stays(body, outputs):
    model = make_model(f"""{H}
    g (float[2,3,4] x) => ({outputs}) {{
        {body}
    }}""", **({"w": np.ones((2, 3, 4), np.float32)} if "(w)" in body else {}))
    names = [t.name for t in model.graph.outputs]
    result, _ = _eliminate(model)
    assert not result.changed and "Identity" in _ops(model)
    assert [t.name for t in model.graph.outputs] == names


def test_two_outputs_of_one_source_keep_one_identity():
    model = _graph("a = Relu (x)\n y1 = Identity (a)\n y2 = Identity (a)",
                   outputs="float[2,3,4] y1, float[2,3,4] y2")
    result, reference = _eliminate(model)
    assert result.stats == {"Identity": 1}
    assert _ops(model) == ["Relu", "Identity"]
    assert [t.name for t in model.graph.outputs] == ["y1", "y2"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_inner_node_with_another_reader_stays():
    model = make_model(f"""{H}
    g (float[2,1,4] x) => (float[2,1,4] y, float[2,4] k) {{
        s = Squeeze (x, axis1)
        t = Unsqueeze (s, axis1)
        y = Relu (t)
        k = Neg (s)
    }}""", axis1=I64["axis1"])
    result, reference = _eliminate(model)
    assert result.stats == {"Unsqueeze": 1}
    assert _ops(model) == ["Squeeze", "Relu", "Neg"]
    assert model.graph.nodes[1].inputs[0] is model.graph.inputs[0]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_no_op_read_inside_a_subgraph():
    model = make_model(f"""{H}
    g (float[2] x, bool cond) => (float[2] y) {{
        a = Relu (x)
        t = Identity (a)
        y = If (cond) <
            then_branch = then_g () => (float[2] p) {{ p = Neg (t) }},
            else_branch = else_g () => (float[2] q) {{ q = Abs (t) }}
        >
    }}""")
    result, reference = _eliminate(model)
    assert result.stats == {"Identity": 1}
    assert _ops(model) == ["Relu", "If"]
    x = np.array([-1.0, 2.0], np.float32)
    assert_same_outputs(reference, model, [{"x": x, "cond": np.array(c)} for c in (True, False)],
                        rtol=0, atol=0)


def test_dropout_with_mask_as_graph_output_is_idempotent():
    model = make_model(f"""{H}
    g (float[2,3,4] x) => (float[2,3,4] y, bool[2,3,4] mask) {{
        t, mask = Dropout (x)
        y = Relu (t)
    }}""")
    first, _ = _eliminate(model)
    assert first.changed
    again, _ = _eliminate(model)
    assert not again.changed


def test_zoo_models_without_no_ops_are_unchanged(zoo_model):
    result, reference = _eliminate(zoo_model)
    # transpose_chain's cancelling pair is a fusion, not an identity: nothing here is a no-op.
    assert not result.changed and len(zoo_model) == len(reference)


def test_real_models_keep_their_outputs(real_model):
    model = load(real_model)
    result, reference = _eliminate(model)
    assert len(reference) - len(model) >= sum(result.stats.values())
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)
    again, _ = _eliminate(model)
    assert not again.changed
    assert [t.name for t in model.graph.outputs] == [t.name for t in reference.graph.outputs]


def test_opset21_mixed_no_ops():
    path = MODELS_DIR / "opset21_mixed.onnx"
    if not path.exists():
        pytest.skip("tests/models/opset21_mixed.onnx not built yet")
    model = load(path)
    result, reference = _eliminate(model)
    assert result.stats == {"Identity": 1, "Dropout": 1, "Cast": 2, "Transpose": 1,
                            "Squeeze": 1, "Reshape": 1}
    assert len(reference) - len(model) == 8  # seven bypassed nodes and the inner Unsqueeze
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)
