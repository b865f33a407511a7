"""Reading and writing models: the only place onnxpress touches model files.

`load` accepts what users hold — a path, serialized bytes, a ModelProto, a gs.Graph or a
`Model` — and always returns a fresh `Model` that shares nothing with its argument. Errors
name the file and say what is wrong with it. A model loaded from a file does not read its
weights: they are memory-mapped from the file (or its external data, resolved against its
folder only) when a pass first reads them, see `onnxpress.ir.external`.

`save` is atomic and crash-consistent: the model (and its external data, see
`onnxpress.ir.external`) is written into a private staging folder beside the destination,
checked there with the full ONNX checker, and published with one `os.replace`. A crash, a
SIGTERM or a checker failure leaves the destination as it was; a staging folder left by a
SIGKILL is removed by the next save into that folder. `save` refuses to replace the file the
model was loaded from (unless asked), any file it reads (its external data), folders, and
existing files that are not regular files (devices, FIFOs). `check_destination` is the same
guard for every other file onnxpress writes.
"""

from __future__ import annotations

import mmap
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from onnxpress.errors import ModelLoadError, SaveError
from onnxpress.ir import external, fidelity
from onnxpress.ir.model import Model

#: Protobuf cannot serialize a message over 2 GiB; past this the weights go to external data.
PROTOBUF_LIMIT = 2**31 - 1
#: Hidden folder beside the destination where a save is staged: ``.onnxpress-<pid>-<random>``.
STAGING_PREFIX = ".onnxpress-"

ModelLike = Model | onnx.ModelProto | gs.Graph | bytes | str | os.PathLike


def load(model: ModelLike) -> Model:
    """Return a new `Model` from a path, bytes, ModelProto, gs.Graph or Model.

    The argument is never modified and the result shares no objects with it. External data
    is read from the model file's own folder only (see `onnxpress.ir.external`); a model
    given as bytes or a ModelProto must not reference external files, since it has no folder.

    Raises:
        ModelLoadError: the file is missing, is not an ONNX model, fails the checker, or its
            external data is missing, outside its folder or out of bounds.
    """
    if isinstance(model, Model):
        return model.copy()
    if isinstance(model, gs.Graph):
        proto = gs.export_onnx(model.copy(), do_type_check=False)
        if model.ir_version is None:
            # gs would stamp its own (newer) IR version; use the one onnx pairs with the opset.
            proto.ir_version = _ir_version_for(proto)
        return _from_proto(proto, "the gs.Graph")
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return _from_proto(proto, "the ModelProto")
    if isinstance(model, bytes | bytearray):
        return _from_proto(_parse(bytes(model), "the bytes given"), "the bytes given")
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if path.is_dir():
            raise ModelLoadError(f"{path}: is a folder, not a model file; give the .onnx file")
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file")
        if not path.is_file():
            raise ModelLoadError(f"{path}: not a regular file (a device, FIFO or socket)")
        proto = _parse(_lifted(path), str(path))
        sparse_files = external.inline_sparse(proto, path)
        for tensor in external.tensors(proto):  # every location checked before anything runs
            if external.is_external(tensor):
                external.resolve(tensor, path.parent, path)
        loaded = _from_proto(proto, str(path), source=path.resolve())
        data_files = external.attach(loaded.graph, path)
        loaded.source_files = frozenset({Path(os.path.realpath(path)), *data_files,
                                         *sparse_files})
        return loaded
    raise ModelLoadError(
        f"cannot load a {type(model).__name__}: give a path, bytes, onnx.ModelProto, "
        "gs.Graph or onnxpress.Model")


def _lifted(path: Path) -> bytes:
    """The model file's bytes with its large weights replaced by references into the file."""
    with open(path, "rb") as f:
        if not os.fstat(f.fileno()).st_size:
            return b""
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                return external.lift(mapped, path.name)
            except ModelLoadError as e:
                raise ModelLoadError(f"{path}: {e}") from None


def _from_proto(proto: onnx.ModelProto, what: str, source: Path | None = None) -> Model:
    """Check the proto and import it; only a model loaded from a file may keep external data
    (resolved against its folder)."""
    fidelity.densify_sparse(proto, what)
    try:
        return Model.from_onnx(_checked(proto, what), source=source)
    except ModelLoadError as e:
        raise ModelLoadError(f"{what}: {e}") from None


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
            external.check(proto, full_check=False)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelLoadError(f"{what}: invalid ONNX model: {first}") from None
    return proto


def _ir_version_for(proto: onnx.ModelProto) -> int:
    """The oldest IR version that supports the model's opsets (what onnxruntime accepts)."""
    return onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)


