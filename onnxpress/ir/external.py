"""External data: tensor bytes kept in files beside the ``.onnx``, read safely, written atomically.

A model file is untrusted input, and so are the ``location`` strings of its external tensors.
Every tensor of a model — initializers, sparse initializers, Constant-node attributes and
every If / Loop / Scan body, at any depth — is resolved against **the model's own folder only**
(never the current directory): the location must be a relative path without ``..`` whose real
path stays inside the folder, naming a regular file with one link (no FIFO that would block, no
device, no hard link to a file elsewhere), and its ``offset`` / ``length`` must lie inside the
file. The files actually read become the model's ``source_files``, which no save may replace.

Writing is crash-consistent: ``write`` streams every large tensor into one data file inside a
private staging folder, names the data file after the SHA-256 of its content
(``<model>.<hash16>.data``), moves it beside the destination (a new name, so it never replaces
a file a loaded model reads), and only then publishes the model with a single ``os.replace``.
A crash before that rename leaves the old model and its old data untouched; after it, the new
model and its new data. Old or new, never a mix. Data files this module wrote for the same
destination that nothing references any more are removed afterwards; files of any other name
are never touched.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import onnx
from google.protobuf.message import DecodeError

from onnxpress.errors import ModelLoadError

#: Tensors at least this large go to the data file when saving with external data.
SIZE_THRESHOLD = 1024
#: Data files this module writes: ``<model file name>.<16 hex digits>.data``.
_OURS = re.compile(r"\.[0-9a-f]{16}\.data\Z")
#: Copy external data in pieces of this size, so saving never holds a whole tensor twice.
_CHUNK = 1 << 24


# --------------------------------------------------------------------------------------------
# Walking every tensor of a model
def tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, sparse parts, attributes, subgraphs."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _node_tensors(node)
    for info in proto.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for s in [*sparse, *attr.sparse_tensors]:
            yield from (s.values, s.indices)
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for body in attr.graphs:
            yield from _graph_tensors(body)


def is_external(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor's bytes live in a file instead of the proto."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL


# --------------------------------------------------------------------------------------------
# Reading
def _info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def resolve(tensor: onnx.TensorProto, folder: Path, model_path: Path) -> tuple[Path, int, int]:
    """The checked file, offset and length of an external tensor of the model in `folder`.

    Raises:
        ModelLoadError: the location escapes the folder, names something that is not a regular
            file with a single link, or the byte range is not inside the file.
    """
    info = _info(tensor)
    where = f"{model_path}: tensor '{tensor.name}'"
    location = info.get("location", "")
    pure = PurePosixPath(location.replace("\\", "/"))
    if not location or pure.is_absolute() or ".." in pure.parts or ":" in location:
        raise ModelLoadError(f"{where}: external data location {location!r} is not a plain "
                             "relative path inside the model's folder; refusing to read it")
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(root / pure))
    if root != target and root not in target.parents:
        raise ModelLoadError(f"{where}: external data {location!r} resolves outside the model's "
                             "folder; refusing to read it")
    try:
        st = os.stat(target)
    except OSError:
        raise ModelLoadError(f"{where}: its external data file {location!r} cannot be read; "
                             "keep the data file beside the model") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{where}: external data {location!r} is not a regular file")
    if st.st_nlink > 1:
        raise ModelLoadError(f"{where}: external data {location!r} is a hard link; copy the "
                             "file instead of linking it")
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else st.st_size - offset
    except ValueError:
        raise ModelLoadError(f"{where}: external data offset/length are not integers") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise ModelLoadError(f"{where}: external data range [{offset}, {offset + length}) is "
                             f"outside {location!r} ({st.st_size} bytes); the file is "
                             "truncated or does not belong to this model")
    return target, offset, length


def read_region(path: Path, offset: int, length: int) -> bytes:
    """`length` bytes of `path` from `offset`, refusing anything but a regular file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ModelLoadError(f"{path}: not a regular file")
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ModelLoadError(f"{path}: truncated while reading external data")
    return data


