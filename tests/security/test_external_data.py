"""Item 1 of issue 11: every external tensor is read from the model's own folder, never the
current directory; locations that escape the folder, links and special files are refused."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from security.hostile import store_externally, weights

import onnxpress as ox
from onnxpress.cli import main
from onnxpress.errors import ModelLoadError
from onnxpress.testing import run

N = 300
SECRET = np.full(N, 666.0, np.float32)  # what a file of the same name in the CWD holds


def _model(kind: str) -> tuple[onnx.ModelProto, onnx.TensorProto]:
    """``y = x + w`` (or, in an If body, ``y = If(c){x + w}``), with `w` stored as `kind`:
    a main-graph initializer, a Constant node, a subgraph initializer or a subgraph Constant.

    Returns the model and the TensorProto holding `w`, to be stored externally.
    """
    w = onnx.numpy_helper.from_array(weights(N, 2.0), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])
    inputs, initializers, nodes = [x], [], []
    if kind in ("initializer", "constant"):
        body_nodes, body_inits = [helper.make_node("Add", ["x", "w"], ["y"])], []
        if kind == "constant":
            body_nodes.insert(0, helper.make_node("Constant", [], ["w"], value=w))
        else:
            initializers.append(w)
        nodes = body_nodes
    else:
        body_inits = [w] if kind == "subgraph_initializer" else []
        body_nodes = [helper.make_node("Add", ["x", "w"], ["t"])]
        if kind == "subgraph_constant":
            body_nodes.insert(0, helper.make_node("Constant", [], ["w"], value=w))
        body = helper.make_graph(body_nodes, "then", [], [
            helper.make_tensor_value_info("t", TensorProto.FLOAT, [N])], body_inits)
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [
            helper.make_tensor_value_info("e", TensorProto.FLOAT, [N])])
        inputs.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)]
    graph = helper.make_graph(nodes, "g", inputs, [y], initializers)
    proto = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    # Find the TensorProto of w in the built model (make_* copy their arguments).
    (tensor,) = [t for t in _all_tensors(proto) if t.name == "w" or t.dims == [N]]
    return proto, tensor


def _all_tensors(proto):
    from onnxpress.ir.external import tensors
    return list(tensors(proto))


def _feeds(proto) -> dict:
    feeds = {"x": np.ones(N, np.float32)}
    if len(proto.graph.input) > 1:
        feeds["c"] = np.array(True)
    return feeds


KINDS = ["initializer", "constant", "subgraph_initializer", "subgraph_constant"]


@pytest.fixture
def cwd_with_secret(tmp_path, monkeypatch):
    """A current directory holding ``weights.bin`` with SECRET, as a user's home might."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "weights.bin").write_bytes(SECRET.tobytes())
    monkeypatch.chdir(home)
    return home


@pytest.mark.parametrize("kind", KINDS)
def test_external_tensor_is_read_from_the_models_folder_not_the_cwd(kind, tmp_path,
                                                                   cwd_with_secret):
    folder = tmp_path / "models"
    folder.mkdir()
    proto, tensor = _model(kind)
    store_externally(tensor, folder, "weights.bin")
    path = folder / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    model = ox.load(path)
    assert model.source_files == {path.resolve(), (folder / "weights.bin").resolve()}
    # x + 2, not x + 666: the values come from models/weights.bin.
    np.testing.assert_array_equal(run(model, _feeds(proto))[0], np.full(N, 3.0, np.float32))
    out = model.save(tmp_path / "out.onnx")
    assert SECRET.tobytes() not in out.read_bytes()


@pytest.mark.parametrize("kind", KINDS)
def test_external_tensor_missing_beside_the_model_is_never_taken_from_the_cwd(
        kind, tmp_path, cwd_with_secret, capsys):
    folder = tmp_path / "downloads"
    folder.mkdir()
    proto, tensor = _model(kind)
    store_externally(tensor, folder, "weights.bin")
    (folder / "weights.bin").unlink()  # only the CWD has a file of that name now
    path = folder / "evil.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="weights.bin"):
        ox.load(path)
    assert main(["optimize", str(path), "-o", "out.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxpress: error:") and err.count("\n") == 1 and "weights.bin" in err
    assert not (cwd_with_secret / "out.onnx").exists()


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/hostname", "sub/../../weights.bin",
                                      "link.bin", "hard.bin", "fifo.bin", "C:weights.bin"])
def test_escaping_or_special_locations_are_refused(location, tmp_path, cwd_with_secret):
    folder = tmp_path / "downloads"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "weights.bin").write_bytes(SECRET.tobytes())
    os.symlink(cwd_with_secret / "weights.bin", folder / "link.bin")
    os.link(cwd_with_secret / "weights.bin", folder / "hard.bin")
    os.mkfifo(folder / "fifo.bin")
    proto, tensor = _model("constant")
    store_externally(tensor, tmp_path / "scratch", "w.bin")
    tensor.external_data[0].value = location
    path = folder / "evil.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="refusing|not a regular file|hard link"):
        ox.load(path)


def test_out_of_bounds_range_is_refused(tmp_path):
    proto, tensor = _model("initializer")
    store_externally(tensor, tmp_path, "w.bin")
    tensor.external_data[1].value = str(10**12)  # offset far beyond the file
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="outside"):
        ox.load(path)


def test_external_data_without_a_file_has_no_folder_to_resolve_against(tmp_path,
                                                                      cwd_with_secret):
    proto, tensor = _model("constant")
    store_externally(tensor, cwd_with_secret, "weights.bin")  # right beside the CWD
    for given in (proto, proto.SerializeToString()):
        with pytest.raises(ModelLoadError, match="load it by its path"):
            ox.load(given)


def test_a_symlinked_model_file_reads_its_own_weights(tmp_path):
    """Model hubs' caches link model.onnx to a blob elsewhere: its inline weights load."""
    proto, _ = _model("initializer")
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snapshot.mkdir()
    (blobs / "sha256-abc").write_bytes(proto.SerializeToString())
    os.symlink(blobs / "sha256-abc", snapshot / "model.onnx")
    os.link(blobs / "sha256-abc", blobs / "second-name")  # and hard-linked: still itself
    model = ox.load(snapshot / "model.onnx")
    np.testing.assert_array_equal(run(model, _feeds(proto))[0], np.full(N, 3.0, np.float32))