def check_destination(path: str | os.PathLike,
                      protected: Iterable[tuple[str | os.PathLike, str]] = ()) -> Path:
    """Raise `SaveError` unless writing a new file at `path` is safe; return the path.

    Refused: a folder, an existing non-regular file (a device such as /dev/null, a FIFO, a
    socket: replacing it with a regular file would break the system), and any of the
    `protected` files — ``(path, what it is)`` pairs such as the input model, its external
    data or the data set — however spelled (symlinks and hard links included).
    """
    path = Path(path)
    if path.is_dir():
        raise SaveError(f"{path}: is a folder; give a file name")
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG  # a dangling symlink: replacing the link itself is harmless
        if not stat.S_ISREG(mode):
            raise SaveError(f"{path}: exists and is not a regular file (a device, FIFO or "
                            "socket); refusing to replace it")
    for other, what in protected:
        if _same_file(path, Path(other)):
            raise SaveError(f"{path}: is {what}; refusing to overwrite it, write elsewhere")
    return path


def external_files(path: str | os.PathLike) -> frozenset[Path]:
    """The data files the model file at `path` references, for guarding writes before loading.

    Unchecked (loading checks them); a file that cannot be parsed references nothing.
    """
    return frozenset(external.referenced(Path(path), max_size=None))


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def save(model: Model, path: str | os.PathLike, *, overwrite: bool = False,
         external_data: bool | None = None) -> Path:
    """Write `model` to `path` atomically and return the path.

    Args:
        model: The model to write; it records its pipeline in metadata_props.
        path: Destination .onnx file. Its folder must exist.
        overwrite: Allow writing over the .onnx file the model was loaded from (never over
            its external data files, which the model may still read).
        external_data: Store large tensors in ``<name>.<hash16>.data`` beside the file. None
            (default) does so only when the model would exceed protobuf's 2 GB limit.

    Raises:
        SaveError: the destination is a source file, a folder or not a regular file; the model
            fails the ONNX checker; or the file cannot be written (disk full, read-only).
    """
    path = Path(path)
    if model.source is not None and _same_file(path, model.source) and not overwrite:
        raise SaveError(f"{path}: refusing to overwrite the model's source file; "
                        "write elsewhere or pass overwrite=True")
    if not path.parent.is_dir():
        raise SaveError(f"{path}: folder {path.parent} does not exist")
    check_destination(path, [(f, "a file the model reads (its external data)")
                             for f in model.source_files
                             if model.source is None or not _same_file(f, model.source)])
    proto = model.to_onnx(weights=False)  # large tensors are stubs, streamed when written
    try:
        external.check(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise SaveError(f"{path}: the model fails the ONNX checker, not written: "
                        f"{_checker_message(e, proto)}") from None
    if external_data is None:
        external_data = proto.ByteSize() + external.deferred_bytes(proto) >= PROTOBUF_LIMIT
    _remove_abandoned_staging(path.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-",
                                        dir=path.parent))
    except OSError as e:
        raise SaveError(f"{path}: cannot write there ({e.strerror})") from None
    try:
        _publish(proto, path, staging, external_data, model.source_files)
    except OSError as e:
        raise SaveError(f"{path}: cannot write it ({e.strerror or e}); the previous file, if "
                        "any, is unchanged") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _publish(proto: onnx.ModelProto, path: Path, staging: Path, external_data: bool,
             keep: frozenset[Path]) -> None:
    """Write in `staging`, check, then move the data file and finally the model into place."""
    staged = staging / path.name
    data = external.externalize(proto, staging, path.name) if external_data else None
    with open(staged, "wb") as f:
        if external_data:
            f.write(proto.SerializeToString())
        else:
            external.write_inline(proto, f)
        f.flush()
        os.fsync(f.fileno())
    if data is not None:
        published = path.parent / data.name
        # The name is the content's hash: an existing file of that name holds these bytes.
        if not any(_same_file(published, k) for k in keep):
            os.replace(data, published)
    os.replace(staged, path)  # the single step that publishes the new model
    external.fsync_folder(path.parent)
    for stale in external.stale_data_files(path, keep):
        stale.unlink(missing_ok=True)


def _checker_message(error: Exception, proto: onnx.ModelProto) -> str:
    """The checker's first line, plus the tensors it is about when it does not name them.

    The checker reports a graph input or output without a type or shape as "Field 'shape' of
    'type' is required but missing", without the tensor's name.
    """
    first = str(error).strip().splitlines()[0]
    if "is required but missing" in first:
        untyped = [v.name for v in [*proto.graph.input, *proto.graph.output]
                   if not v.type.HasField("tensor_type") or not v.type.tensor_type.elem_type
                   or not v.type.tensor_type.HasField("shape")]
        if untyped:
            first += f" (graph inputs/outputs without a full type: {untyped})"
    return first


def _remove_abandoned_staging(folder: Path) -> None:
    """Remove staging folders left by saves whose process is gone (killed mid-save)."""
    for entry in folder.glob(f"{STAGING_PREFIX}*-*"):
        pid = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if (pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))
                and entry.is_dir() and not entry.is_symlink()):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True
