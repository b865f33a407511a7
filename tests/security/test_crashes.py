"""Items 10-15 of issue 11: hostile metadata and data files, fusion edge cases, fixed batch
dimensions, unusual tensor types and messages — each ends in a result or in one clear line."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from security.hostile import cli, digest, one_line_error

import onnxpress as ox
from onnxpress.errors import DataError, ModelLoadError
from onnxpress.ir.model import PIPELINE_KEY
from onnxpress.passes.base import registered
from onnxpress.runtime.data import DataSource, as_data_source
from onnxpress.testing import assert_same_outputs, make_model, run

H = '<ir_version: 8, opset_import: ["": 17]>'


def _save(proto: onnx.ModelProto, path) -> str:
    path.write_bytes(proto.SerializeToString())
    return str(path)


def _relu(batch="N", elem="float") -> onnx.ModelProto:
    return onnx.parser.parse_model(f"{H} g ({elem}[{batch}, 3] x) => ({elem}[{batch}, 3] y) "
                                   "{ y = Relu(x) }")


# --------------------------------------------------------------------------------------------
# 10. Hostile metadata and data files; random data that cannot be made
@pytest.mark.parametrize("value", ["{not json", "[1, 2, 3]", '{"passes": 5}',
                                   '{"passes": [{"name": 3}]}'])
@pytest.mark.parametrize("command", ["inspect", "optimize", "bench"])
def test_malformed_pipeline_metadata_is_one_line(capsys, tmp_path, value, command):
    proto = _relu()
    onnx.helper.set_model_props(proto, {PIPELINE_KEY: value})
    path = _save(proto, tmp_path / "m.onnx")
    argv = {"inspect": [path], "optimize": [path, "-o", tmp_path / "o.onnx"],
            "bench": [path, "--runs", "1", "--warmup", "0"]}[command]
    status, _, err = cli(capsys, command, *argv)
    one_line_error(status, err, "m.onnx", PIPELINE_KEY)


def test_a_valid_recorded_pipeline_still_accumulates(tmp_path):
    proto = _relu()
    onnx.helper.set_model_props(proto, {PIPELINE_KEY: json.dumps(
        {"version": "0", "passes": [{"name": "cleanup", "options": {}}]})})
    assert ox.load(proto).pipeline == [{"name": "cleanup", "options": {}}]


class _Evil:
    """Unpickling this runs a shell command: the marker file proves it never happens."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _npy(array=None, header=None, pickle=False) -> bytes:
    buffer = io.BytesIO()
    if header is not None:
        np.lib.format.write_array_header_1_0(buffer, header)
    else:
        np.save(buffer, array, allow_pickle=pickle)
    return buffer.getvalue()


