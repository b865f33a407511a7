"""Reading and writing models: the only place onnxpress touches model files.

`load` accepts what users hold — a path, serialized bytes, a ModelProto, a gs.Graph or a
`Model` — and always returns a fresh `Model` that shares nothing with its argument. Errors
name the file and say what is wrong with it.

`save` is atomic: the model is written to a temporary file in the destination folder, checked
there with the ONNX checker (by path, so models over 2 GB are checked too), and only then moved
over the destination with `os.replace`. A crash or a checker failure leaves the destination as
it was. It refuses to overwrite the file the model was loaded from unless asked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from onnxpress.errors import ModelLoadError, SaveError
from onnxpress.ir.model import Model

#: Protobuf cannot serialize a message over 2 GiB; past this the weights go to external data.
PROTOBUF_LIMIT = 2**31 - 1

ModelLike = Model | onnx.ModelProto | gs.Graph | bytes | str | os.PathLike


def load(model: ModelLike) -> Model:
    """Return a new `Model` from a path, bytes, ModelProto, gs.Graph or Model.

    The argument is never modified and the result shares no objects with it.

    Raises:
        ModelLoadError: the file is missing, is not an ONNX model, or fails the checker.
    """
    if isinstance(model, Model):
        return model.copy()
    if isinstance(model, gs.Graph):
        proto = gs.export_onnx(model.copy(), do_type_check=False)
        if model.ir_version is None:
            # gs would stamp its own (newer) IR version; use the one onnx pairs with the opset.
            proto.ir_version = _ir_version_for(proto)
        return Model.from_onnx(_checked(proto, "the gs.Graph"))
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return Model.from_onnx(_checked(proto, "the ModelProto"))
    if isinstance(model, bytes | bytearray):
        return Model.from_onnx(_checked(_parse(bytes(model), "the bytes given"), "the bytes given"))
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
        proto = _parse(path.read_bytes(), str(path))
        if _uses_external_data(proto):
            try:
                onnx.load_external_data_for_model(proto, str(path.parent))
            except (OSError, ValueError, onnx.checker.ValidationError) as e:
                raise ModelLoadError(f"{path}: its external data cannot be read "
                                     f"({type(e).__name__}: {e}); keep the .data file "
                                     "beside the model") from None
        return Model.from_onnx(_checked(proto, str(path)), source=path.resolve())
    raise ModelLoadError(
        f"cannot load a {type(model).__name__}: give a path, bytes, onnx.ModelProto, "
        "gs.Graph or onnxpress.Model")


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ModelLoadError(f"{what}: not an ONNX model (protobuf decode failed: {e})") from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{what}: not an ONNX model (no graph or no opset_import; "
                             "is the file truncated?)")
    return proto


def _checked(proto: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """Run the ONNX checker so broken input fails here, not deep inside a pass."""
    try:
        if proto.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelLoadError(f"{what}: invalid ONNX model: {first}") from None
    return proto


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _ir_version_for(proto: onnx.ModelProto) -> int:
    """The oldest IR version that supports the model's opsets (what onnxruntime accepts)."""
    return onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)


def save(model: Model, path: str | os.PathLike, *, overwrite: bool = False,
         external_data: bool | None = None) -> Path:
    """Write `model` to `path` atomically and return the path.

    Args:
        model: The model to write; it records its pipeline in metadata_props.
        path: Destination .onnx file. Its folder must exist.
        overwrite: Allow writing over the file the model was loaded from.
        external_data: Store initializers in `<name>.data` beside the file. None (default)
            does so only when the model would exceed protobuf's 2 GB limit.

    Raises:
        SaveError: the destination is the source file, or the model fails the ONNX checker.
    """
    path = Path(path)
    if model.source is not None and path.resolve() == model.source and not overwrite:
        raise SaveError(f"{path}: refusing to overwrite the model's source file; "
                        "write elsewhere or pass overwrite=True")
    if not path.parent.is_dir():
        raise SaveError(f"{path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise SaveError(f"{path}: is a folder; give a file name")
    proto = model.to_onnx()
    if external_data is None:
        external_data = proto.ByteSize() >= PROTOBUF_LIMIT
    data_name = path.name + ".data"
    staging = Path(tempfile.mkdtemp(prefix=".onnxpress-", dir=path.parent))
    try:
        staged = staging / path.name
        if external_data:
            onnx.save_model(proto, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            staged.write_bytes(proto.SerializeToString())
        try:
            onnx.checker.check_model(str(staged))
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0]
            raise SaveError(f"{path}: the model fails the ONNX checker, not written: {first}"
                            ) from None
        if (staging / data_name).exists():  # absent when the model has no tensors at all
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
