"""`onnxpress.ir.io`: load from every kind of input, save atomically, fail clearly."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from zoo import ZOO, feed_list

import onnxpress as ox
from onnxpress.errors import ModelLoadError, SaveError
from onnxpress.ir.model import PIPELINE_KEY
from onnxpress.testing import assert_same_outputs, run

METADATA = {"author": "onnxpress tests", "license": "Apache-2.0", "z-last": "kept in order"}


def _annotated(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with metadata_props and doc strings that a round trip must keep."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    proto.doc_string = "the model's doc string"
    proto.graph.doc_string = "the graph's doc string"
    proto.model_version = 7
    proto.producer_name = proto.producer_name or "onnxpress-tests"
    onnx.helper.set_model_props(proto, METADATA)
    return proto


def _facts(proto: onnx.ModelProto) -> dict:
    return {
        "ir_version": proto.ir_version,
        "opsets": {o.domain or "": o.version for o in proto.opset_import},
        "metadata": [(p.key, p.value) for p in proto.metadata_props],
        "doc_string": proto.doc_string,
        "graph_doc_string": proto.graph.doc_string,
        "producer": (proto.producer_name, proto.producer_version),
        "model_version": proto.model_version,
        "inputs": [i.name for i in proto.graph.input],
        "outputs": [o.name for o in proto.graph.output],
    }


def _files(folder) -> list[str]:
    """File names in `folder`, data files shown as ``<model>.<hash>.data``."""
    return sorted(re.sub(r"\.[0-9a-f]{16}\.data$", ".<hash>.data", n) for n in os.listdir(folder))


def _data_file(model_path) -> Path:
    """The one external data file saved beside `model_path`."""
    (found,) = Path(model_path).parent.glob(Path(model_path).name + ".*.data")
    return found


# --------------------------------------------------------------------------------------------
# Round trip: load → save → load
def _round_trip(original: onnx.ModelProto, tmp_path) -> None:
    src = tmp_path / "src.onnx"
    src.write_bytes(original.SerializeToString())
    model = ox.load(src)
    dst = model.save(tmp_path / "dst.onnx")
    assert _files(tmp_path) == ["dst.onnx", "src.onnx"]
    onnx.checker.check_model(str(dst), full_check=True)
    again = onnx.load(str(dst))
    assert _facts(again) == _facts(original)
    # Same graph, same runtime, graph optimizations off: bit-identical outputs.
    reloaded = ox.load(dst)
    assert len(reloaded) == len(original.graph.node)
    assert_same_outputs(src, dst, feed_list(reloaded), rtol=0, atol=0)


def test_round_trip_zoo(zoo_model, tmp_path):
    _round_trip(_annotated(zoo_model.to_onnx()), tmp_path)


def test_round_trip_real(real_model, tmp_path):
    _round_trip(_annotated(onnx.load(str(real_model))), tmp_path)


def test_round_trip_real_file_unannotated(real_model, tmp_path):
    """The exporter's own facts survive as they are (no doc or metadata added by us)."""
    original = onnx.load(str(real_model))
    dst = ox.load(real_model).save(tmp_path / "dst.onnx")
    assert _facts(onnx.load(str(dst))) == _facts(original)


# --------------------------------------------------------------------------------------------
# load: every input kind, argument never modified, result shares nothing
def _weights(model: ox.Model) -> dict[str, np.ndarray]:
    return {c.name: c.values for c in model.constants()}