def _npz(path, **members: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return path


def _bad_data(kind, tmp_path):
    good = _npy(np.ones((4, 3), np.float32))
    marker = tmp_path / "pwned"
    path = tmp_path / "d.npz"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _npz(path, x=good)
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "crc":
        _npz(path, x=good)
        data = bytearray(path.read_bytes())
        data[60] ^= 0xFF  # inside the stored (uncompressed) member
        path.write_bytes(bytes(data))
    elif kind == "pickled":
        _npz(path, x=good, extra=_npy(np.array([_Evil(marker)], dtype=object), pickle=True))
    elif kind == "2^40 elements":
        _npz(path, x=_npy(header={"descr": "<f4", "fortran_order": False,
                                  "shape": (1 << 40, 3)}))
    elif kind == "random bytes":
        path.write_bytes(os.urandom(256))
    elif kind == "empty npy in folder":
        path = tmp_path / "folder"
        path.mkdir()
        (path / "x.npy").write_bytes(b"")
    return path, marker


BAD_DATA = ["empty", "truncated", "crc", "pickled", "2^40 elements", "random bytes",
            "empty npy in folder"]


@pytest.mark.parametrize("kind", BAD_DATA)
def test_unreadable_data_is_one_line_and_never_unpickled(capsys, tmp_path, kind):
    model = _save(_relu(), tmp_path / "m.onnx")
    data, marker = _bad_data(kind, tmp_path)
    with pytest.raises(DataError):
        as_data_source(data)
    for argv in (["bench", model, "--data", data, "--runs", "1"],
                 ["compare", model, model, "--data", data],
                 ["optimize", model, "-o", tmp_path / "o.onnx", "--passes", "calibrate",
                  "--data", data]):
        status, _, err = cli(capsys, *argv)
        one_line_error(status, err, str(data))
    assert not marker.exists()


@pytest.mark.parametrize("proto, fragment", [
    (onnx.parser.parse_model(f"{H} g (bfloat16[1, 3] x) => (bfloat16[1, 3] y) {{ y = Relu(x) }}"),
     "bfloat16"),
    (onnx.parser.parse_model(f"{H} g (float[1099511627776, 4] x) => (float[1099511627776, 4] y)"
                             " { y = Relu(x) }"), "too large"),
    (onnx.parser.parse_model(f"{H} g (float[1, 4611686018427387904] x) => "
                             "(float[1, 4611686018427387904] y) { y = Relu(x) }"), "too large"),
], ids=["bfloat16", "2^40 batch", "2^62 wide"])
def test_random_inputs_that_cannot_be_made_are_one_line(capsys, tmp_path, proto, fragment):
    path = _save(proto, tmp_path / "m.onnx")
    status, _, err = cli(capsys, "bench", path, "--runs", "1", "--warmup", "0")
    one_line_error(status, err, fragment, "'x'")
    status, _, err = cli(capsys, "optimize", path, "-o", tmp_path / "o.onnx", "--verify",
                         "numeric")
    one_line_error(status, err, fragment)


# --------------------------------------------------------------------------------------------
# 11. Fusion crashes
@pytest.mark.parametrize("bias", [(1, 4), (2, 4), (2, 1), (4,), ()], ids=str)
def test_gemm_with_a_2d_bias_then_batchnorm_folds(bias):
    rng = np.random.default_rng(0)
    model = make_model(f"{H} g (float[2,3] x) => (float[2,4] y) {{ t = Gemm(x, w, c) "
                       "y = BatchNormalization(t, s, b, mu, v) }",
                       w=rng.standard_normal((3, 4)).astype(np.float32),
                       c=rng.standard_normal(bias).astype(np.float32),
                       s=rng.uniform(0.5, 1.5, 4).astype(np.float32),
                       b=rng.standard_normal(4).astype(np.float32),
                       mu=rng.standard_normal(4).astype(np.float32),
                       v=rng.uniform(0.5, 1.5, 4).astype(np.float32))
    for passes in (["fuse-batchnorm"], ["fuse"]):
        fused = ox.optimize(model, passes)
        assert [n.op for n in fused.graph.nodes] == ["Gemm"]
        assert_same_outputs(model, fused)


def test_transpose_of_a_constant_that_is_an_output_and_read_folds():
    model = make_model(f"{H} g (float[2,3] x) => (float[3,4] wt, float[2,4] y) {{ "
                       "wt = Transpose<perm=[1,0]>(w)  y = MatMul(x, wt) }",
                       w=np.arange(12, dtype=np.float32).reshape(4, 3))
    for passes in (["fuse-transposes"], ["fuse"]):
        fused = ox.optimize(model, passes)
        assert "Transpose" not in [n.op for n in fused.graph.nodes]
        assert [t.name for t in fused.graph.outputs] == ["wt", "y"]
        assert_same_outputs(model, fused, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# 12. A fixed batch dimension in compare --data and --verify numeric --data
@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_dimension_with_data(capsys, tmp_path, batch):
    proto = onnx.parser.parse_model(
        f"{H} g (float[{batch}, 3] x) => (float[{batch}, 3] y) {{ a = Identity(x) "
        "y = Relu(a) }")
    model = _save(proto, tmp_path / "m.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
    status, out, err = cli(capsys, "compare", model, model, "--data", data)
    assert status == 0, err
    assert "8 samples" in out
    status, _, err = cli(capsys, "optimize", model, "-o", tmp_path / "o.onnx", "--verify",
                         "numeric", "--data", data)
    assert status == 0, err


# --------------------------------------------------------------------------------------------
# 13. String and INT4 initializers, training_info
def _typed_initializers() -> onnx.ModelProto:
    """Outputs a string initializer through Identity and an INT4 one cast to float, next to a
    foldable float path (so passes really change the model)."""
    strings = helper.make_tensor("names", TensorProto.STRING, [2], [b"a", b"bc"])
    nibbles = helper.make_tensor("q", TensorProto.INT4, [4], [1, 3, 5, -7])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["names"], ["labels"]),
         helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
         helper.make_node("Identity", ["x"], ["xi"]),
         helper.make_node("Add", ["xi", "qf"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("labels", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [strings, nibbles])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21)])


EXACT = sorted(name for name, cls in registered().items() if cls.exact and name != "calibrate")


@pytest.mark.parametrize("name", EXACT)
def test_string_and_int4_initializers_survive_every_exact_pass(tmp_path, name):
    proto = _typed_initializers()
    feeds = {"x": np.arange(4, dtype=np.float32)}
    expected = run(proto.SerializeToString(), feeds)
    model = ox.optimize(proto, [name], data=DataSource.from_feeds([feeds]))  # for data-driven ones
    assert model.nbytes > 0
    path = model.save(tmp_path / "out.onnx")
    got = run(path, feeds)
    assert got[0].tolist() == expected[0].tolist() == ["a", "bc"]
    np.testing.assert_array_equal(got[1], expected[1])
    types = {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}
    assert types.get("names", TensorProto.STRING) == TensorProto.STRING


def _with_training_info(proto: onnx.ModelProto, updates: str) -> onnx.ModelProto:
    algorithm = helper.make_graph([helper.make_node("Neg", [updates], ["new"])], "step", [],
                                  [helper.make_tensor_value_info("new", TensorProto.FLOAT, [3])])
    info = proto.training_info.add()
    info.algorithm.CopyFrom(algorithm)
    info.update_binding.add(key=updates, value="new")
    return proto


def test_training_info_is_kept_while_its_tensors_exist(tmp_path):
    proto = _with_training_info(onnx.parser.parse_model(
        f"{H} g (float[3] x) => (float[3] y) {{ y = Add(x, w) }}"), "w")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(3, np.float32), "w"))
    path = ox.optimize(proto, ["cleanup"]).save(tmp_path / "kept.onnx")
    assert onnx.load(str(path)).training_info[0].update_binding[0].key == "w"


