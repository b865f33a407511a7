"""Tensor bytes outside the proto: read safely and lazily, written atomically and streamed.

A model file is untrusted input, and so are the ``location`` strings of its external tensors.
Every tensor of a model — initializers, sparse initializers, Constant-node attributes and
every If / Loop / Scan body, at any depth — is resolved against **the model's own folder only**
(never the current directory): the location must be a relative path without ``..`` whose real
path stays inside the folder, naming a regular file with one link (no FIFO that would block, no
device, no hard link to a file elsewhere), and its ``offset`` / ``length`` must lie inside the
file and match the tensor's shape. The files actually read become the model's
``source_files``, which no save may replace.

Weights are never parsed into a proto. `lift` scans the protobuf wire format of the model file
and turns every ``raw_data`` of 1 KiB or more into a reference to the model file itself (at the
byte offset where the data sits), so inline and external weights alike become `Stored` values:
a file region memory-mapped copy-on-write when a pass first reads it (writes stay private).
Exports made with ``weights=False`` carry *stubs* — external references named
``onnxpress-values:<n>`` standing for a `Stored` region or an `InMemory` array a pass made —
so shape inference, checks and copies never hold the weights twice, and no message ever
approaches protobuf's 2 GB limit. `materialize` fills stubs in for onnxruntime.

Writing is crash-consistent: ``externalize`` streams every large tensor into one data file
inside a private staging folder, names it after the SHA-256 of its content
(``<model>.<hash16>.data``), and the caller moves it beside the destination (a new name, so it
never replaces a file a loaded model reads) and only then publishes the model with a single
``os.replace``. A crash before that rename leaves the old model and its old data untouched;
after it, the new model and its new data. Old or new, never a mix. Data files this module
wrote for the same destination that nothing references any more are removed afterwards; files
of any other name are never touched. `write_inline` streams a single-file model instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import mmap
import os
import re
import stat
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
import onnx_graphsurgeon as gs
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
    if (not location or pure.is_absolute() or ".." in pure.parts or location.startswith(TOKEN)
            or re.match(r"[A-Za-z]:", location)):
        raise ModelLoadError(f"{where}: external data location {location!r} is not a plain "
                             "relative path inside the model's folder; refusing to read it")
    itself = Path(os.path.realpath(model_path))
    if location == model_path.name:
        target = itself  # weights inside the model file (see `lift`), wherever it links to
    else:
        root = Path(os.path.realpath(folder))
        target = Path(os.path.realpath(root / pure))
        if root != target and root not in target.parents:
            raise ModelLoadError(f"{where}: external data {location!r} resolves outside the "
                                 "model's folder; refusing to read it")
    try:
        st = os.stat(target)
    except OSError:
        raise ModelLoadError(f"{where}: its external data file {location!r} cannot be read; "
                             "keep the data file beside the model") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{where}: external data {location!r} is not a regular file")
    if st.st_nlink > 1 and target != itself:
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
    expected = expected_bytes(tensor)
    if expected is not None and expected != length:
        raise ModelLoadError(f"{where}: holds {length} bytes of data, its shape "
                             f"{list(tensor.dims)} needs {expected}")
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


def inline_sparse(proto: onnx.ModelProto, model_path: Path) -> frozenset[Path]:
    """Read the external parts of sparse tensors into memory (they are densified on load).

    Returns:
        The data files read (real paths), i.e. the files a save must never replace.
    """
    folder = model_path.parent
    read: set[Path] = set()
    sparse = [part for g in [proto.graph] for s in g.sparse_initializer
              for part in (s.values, s.indices)]
    sparse += [part for t in _sparse_attributes(proto.graph) for part in (t.values, t.indices)]
    for tensor in sparse:
        if not is_external(tensor):
            continue
        path, offset, length = resolve(tensor, folder, model_path)
        tensor.raw_data = read_region(path, offset, length)
        tensor.ClearField("data_location")
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


def _sparse_attributes(graph: onnx.GraphProto) -> Iterator[onnx.SparseTensorProto]:
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor
            yield from attr.sparse_tensors
            for body in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _sparse_attributes(body)


# --------------------------------------------------------------------------------------------
# Writing
def externalize(proto: onnx.ModelProto, staging: Path, name: str) -> Path | None:
    """Move the bytes of every stub and of every tensor of at least `SIZE_THRESHOLD` bytes
    into one data file.

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
            source = source_of(tensor)
            if source is not None:
                pieces, length = source.chunks(), source.length
            elif (not is_external(tensor) and tensor.HasField("raw_data")
                  and len(tensor.raw_data) >= SIZE_THRESHOLD):
                pieces, length = [tensor.raw_data], len(tensor.raw_data)
            else:
                continue
            padding = -offset % 64  # aligned, so runtimes can memory-map the tensors
            f.write(b"\0" * padding)
            digest.update(b"\0" * padding)
            offset += padding
            for piece in pieces:
                f.write(piece)
                digest.update(piece)
            moved.append((tensor, offset, length))
            offset += length
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