def test_load_path_and_str(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(ZOO["residual_add"]().to_onnx().SerializeToString())
    before = path.read_bytes()
    for arg in (path, str(path)):
        model = ox.load(arg)
        assert model.source == path.resolve()
        assert len(model) == 7
    assert path.read_bytes() == before
    assert _files(tmp_path) == ["m.onnx"]


def test_load_bytes_and_bytearray():
    data = ZOO["concat"]().to_onnx().SerializeToString()
    buffer = bytearray(data)
    assert len(ox.load(data)) == 5
    model = ox.load(buffer)
    assert buffer == data
    assert model.source is None
    for c in model.constants():
        c.values[...] = 0  # writable, not a view of the caller's buffer
    assert buffer == data


def test_load_model_proto_is_copied():
    proto = _annotated(ZOO["control_flow"]().to_onnx())
    before = proto.SerializeToString()
    model = ox.load(proto)
    for c in model.constants():
        c.values[...] = 42
    model.graph.nodes.clear()
    model.metadata["new"] = "x"
    assert proto.SerializeToString() == before


def test_load_gs_graph_is_not_modified():
    proto = ZOO["control_flow"]().to_onnx()
    graph = gs.import_onnx(proto)
    nodes = list(graph.nodes)
    before = gs.export_onnx(graph).SerializeToString()
    model = ox.load(graph)
    for c in model.constants():
        c.values[...] = 42
    model.graph.nodes.clear()
    assert all(a is b for a, b in zip(graph.nodes, nodes, strict=True))
    assert gs.export_onnx(graph).SerializeToString() == before
    assert_same_outputs(proto, ox.load(graph), feed_list(ox.load(proto)), rtol=0, atol=0)


def test_load_gs_graph_without_ir_version_gets_one_onnxruntime_accepts():
    graph = gs.import_onnx(ZOO["gemm"]().to_onnx())
    graph.ir_version = None
    model = ox.load(graph)
    assert model.ir_version == onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid("", 17)])
    run(model, feed_list(model, 1)[0])


def test_load_model_returns_independent_copy():
    model = ZOO["gemm"]()
    model.metadata["k"] = "v"
    before = model.to_onnx().SerializeToString()
    clone = ox.load(model)
    assert clone is not model
    for c in clone.constants():
        c.values[...] = 0
    clone.graph.nodes.pop()
    clone.metadata["k"] = "changed"
    assert model.to_onnx().SerializeToString() == before
    assert len(model) == 2


def test_load_external_data(tmp_path):
    model = ZOO["gemm"]()
    path = model.save(tmp_path / "ext.onnx", external_data=True)
    reloaded = ox.load(path)
    assert all(c.values.any() for c in reloaded.constants())
    # Loaded data is in memory: saving elsewhere without external data is self-contained.
    other = tmp_path / "other"
    other.mkdir()
    reloaded.save(other / "inline.onnx", external_data=False)
    assert _files(other) == ["inline.onnx"]
    assert_same_outputs(model, other / "inline.onnx", feed_list(model), rtol=0, atol=0)


