"""fuse-transposes: Transpose chains compose into one (or none); constant Transposes fold."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import feed_list

from onnxpress import optimize
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import explain
from onnxpress.passes.fusion.transpose import FuseTransposes, TransposeTranspose
from onnxpress.passes.manager import PassRecord
from onnxpress.testing import assert_same_outputs, make_model

W = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def _model(body: str, signature: str, **inits) -> Model:
    return make_model(f'<ir_version: 8, opset_import: ["": 17]>\ng {signature} {{\n{body}\n}}',
                      **inits)


def _fuse(model: Model) -> tuple[Model, PassRecord]:
    out = optimize(model, [FuseTransposes()])
    assert_same_outputs(model, out, feed_list(model), rtol=1e-4, atol=1e-5)
    return out, out.report["fuse-transposes"]


def _ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]


def _interface(model: Model) -> tuple[list[str], list[str]]:
    return [t.name for t in model.graph.inputs], [t.name for t in model.graph.outputs]


NCHW = "(float[1,2,3,4] x) => (float[1,4,3,2] y)"


def test_chain_becomes_one_transpose_with_the_composed_perm():
    body = "a = Transpose <perm = [0, 2, 3, 1]> (x)\ny = Transpose <perm = [0, 2, 1, 3]> (a)"
    out, rec = _fuse(_model(body, NCHW))
    assert rec.changed and rec.stats == {"TransposeTranspose": 1, "ConstantTranspose": 0}
    [node] = out.graph.nodes
    assert node.attrs["perm"] == [0, 3, 2, 1]
    assert node.inputs[0].name == "x" and node.outputs[0].name == "y"


def test_three_transposes_compose_over_sweeps():
    body = ("a = Transpose <perm = [1, 2, 0]> (x)\nb = Transpose <perm = [1, 2, 0]> (a)\n"
            "y = Transpose <perm = [1, 2, 0]> (b)")
    out, rec = _fuse(_model(body, "(float[2,3,4] x) => (float[2,3,4] y)"))
    assert rec.stats["TransposeTranspose"] == 2
    # The composition is the identity between a graph input and output: one Transpose stays.
    assert [n.attrs["perm"] for n in out.graph.nodes] == [[0, 1, 2]]


@pytest.mark.parametrize(("inner", "outer", "perm"), [
    ("<perm = [1, 0, 2]>", "", [2, 0, 1]),    # absent perm reverses the axes
    ("", "<perm = [1, 0, 2]>", [1, 2, 0]),
])
def test_missing_perm_means_reversed_axes(inner, outer, perm):
    body = f"a = Transpose {inner} (x)\ny = Transpose {outer} (a)"
    out, _ = _fuse(_model(body, "(float[2,3,4] x) => (float[A,B,C] y)"))
    assert [n.attrs["perm"] for n in out.graph.nodes] == [perm]


@pytest.mark.parametrize(("inner", "outer"), [("<perm = [0, 2, 3, 1]>", "<perm = [0, 3, 1, 2]>"),
                                              ("", "")])
def test_identity_chain_is_removed_and_readers_read_x(inner, outer):
    body = f"a = Transpose {inner} (x)\nb = Transpose {outer} (a)\ny = Relu (b)"
    out, rec = _fuse(_model(body, "(float[1,2,3,4] x) => (float[1,2,3,4] y)"))
    assert rec.stats == {"TransposeTranspose": 1, "ConstantTranspose": 0}
    assert _ops(out) == ["Relu"] and out.graph.nodes[0].inputs[0] is out.graph.inputs[0]


def test_identity_chain_at_a_graph_output_renames_the_produced_x():
    body = "r = Relu (x)\na = Transpose <perm = [1, 0]> (r)\ny = Transpose <perm = [1, 0]> (a)"
    out, rec = _fuse(_model(body, "(float[2,3] x) => (float[2,3] y)"))
    assert rec.changed and _ops(out) == ["Relu"]
    assert _interface(out) == (["x"], ["y"]) and out.graph.nodes[0].outputs[0].name == "y"


@pytest.mark.parametrize(("body", "signature"), [
    ("a = Transpose <perm = [1, 0]> (x)\ny = Transpose <perm = [1, 0]> (a)",
     "(float[2,3] x) => (float[2,3] y)"),
    ("r = Relu (x)\na = Transpose <perm = [1, 0]> (r)\ny = Transpose <perm = [1, 0]> (a)",
     "(float[2,3] x) => (float[2,3] y, float[2,3] r)"),
], ids=["x-is-graph-input", "x-is-graph-output"])
def test_identity_chain_between_interface_tensors_keeps_one_transpose(body, signature):
    model = _model(body, signature)
    out, rec = _fuse(model)
    assert rec.stats == {"TransposeTranspose": 1, "ConstantTranspose": 0}
    assert _interface(out) == _interface(model)
    assert out.graph.nodes[-1].op == "Transpose" and out.graph.nodes[-1].attrs["perm"] == [0, 1]
    assert "Identity" not in _ops(out)
    assert not _fuse(out)[1].changed


def test_transpose_of_a_constant_becomes_a_new_initializer():
    body = "t = Transpose <perm = [1, 0]> (w)\ny = MatMul (x, t)"
    out, rec = _fuse(_model(body, "(float[2,4] x) => (float[2,3] y)", w=W))
    assert rec.stats == {"TransposeTranspose": 0, "ConstantTranspose": 1}
    [matmul] = out.graph.nodes
    np.testing.assert_array_equal(matmul.inputs[1].values, W.T)


def test_shared_constant_keeps_its_other_reader():
    body = "t = Transpose <perm = [1, 0]> (w)\ny = MatMul (x, t)\nz = Add (w, w)"
    out, rec = _fuse(_model(body, "(float[2,4] x) => (float[2,3] y, float[3,4] z)", w=W))
    assert rec.changed and _ops(out) == ["MatMul", "Add"]
    matmul, add = out.graph.nodes
    assert add.inputs[0].name == "w" and add.inputs[0].values is not matmul.inputs[1].values
    np.testing.assert_array_equal(add.inputs[0].values, W)


def test_transpose_of_a_constant_node_and_at_a_graph_output_folds():
    body = "c = Constant <value = float[2,3] {1, 2, 3, 4, 5, 6}> ()\n" \
           "t = Transpose <perm = [1, 0]> (c)\ny = Relu (x)"
    out, rec = _fuse(_model(body, "(float[2,3] x) => (float[2,3] y, float[3,2] t)"))
    assert rec.stats["ConstantTranspose"] == 1 and "Transpose" not in _ops(out)
    assert _interface(out) == (["x"], ["y", "t"])


def test_inner_transpose_with_another_consumer_is_kept():
    body = ("a = Transpose <perm = [1, 0]> (x)\nb = Transpose <perm = [1, 0]> (a)\n"
            "y = Add (b, x)\nz = Relu (a)")
    model = _model(body, "(float[2,3] x) => (float[2,3] y, float[3,2] z)")
    out, rec = _fuse(model)
    assert not rec.changed and _ops(out) == _ops(model)
    assert "intermediate 'a' is also read by" in explain(model, TransposeTranspose())


def test_inner_transpose_that_is_a_graph_output_is_kept():
    body = "a = Transpose <perm = [1, 0]> (x)\nb = Transpose <perm = [1, 0]> (a)\ny = Relu (b)"
    out, rec = _fuse(_model(body, "(float[2,3] x) => (float[2,3] y, float[3,2] a)"))
    assert not rec.changed and _ops(out) == ["Transpose", "Transpose", "Relu"]


def test_no_perm_and_unknown_rank_is_rejected_with_the_reason():
    # Reshape to a shape read from an input of unknown length: shape inference finds no rank.
    body = ("r = Reshape (x, s)\na = Transpose (r)\nb = Transpose (a)\n"
            "y = Reshape (b, flat)")
    model = _model(body, "(float[6] x, int64[K] s) => (float[6] y)",
                   flat=np.array([-1], np.int64))
    out = optimize(model, [FuseTransposes()])
    assert not out.report["fuse-transposes"].changed
    assert "rank of x is unknown" in explain(model, TransposeTranspose())


def test_no_transpose_no_change():
    rec = _fuse(_model("y = Relu (x)", "(float[2,3] x) => (float[2,3] y)"))[1]
    assert not rec.changed and rec.stats == {"TransposeTranspose": 0, "ConstantTranspose": 0}