# --------------------------------------------------------------------------------------------
# Lifting inline weights out of a model file, without parsing them
#: Which fields of which message hold the messages that may contain large tensors
#: (ModelProto.graph; GraphProto.initializer / node; NodeProto.attribute; AttributeProto t,
#: g, tensors, graphs). TensorProto.raw_data is field 9.
_SCHEMA = {"model": {7: "graph"}, "graph": {5: "tensor", 1: "node"}, "node": {5: "attr"},
           "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph"}, "tensor": {}}
_RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 9, 13, 14


def _read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ModelLoadError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def lift(buf, location: str) -> bytes:
    """The serialized model in `buf` with every large ``raw_data`` replaced by a reference.

    Each TensorProto whose raw_data has at least `SIZE_THRESHOLD` bytes loses it and instead
    refers, as external data, to `location` (the model file itself) at the byte offset where
    the data sits in `buf`. So a 400 MB model is read without copying its weights: they are
    memory-mapped from the file when a pass reads them. Submessages too small to hold such a
    tensor are copied verbatim, so the scan touches little more than the headers.

    Raises:
        ModelLoadError: the bytes are not protobuf (truncated, or an unknown wire type).
    """
    try:
        return _lift(buf, 0, len(buf), "model", location)
    except (ModelLoadError, IndexError) as e:
        raise ModelLoadError(f"not an ONNX model (protobuf decode failed: {e})") from None


def _lift(buf, start: int, end: int, kind: str, location: str) -> bytes:
    out = bytearray()
    pos = start
    raw: tuple[int, int] | None = None
    children = _SCHEMA[kind]
    while pos < end:
        field_start = pos
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, body = _read_varint(buf, pos, end)
            pos = body + length
            if pos > end:
                raise ModelLoadError("truncated field")
            if kind == "tensor" and number == _RAW_DATA and length >= SIZE_THRESHOLD:
                raw = (body, length)
                continue
            if number in children and length >= SIZE_THRESHOLD:
                out += _field(number, _lift(buf, body, pos, children[number], location))
                continue
        else:
            raise ModelLoadError(f"wire type {wire}")
        if pos > end:
            raise ModelLoadError("truncated field")
        out += buf[field_start:pos]
    if raw is not None:
        out += _varint(_DATA_LOCATION << 3) + _varint(onnx.TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", str(raw[0])),
                           ("length", str(raw[1]))):
            entry = _field(1, key.encode()) + _field(2, value.encode())
            out += _field(_EXTERNAL_DATA, entry)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Values that stay on disk (or in one array) until read
#: Location of an exported stub: the values object it stands for, by number.
TOKEN = "onnxpress-values:"
_SOURCES: weakref.WeakValueDictionary[str, _Deferred] = weakref.WeakValueDictionary()
_COUNTER = itertools.count()
_PACKED = frozenset({onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
                     getattr(onnx.TensorProto, "FLOAT4E2M1", -1)})


def expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of raw data `tensor`'s dims and type call for (None for strings)."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    count = math.prod(tensor.dims)
    if tensor.data_type in _PACKED:
        return (count + 1) // 2
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