def _initializer_listed_as_input(ir_version: int, opset: int) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(f"""<ir_version: {ir_version}, opset_import: ["": {opset}]>
    g (float[2,3] x, float[2,3] w) => (float[2,3] y) {{
        y = Add (x, w)
    }}""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((2, 3), np.float32), "w"))
    onnx.checker.check_model(proto)
    return proto


def test_ir3_model_round_trips(tmp_path):
    proto = _initializer_listed_as_input(3, 8)
    path = ox.load(proto).save(tmp_path / "ir3.onnx")
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x", "w"]


def test_overridable_initializer_stays_an_input():
    model = ox.load(_initializer_listed_as_input(8, 17))
    assert [i.name for i in model.to_onnx().graph.input] == ["x", "w"]
    feeds = {"x": np.zeros((2, 3), np.float32), "w": np.full((2, 3), 5.0, np.float32)}
    np.testing.assert_array_equal(run(model, feeds)[0], feeds["w"])


# --------------------------------------------------------------------------------------------
# load: bad inputs give one ModelLoadError naming the file
def _load_error(arg) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        ox.load(arg)
    message = str(info.value)
    assert "\n" not in message.strip()
    return info.value


def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    error = _load_error(path)
    assert str(path) in str(error) and "no such file" in str(error)
    assert _files(tmp_path) == []


def test_folder_is_not_a_model(tmp_path):
    assert str(tmp_path) in str(_load_error(tmp_path))


@pytest.mark.parametrize("content", [
    b"this is a text file, not an ONNX model\n",
    bytes(range(256)) * 4,
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
], ids=["text", "binary", "png"])
def test_not_onnx_file(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    error = _load_error(path)
    assert str(path) in str(error) and "not an ONNX model" in str(error)
    assert path.read_bytes() == content


def test_truncated_file(tmp_path):
    source = (ZOO["residual_add"]().to_onnx().SerializeToString())
    path = tmp_path / "half.onnx"
    path.write_bytes(source[: len(source) // 2])
    assert str(path) in str(_load_error(path))


def test_truncated_real_file(real_model, tmp_path):
    data = real_model.read_bytes()
    path = tmp_path / real_model.name
    path.write_bytes(data[: len(data) // 2])
    assert str(path) in str(_load_error(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    error = _load_error(path)
    assert str(path) in str(error) and "truncated" in str(error)


def test_non_onnx_bytes():
    assert "the bytes given" in str(_load_error(b"\x00\x01 definitely not protobuf \xff"))


def test_invalid_model_fails_the_checker(tmp_path):
    proto = ZOO["gemm"]().to_onnx()
    proto.graph.node[1].op_type = "NotARealOp"
    path = tmp_path / "invalid.onnx"
    path.write_bytes(proto.SerializeToString())
    error = _load_error(path)
    assert str(path) in str(error) and "NotARealOp" in str(error)
    assert "NotARealOp" in str(_load_error(proto))


def test_missing_external_data_file(tmp_path):
    path = ZOO["gemm"]().save(tmp_path / "m.onnx", external_data=True)
    data = _data_file(path)
    data.unlink()
    assert data.name in str(_load_error(path))


def test_truncated_external_data_file(tmp_path):
    path = ZOO["gemm"]().save(tmp_path / "m.onnx", external_data=True)
    data = _data_file(path)
    data.write_bytes(data.read_bytes()[:10])
    assert "m.onnx" in str(_load_error(path))


@pytest.mark.parametrize("thing", [42, None, {"graph": 1}, [b"x"], 3.5], ids=repr)
def test_non_model_object(thing):
    error = _load_error(thing)
    assert type(thing).__name__ in str(error)


# --------------------------------------------------------------------------------------------
# save: atomic, never overwrites the source by accident, external data, pipeline metadata
def test_save_leaves_no_temporary_files(tmp_path):
    assert ZOO["conv_bn_relu"]().save(tmp_path / "a.onnx") == tmp_path / "a.onnx"
    ZOO["gemm"]().save(tmp_path / "b.onnx", external_data=True)
    assert _files(tmp_path) == ["a.onnx", "b.onnx", "b.onnx.<hash>.data"]


def _broken(model: ox.Model) -> ox.Model:
    """`model` changed so the ONNX checker rejects it (an op that does not exist)."""
    model.graph.nodes[-1].op = "NotARealOp"
    return model


def test_save_checker_failure_leaves_destination_untouched(tmp_path):
    dest = tmp_path / "dest.onnx"
    ZOO["gemm"]().save(dest)
    before = dest.read_bytes()
    with pytest.raises(SaveError, match="NotARealOp") as info:
        _broken(ZOO["gemm"]()).save(dest)
    assert str(dest) in str(info.value)
    assert dest.read_bytes() == before
    assert _files(tmp_path) == ["dest.onnx"]


def test_save_checker_failure_with_external_data_writes_nothing(tmp_path):
    with pytest.raises(SaveError):
        _broken(ZOO["gemm"]()).save(tmp_path / "x.onnx", external_data=True)
    assert _files(tmp_path) == []


def test_save_missing_folder(tmp_path):
    with pytest.raises(SaveError, match="does not exist"):
        ZOO["gemm"]().save(tmp_path / "no" / "such" / "m.onnx")
    assert _files(tmp_path) == []


def test_save_onto_a_folder(tmp_path):
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(SaveError, match="m.onnx"):
        ZOO["gemm"]().save(tmp_path / "m.onnx")
    assert _files(tmp_path) == ["m.onnx"]


def test_save_refuses_to_overwrite_source(tmp_path, monkeypatch):
    source = tmp_path / "model.onnx"
    source.write_bytes(ZOO["layernorm_decomposed"]().to_onnx().SerializeToString())
    before = source.read_bytes()
    model = ox.optimize(source, ["cleanup"])
    assert len(model) < 11  # it really differs from the file
    monkeypatch.chdir(tmp_path)
    for spelling in (source, str(source), "model.onnx", "./model.onnx",
                     tmp_path / "." / "model.onnx"):
        with pytest.raises(SaveError, match="source") as info:
            model.save(spelling)
        assert "overwrite=True" in str(info.value)
        assert source.read_bytes() == before
    assert _files(tmp_path) == ["model.onnx"]
    model.save(source, overwrite=True)
    assert source.read_bytes() != before
    assert len(ox.load(source)) == len(model)
    assert _files(tmp_path) == ["model.onnx"]


def test_save_external_data(tmp_path):
    model = ZOO["gemm"]()  # a 10x48 float weight: 1920 bytes, above the 1 KiB threshold
    path = model.save(tmp_path / "big.onnx", external_data=True)
    data = _data_file(path)
    assert data.is_file() and data.stat().st_size >= 10 * 48 * 4
    assert path.stat().st_size < 10 * 48 * 4
    proto = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external == ["w"]
    onnx.checker.check_model(str(path), full_check=True)
    assert_same_outputs(model, ox.load(path), feed_list(model), rtol=0, atol=0)


def test_save_external_data_with_only_small_tensors(tmp_path):
    model = ZOO["conv_bn_relu"]()  # largest tensor: 4x3x3x3 floats = 432 bytes
    path = model.save(tmp_path / "small.onnx", external_data=True)
    assert set(_files(tmp_path)) <= {"small.onnx", "small.onnx.<hash>.data"}
    assert_same_outputs(model, ox.load(path), feed_list(model), rtol=0, atol=0)


def test_save_records_pipeline_after_optimize(tmp_path):
    proto = _annotated(ZOO["layernorm_decomposed"]().to_onnx())
    model = ox.optimize(proto, ["fold-constants", "eliminate-dead-code"])
    path = model.save(tmp_path / "opt.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    for key, value in METADATA.items():
        assert props[key] == value
    pipeline = json.loads(props[PIPELINE_KEY])
    assert pipeline["version"] == ox.__version__
    assert pipeline["passes"] == [
        {"name": "fold-constants", "options": {"size_limit": 1 << 20}},
        {"name": "eliminate-dead-code", "options": {}},
    ]


def test_save_appends_to_a_recorded_pipeline(tmp_path):
    path = ox.optimize(ZOO["layernorm_decomposed"](), ["fold-constants", "eliminate-dead-code"]
                       ).save(tmp_path / "opt.onnx")
    again = ox.optimize(path, ["cleanup"]).save(tmp_path / "again.onnx")
    props = {p.key: p.value for p in onnx.load(str(again)).metadata_props}
    names = [p["name"] for p in json.loads(props[PIPELINE_KEY])["passes"]]
    assert names == ["fold-constants", "eliminate-dead-code", "cleanup"]


def test_save_without_passes_records_no_pipeline(tmp_path):
    path = ZOO["gemm"]().save(tmp_path / "m.onnx")
    assert PIPELINE_KEY not in {p.key for p in onnx.load(str(path)).metadata_props}


# --------------------------------------------------------------------------------------------
# Large models: weights stay in their files until read; no proto holds them (issue 11, 7-8)
def _mlp(tmp_path, external_data: bool):
    """A 3-layer MLP with 1 MiB weights, saved as one file or with external data."""
    rng = np.random.default_rng(0)
    w = {f"w{i}": rng.standard_normal((512, 512)).astype(np.float32) for i in range(3)}
    model = ox.testing.make_model('<ir_version: 8, opset_import: ["": 17]> g (float[2,512] x) '
                                  "=> (float[2,512] y) { a = MatMul(x, w0) b = Relu(a) "
                                  "c = MatMul(b, w1) d = Identity(c) y = MatMul(d, w2) }", **w)
    return model.save(tmp_path / "mlp.onnx", external_data=external_data), w


@pytest.mark.parametrize("external_data", [False, True], ids=["one file", "external data"])
def test_load_reads_no_weight_until_a_pass_needs_it(tmp_path, external_data):
    path, weights = _mlp(tmp_path, external_data)
    model = ox.load(path)
    assert model.nbytes == 3 * 512 * 512 * 4
    # The exported structure is tiny: weights are stubs standing for the file's bytes.
    assert model.to_onnx(weights=False).ByteSize() < 4096
    assert all(type(c._values).__name__ == "Stored" for c in model.constants())
    np.testing.assert_array_equal(next(iter(model.constants())).values, weights["w0"])
    out = ox.optimize(model, ["cleanup"]).save(tmp_path / "out.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    assert_same_outputs(path, out, rtol=0, atol=0)
    reloaded = onnx.load(str(out))
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in reloaded.graph.initializer
            } == {k: v.tobytes() for k, v in weights.items()}


def test_writes_to_loaded_values_never_reach_the_file(tmp_path):
    path, _ = _mlp(tmp_path, external_data=False)
    before = path.read_bytes()
    model = ox.load(path)
    for c in model.constants():
        c.values[...] = 0  # copy-on-write mapping: private to this process
    assert path.read_bytes() == before
    assert not any(c.values.any() for c in model.constants())
    assert any(c.values.any() for c in ox.load(path).constants())


def test_save_over_the_inline_source_keeps_lazy_weights_valid(tmp_path):
    """The model reads its weights from the old file's inode even after it is replaced."""
    path, weights = _mlp(tmp_path, external_data=False)
    model = ox.load(path)
    ox.optimize(path, ["cleanup"]).save(path, overwrite=True)
    values = {c.name: c.values for c in model.constants()}  # read after the replacement
    assert {k: v.tobytes() for k, v in values.items()} == {k: v.tobytes()
                                                           for k, v in weights.items()}


def test_past_the_protobuf_limit_saves_use_external_data_without_a_big_proto(tmp_path,
                                                                            monkeypatch):
    """With the limit lowered to 1 MiB, a 3 MiB model is a "> 2 GB" model: load, a pass and
    save go through stubs and streamed data, and no message is ever serialized whole."""
    from onnxpress.ir import io

    path, _ = _mlp(tmp_path, external_data=False)
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1 << 20)
    serialized = []
    real = onnx.ModelProto.SerializeToString
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString",
                        lambda self, **k: serialized.append(len(real(self, **k))) or real(
                            self, **k))
    model = ox.optimize(path, ["fuse"])
    out = model.save(tmp_path / "big.onnx")
    assert max(serialized) < 1 << 20
    monkeypatch.undo()
    assert _files(tmp_path) == ["big.onnx", "big.onnx.<hash>.data", "mlp.onnx"]
    assert out.stat().st_size < 1 << 16
    assert_same_outputs(path, out, rtol=1e-5, atol=1e-5)


def test_a_copy_shares_no_array_but_the_read_only_file(tmp_path):
    path, _ = _mlp(tmp_path, external_data=True)
    model = ox.load(path)
    first = next(iter(model.constants()))
    first.values = first.values * 2  # an array in memory
    clone = model.copy()
    for c in clone.constants():
        c.values[...] = 7
    assert not (first.values == 7).any()
    assert not any((c.values == 7).all() for c in model.constants())