def test_training_info_naming_removed_tensors_is_dropped_with_a_warning(tmp_path):
    proto = _with_training_info(make_model(
        f"{H} g (float[3] x) => (float[3] y) {{ t = Add(x, w) y = Add(t, w2) }}",
        w=np.ones(3, np.float32), w2=np.ones(3, np.float32)).to_onnx(), "w")
    model = ox.optimize(proto, ["cleanup"])
    model.graph.nodes[0].inputs[1] = model.graph.nodes[1].inputs[1]  # `w` is no longer used
    with pytest.warns(UserWarning, match=r"training_info dropped.*\['w'\]"):
        path = model.save(tmp_path / "dropped.onnx")
    assert not onnx.load(str(path)).training_info


# --------------------------------------------------------------------------------------------
# 14. value_info without a shape must not overwrite a graph output's declared type
@pytest.mark.parametrize("info", [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                                  onnx.ValueInfoProto(name="y")], ids=["no shape", "no type"])
def test_shapeless_value_info_of_an_output_does_not_replace_its_type(tmp_path, info):
    proto = onnx.parser.parse_model('<ir_version: 7, opset_import: ["": 12]> g (float[1,3] x) '
                                    "=> (float[1,3] y) { a = Identity(x) y = Relu(a) }")
    proto.graph.value_info.append(info)
    before = proto.SerializeToString()
    model = ox.load(proto)
    assert proto.SerializeToString() == before
    assert model.graph.outputs[0].shape == [1, 3]
    path = ox.optimize(proto, ["fuse"]).save(tmp_path / "out.onnx")
    out = onnx.load(str(path)).graph.output[0].type.tensor_type
    assert [d.dim_value for d in out.shape.dim] == [1, 3]
    assert_same_outputs(proto, path)


def test_checker_failure_on_save_names_the_tensor(tmp_path):
    model = ox.load(_relu())
    model.graph.outputs[0].dtype = None  # an output without a type: the checker refuses
    with pytest.raises(ox.errors.SaveError) as info:
        model.save(tmp_path / "bad.onnx")
    assert "'y'" in str(info.value) or " y " in str(info.value)


# --------------------------------------------------------------------------------------------
# 15. Messages
def test_a_folder_given_as_the_model(capsys, tmp_path):
    with pytest.raises(ModelLoadError, match="is a folder"):
        ox.load(tmp_path)
    status, _, err = cli(capsys, "inspect", tmp_path)
    one_line_error(status, err, f"{tmp_path}: is a folder")


@pytest.mark.parametrize("option, fragment", [
    ("prune-magnitude:sparsity=abc", "option 'sparsity' expected a number, got 'abc'"),
    ("prune-magnitude:sparsity=", "option 'sparsity' expected a number"),
    ("prune-magnitude:exclude=1", "option 'exclude' expected a list"),
    ("fold-constants:size_limit=(1,)", "option 'size_limit' expected a number"),
])
def test_option_values_of_the_wrong_kind(capsys, tmp_path, option, fragment):
    path = _save(_relu(), tmp_path / "m.onnx")
    before = digest(path)
    status, _, err = cli(capsys, "optimize", path, "-o", tmp_path / "o.onnx", "--passes", option)
    one_line_error(status, err, fragment)
    assert digest(path) == before