class _File:
    """An open, checked regular file; reads keep seeing this inode even if the path is
    replaced later (a save over the source)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise ModelLoadError(f"{path}: not a regular file")

    def map(self, offset: int, length: int, access: int) -> tuple[mmap.mmap, int]:
        """A mapping of [offset, offset + length) and where the range starts in it."""
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        return mmap.mmap(self.fd, length + offset - start, offset=start,
                         access=access), offset - start

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.fd)


class _Deferred(gs.ir.tensor.LazyValues):
    """Values whose bytes are produced on demand; exported as a stub naming this object."""

    def __init__(self, stub: onnx.TensorProto, length: int) -> None:
        self.token = f"{TOKEN}{next(_COUNTER)}"
        tensor = onnx.TensorProto()
        tensor.CopyFrom(stub)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", self.token), ("offset", "0"), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
        super().__init__(tensor)
        self.length = length
        _SOURCES[self.token] = self

    def chunks(self) -> Iterator[memoryview | bytes]:
        """The raw (little-endian ONNX) bytes, in pieces of at most `_CHUNK`."""
        raise NotImplementedError


class Stored(_Deferred):
    """A tensor's bytes in a file region: memory-mapped copy-on-write on first access."""

    def __init__(self, stub: onnx.TensorProto, file: _File, offset: int, length: int) -> None:
        super().__init__(stub, length)
        self.file, self.offset = file, offset

    def load(self) -> np.ndarray:
        """The values: a private (copy-on-write) mapping, so writes never reach the file."""
        tensor = self.tensor
        if self.length == 0 or tensor.data_type in _PACKED or tensor.data_type in (
                onnx.TensorProto.BFLOAT16,) or tensor.data_type > onnx.TensorProto.UINT64:
            full = onnx.TensorProto()
            full.CopyFrom(tensor)
            full.ClearField("data_location")
            del full.external_data[:]
            full.raw_data = b"".join(bytes(c) for c in self.chunks())
            return np.array(onnx.numpy_helper.to_array(full))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        mapped, start = self.file.map(self.offset, self.length, mmap.ACCESS_COPY)
        return np.frombuffer(mapped, dtype.newbyteorder("<"), math.prod(tensor.dims),
                             start).reshape(tuple(tensor.dims))

    def chunks(self) -> Iterator[memoryview | bytes]:
        """The bytes of the region, read through a read-only mapping."""
        if not self.length:
            return
        mapped, start = self.file.map(self.offset, self.length, mmap.ACCESS_READ)
        with contextlib.closing(mapped):
            for at in range(start, start + self.length, _CHUNK):
                yield mapped[at:min(at + _CHUNK, start + self.length)]  # a copy: bounded