def load_all(proto: onnx.ModelProto, model_path: Path) -> frozenset[Path]:
    """Read every external tensor of `proto` into memory, from `model_path`'s folder only.

    Returns:
        The data files read (real paths), i.e. the files a save must never replace.
    """
    folder = model_path.parent
    read: set[Path] = set()
    for tensor in tensors(proto):
        if not is_external(tensor):
            continue
        path, offset, length = resolve(tensor, folder, model_path)
        tensor.raw_data = read_region(path, offset, length)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
        read.add(path)
    return frozenset(read)


def referenced(model_path: Path, max_size: int | None = 64 << 20) -> set[Path]:
    """Real paths of the data files an existing model file references (empty if unreadable).

    Only files up to `max_size` bytes are parsed (None: any): a model with external data
    has a small ``.onnx``, and a cleanup never needs to parse a large one.
    """
    try:
        if max_size is not None and model_path.stat().st_size > max_size:
            return set()
        proto = onnx.ModelProto.FromString(model_path.read_bytes())
    except (OSError, DecodeError, RuntimeWarning, ValueError):
        return set()  # a file we cannot parse references nothing we could clean up
    folder = Path(os.path.realpath(model_path.parent))
    found = set()
    for tensor in tensors(proto):
        location = _info(tensor).get("location") if is_external(tensor) else None
        if location and ".." not in PurePosixPath(location).parts:
            found.add(Path(os.path.realpath(folder / location)))
    return found


# --------------------------------------------------------------------------------------------
# Writing
def externalize(proto: onnx.ModelProto, staging: Path, name: str) -> Path | None:
    """Move the bytes of every tensor of at least `SIZE_THRESHOLD` bytes into one data file.

    The file is first written inside `staging` and then renamed there to
    ``<name>.<hash16>.data`` (its content's SHA-256), which the tensors reference.

    Returns:
        The staged data file, or None when no tensor is large enough.
    """
    partial = staging / "partial.data"
    digest = hashlib.sha256()
    moved: list[tuple[onnx.TensorProto, int, int]] = []
    offset = 0
    with open(partial, "wb") as f:
        for tensor in tensors(proto):
            if is_external(tensor) or not tensor.HasField("raw_data"):
                continue
            data = tensor.raw_data
            if len(data) < SIZE_THRESHOLD:
                continue
            padding = -offset % 64  # aligned, so runtimes can memory-map the tensors
            f.write(b"\0" * padding)
            digest.update(b"\0" * padding)
            offset += padding
            for start in range(0, len(data), _CHUNK):
                piece = data[start:start + _CHUNK]
                f.write(piece)
                digest.update(piece)
            moved.append((tensor, offset, len(data)))
            offset += len(data)
            tensor.ClearField("raw_data")
        f.flush()
        os.fsync(f.fileno())
    if not moved:
        partial.unlink()
        return None
    final = staging / f"{name}.{digest.hexdigest()[:16]}.data"
    os.replace(partial, final)
    for tensor, start, length in moved:
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", final.name), ("offset", str(start)),
                           ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
    return final


def is_ours(path: Path, model_name: str) -> bool:
    """Whether `path` is a data file `externalize` writes for a model called `model_name`."""
    name = path.name
    return name.startswith(model_name + ".") and bool(_OURS.search(name)) and len(name) == len(
        model_name) + 22


def stale_data_files(destination: Path, keep: Iterable[Path]) -> list[Path]:
    """Our data files for `destination` that its current model does not reference.

    They are left by an older save (whose model was replaced) or by a save killed between its
    two renames; nothing of ours refers to them. `keep` (files a loaded model reads) survive.
    """
    folder = destination.parent
    kept = {Path(os.path.realpath(p)) for p in keep} | referenced(destination)
    return [p for p in folder.iterdir()
            if is_ours(p, destination.name) and Path(os.path.realpath(p)) not in kept
            and p.is_file() and not p.is_symlink()]


def fsync_folder(folder: Path) -> None:
    """Make renames in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