class InMemory(_Deferred):
    """A numpy array a pass made, exported as a stub so it is written without a copy."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
        stub = onnx.TensorProto(name=name, dims=array.shape,
                                data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
        super().__init__(stub, self.array.nbytes)

    def load(self) -> np.ndarray:
        """The array itself (gs keeps it as the constant's values again)."""
        return self.array

    def chunks(self) -> Iterator[memoryview | bytes]:
        """The array's bytes."""
        flat = memoryview(self.array.reshape(-1).view(np.uint8))
        for at in range(0, len(flat), _CHUNK):
            yield flat[at:at + _CHUNK]


def _constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    """Every distinct constant of every scope: node inputs, attribute values, outputs."""
    from onnxpress.ir.scopes import iter_graphs

    seen: set[int] = set()
    for g in iter_graphs(graph):
        candidates = [t for n in g.nodes for t in n.inputs] + list(g.outputs)
        candidates += [v for n in g.nodes for v in n.attrs.values() if isinstance(v, gs.Constant)]
        for t in candidates:
            if isinstance(t, gs.Constant) and id(t) not in seen:
                seen.add(id(t))
                yield t


def attach(graph: gs.Graph, model_path: Path) -> frozenset[Path]:
    """Make every external constant of `graph` read lazily from its checked file region.

    Returns:
        The real paths of the files the model reads.
    """
    files: dict[Path, _File] = {}
    for constant in _constants(graph):
        values = constant._values
        if not isinstance(values, gs.ir.tensor.LazyValues) or isinstance(values, _Deferred):
            continue
        if not is_external(values.tensor):
            continue
        path, offset, length = resolve(values.tensor, model_path.parent, model_path)
        if path not in files:
            files[path] = _File(path)
        constant._values = Stored(values.tensor, files[path], offset, length)
        constant.data_location = None
    return frozenset(files)


def defer_arrays(graph: gs.Graph) -> None:
    """Wrap large plain-numeric arrays as `InMemory`, so exports carry stubs, not copies."""
    for constant in _constants(graph):
        values = constant._values
        if (isinstance(values, np.ndarray) and values.nbytes >= SIZE_THRESHOLD
                and values.dtype.kind in "biuf" and values.dtype.name not in (
                    "int4", "uint4", "float4_e2m1fn")):
            constant._values = InMemory(constant.name, values)


def source_of(tensor: onnx.TensorProto) -> _Deferred | None:
    """The values object an exported stub stands for, or None for another tensor."""
    if not is_external(tensor):
        return None
    location = _info(tensor).get("location", "")
    return _SOURCES.get(location) if location.startswith(TOKEN) else None


def materialize(proto: onnx.ModelProto, only: Iterable[onnx.TensorProto] | None = None) -> None:
    """Fill every stub of `proto` (or those in `only`) with its bytes: a self-contained proto."""
    for tensor in (tensors(proto) if only is None else only):
        source = source_of(tensor)
        if source is not None:
            tensor.raw_data = b"".join(bytes(c) for c in source.chunks())
            tensor.ClearField("data_location")
            del tensor.external_data[:]


def reattach(graph: gs.Graph) -> None:
    """After importing an export with stubs: each stub gets its own values again (a file region
    is shared read-only; an array is copied, so the two models share no array)."""
    for constant in _constants(graph):
        values = constant._values
        if not isinstance(values, gs.ir.tensor.LazyValues) or isinstance(values, _Deferred):
            continue
        source = source_of(values.tensor)
        if isinstance(source, Stored):
            constant._values = Stored(source.tensor, source.file, source.offset, source.length)
        elif isinstance(source, InMemory):
            constant._values = np.array(source.array, copy=True)
        else:
            continue
        constant.data_location = None


# --------------------------------------------------------------------------------------------
# Checking a model whose weights are stubs
def check(proto: onnx.ModelProto, *, full_check: bool) -> None:
    """Run the ONNX checker on `proto` without its weights' bytes.

    The checker verifies that external files exist, relative to the current directory when
    given a proto; so stubs are pointed at one sparse file in a private folder (it occupies no
    disk) and the checker runs on that copy by path.

    Raises:
        onnx.checker.ValidationError, onnx.shape_inference.InferenceError: as the checker.
    """
    if not any(is_external(t) for t in tensors(proto)):
        onnx.checker.check_model(proto, full_check=full_check)
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    longest = 0
    for tensor in tensors(copy):
        if is_external(tensor):
            length = int(_info(tensor).get("length", "0") or 0)
            longest = max(longest, length)
            del tensor.external_data[:]
            for key, value in (("location", "stub"), ("offset", "0"), ("length", str(length))):
                tensor.external_data.add(key=key, value=value)
    with tempfile.TemporaryDirectory(prefix="onnxpress-check-") as folder:
        stub = Path(folder) / "stub"
        with open(stub, "wb") as f:
            f.truncate(longest)
        path = Path(folder) / "model.onnx"
        path.write_bytes(copy.SerializeToString())
        onnx.checker.check_model(str(path), full_check=full_check)


def deferred_bytes(proto: onnx.ModelProto) -> int:
    """Bytes the stubs of `proto` stand for."""
    return sum(s.length for t in tensors(proto) if (s := source_of(t)) is not None)


def write_inline(proto: onnx.ModelProto, f) -> None:
    """Serialize `proto` to the open file `f`, streaming the bytes of its stubs.

    Main-graph initializers that are stubs are written after the rest of the model as extra
    occurrences of ``ModelProto.graph`` holding one initializer each (protobuf merges repeated
    occurrences of a message field, so this is the same model), never as one big message.
    Stubs elsewhere (Constant attributes, subgraphs) are filled in first.
    """
    graph = proto.graph
    streamed = [t for t in graph.initializer if source_of(t) is not None]
    kept = [t for t in graph.initializer if source_of(t) is None]
    heads = []
    for tensor in streamed:
        source = source_of(tensor)
        head = onnx.TensorProto()
        head.CopyFrom(tensor)
        head.ClearField("data_location")
        del head.external_data[:]
        heads.append((head.SerializeToString(), source))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    materialize(proto)  # what is left: stubs nested in nodes
    f.write(proto.SerializeToString())
    for head, source in heads:
        raw = _varint(_RAW_DATA << 3 | 2) + _varint(source.length)
        tensor_len = len(head) + len(raw) + source.length
        inner = _varint(5 << 3 | 2) + _varint(tensor_len)
        f.write(_varint(7 << 3 | 2) + _varint(len(inner) + tensor_len) + inner + head + raw)
        for chunk in source.chunks():
            f.write(chunk)
