"""`DataSource`: sample inputs for calibration, reconstruction, verification and benchmarks.

Sources: a `.npz` file or a folder of `<input>.npy` files (keys are the model's input names,
the first axis of every array indexes samples), any iterable of feed dicts (each one batch),
or random data from the model's input shapes. `check(model)` compares names, dtypes and shapes
with the model's inputs and fails with one message naming the input and what differs, before
onnxruntime would fail with a less readable one.

Array sources are sliced into batches on demand, so a source never holds more than the user
gave it; iterables are consumed lazily, one feed dict at a time.
"""

from __future__ import annotations

import itertools
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxpress.errors import DataError
from onnxpress.ir.model import Model

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (str or None for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple


def input_specs(model: Model) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are not inputs to feed).

    Raises:
        DataError: an input's element type has no numpy equivalent onnxruntime can be fed
            (bfloat16, float8, 4-bit), so no data can be given for it from Python.
    """
    return [InputSpec(t.name, _numpy_dtype(t), tuple(_dim(d) for d in (t.shape or ())))
            for t in model.graph.inputs if isinstance(t, gs.Variable)]


def _numpy_dtype(tensor: gs.Variable) -> np.dtype:
    try:
        return np.dtype(tensor.dtype)
    except TypeError:  # gs keeps types numpy lacks as their ONNX codes
        name = (onnx.TensorProto.DataType.Name(tensor.dtype).lower()
                if tensor.dtype in onnx.TensorProto.DataType.values() else str(tensor.dtype))
        raise DataError(f"input '{tensor.name}' is {name}, which onnxruntime's Python API "
                        "cannot be fed; add a Cast from a numpy type (float32) in front of "
                        "it") from None


def _dim(d) -> int | str | None:
    return d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None)


class DataSource:
    """Sample inputs for a model, iterated as feed dicts.

    Build one with `from_arrays`, `from_npz`, `from_folder`, `from_feeds`, `random`, or let
    `as_data_source` pick from what the user passed.
    """

    def __init__(self, *, arrays: Mapping[str, np.ndarray] | None = None,
                 feeds: Iterable[Mapping[str, np.ndarray]] | Callable[[], Iterable] | None = None,
                 origin: str = "data") -> None:
        self.arrays = dict(arrays) if arrays is not None else None
        self.origin = origin
        self._first: Mapping[str, np.ndarray] | None = None
        if isinstance(feeds, Iterator):
            # A one-shot iterator: keep its first batch for check() and put it back in front.
            self._first = next(feeds, None)
            feeds = itertools.chain([self._first] if self._first is not None else [], feeds)
        self._feeds = feeds
        if self.arrays is not None:
            scalars = [name for name, a in self.arrays.items() if np.ndim(a) == 0]
            if scalars:
                raise DataError(f"{origin}: {scalars} are scalars; axis 0 of every array must "
                                "index samples")
            counts = {name: len(a) for name, a in self.arrays.items()}
            if not counts or not any(counts.values()):
                raise DataError(f"{origin}: no samples")
            if len(set(counts.values())) != 1:
                raise DataError(f"{origin}: inputs have different sample counts {counts}")

    # ----------------------------------------------------------------------------------------
    # Constructors
    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], origin: str = "arrays") -> DataSource:
        """Arrays keyed by input name; axis 0 indexes samples."""
        return cls(arrays={k: np.asarray(v) for k, v in arrays.items()}, origin=origin)

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> DataSource:
        """A `.npz` file keyed by input name; axis 0 indexes samples."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            with zipfile.ZipFile(path) as archive:
                arrays = {}
                for info in archive.infolist():
                    with archive.open(info) as f:
                        _check_npy_header(f, info.file_size, f"{path}: member '{info.filename}'")
                    with archive.open(info) as f:
                        arrays[info.filename.removesuffix(".npy")] = np.lib.format.read_array(
                            f, allow_pickle=False)
        except zipfile.BadZipFile as e:
            if zipfile.is_zipfile(path):
                raise DataError(f"{path}: a corrupt .npz file ({e})") from None
            raise _not_npz(path) from None
        except (ValueError, OSError, EOFError, zipfile.LargeZipFile) as e:
            raise DataError(f"{path}: not a readable .npz file ({e})") from None
        return cls(arrays=arrays, origin=str(path))

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> DataSource:
        """A folder of `<input name>.npy` files; axis 0 indexes samples."""
        path = Path(path)
        files = sorted(path.glob("*.npy"))
        if not files:
            raise DataError(f"{path}: no .npy files in the folder")
        arrays = {}
        for file in files:
            try:
                with open(file, "rb") as f:
                    _check_npy_header(f, file.stat().st_size, str(file))
                    f.seek(0)
                    arrays[file.stem] = np.lib.format.read_array(f, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise DataError(f"{file}: not a readable .npy file ({e})") from None
        return cls(arrays=arrays, origin=str(path))

    @classmethod
    def from_feeds(cls, feeds: Iterable[Mapping[str, np.ndarray]] | Callable[[], Iterable],
                   origin: str = "feeds") -> DataSource:
        """Feed dicts, each one batch. A callable returning an iterable may be iterated many
        times; a one-shot iterator only once."""
        return cls(feeds=feeds, origin=origin)

    @classmethod
    def random(cls, model: Model, n: int = 2, *, shapes: Mapping[str, Sequence[int]] | None = None,
               seed: int = 0) -> DataSource:
        """`n` random samples shaped like the model's inputs.

        Args:
            model: The model whose inputs to imitate.
            n: Number of samples.
            shapes: Full shapes per input name, for inputs with dynamic dimensions other than
                the first (which is the sample axis and becomes 1 per sample).
            seed: Seed of the generator, so the same call gives the same data.
        """
        rng = np.random.default_rng(seed)
        arrays = {}
        for spec in input_specs(model):
            shape = tuple((shapes or {}).get(spec.name, ()))
            if not shape:
                dims = list(spec.shape)
                if dims and not isinstance(dims[0], int):
                    dims[0] = 1
                if any(not isinstance(d, int) for d in dims):
                    raise DataError(f"input '{spec.name}' has dynamic dimensions {spec.shape}; "
                                    f"give its shape with shapes={{'{spec.name}': (...)}}")
                shape = tuple(dims)
            if not shape:
                raise DataError(f"input '{spec.name}' is a scalar; give data for it")
            if math.prod(shape) * spec.dtype.itemsize > RANDOM_LIMIT:
                raise DataError(f"input '{spec.name}' declares shape {shape}, too large for "
                                "random data (over 1 GiB per sample); give real inputs")
            arrays[spec.name] = [_random(rng, spec.dtype, shape) for _ in range(n)]
        if all(a[0].shape[0] == 1 for a in arrays.values()):
            return cls(arrays={k: np.concatenate(v) for k, v in arrays.items()},
                       origin="random data")
        # A fixed batch above 1 is one sample; array sources would slice it apart.
        return cls(feeds=[{k: v[i] for k, v in arrays.items()} for i in range(n)],
                   origin="random data")

    # ----------------------------------------------------------------------------------------
    # Iteration
    def __len__(self) -> int:
        """Number of samples (array sources only)."""
        if self.arrays is None:
            raise TypeError(f"{self.origin}: the number of samples of an iterable is unknown")
        return len(next(iter(self.arrays.values())))

    def batches(self, batch_size: int = 1) -> Iterator[Feeds]:
        """Feed dicts: slices of `batch_size` samples, or the iterable's own batches."""
        if self.arrays is not None:
            total = len(self)
            for start in range(0, total, batch_size):
                yield {k: np.ascontiguousarray(v[start:start + batch_size])
                       for k, v in self.arrays.items()}
            return
        feeds = self._feeds() if callable(self._feeds) else self._feeds
        empty = True
        for feed in feeds:
            empty = False
            yield {k: np.asarray(v) for k, v in feed.items()}
        if empty:
            raise DataError(f"{self.origin}: no samples")

    def take(self, n: int, batch_size: int = 1) -> list[Feeds]:
        """The first `n` feeds of `batch_size` samples (or of the iterable's batches)."""
        taken = []
        for feed in self.batches(batch_size):
            taken.append(feed)
            if len(taken) == n:
                break
        return taken

    def check(self, model: Model) -> DataSource:
        """Raise `DataError` unless names, dtypes and shapes fit the model's inputs."""
        specs = {s.name: s for s in input_specs(model)}
        sample = self.arrays if self.arrays is not None else self._first
        if sample is None and not isinstance(self._feeds, Iterator):
            sample = next(iter(self.take(1)), None)
        if sample is None:
            raise DataError(f"{self.origin}: no samples")
        missing = sorted(set(specs) - set(sample))
        unknown = sorted(set(sample) - set(specs))
        if missing or unknown:
            raise DataError(f"{self.origin}: inputs do not match the model: missing {missing}, "
                            f"not inputs of the model {unknown} (model inputs: {sorted(specs)})")
        for name, spec in specs.items():
            array = np.asarray(sample[name])
            if array.dtype != spec.dtype:
                raise DataError(f"{self.origin}: input '{name}' is {array.dtype}, the model "
                                f"expects {spec.dtype}")
            if array.ndim != len(spec.shape):
                raise DataError(f"{self.origin}: input '{name}' has shape {array.shape}, the "
                                f"model expects rank {len(spec.shape)} {spec.shape}")
            for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
                # Axis 0 of array sources counts samples; batches take the model's size there.
                if isinstance(want, int) and got != want and not (axis == 0 and self.arrays):
                    raise DataError(f"{self.origin}: input '{name}' has shape {array.shape}, "
                                    f"the model expects {spec.shape} (axis {axis})")
        return self


#: Random data is made for inputs of at most this many bytes per sample.
RANDOM_LIMIT = 1 << 30


def _not_npz(path: Path) -> DataError:
    if path.read_bytes()[:6] == b"\x93NUMPY":
        return DataError(f"{path}: a single array, not a .npz keyed by input names; save it "
                         "with np.savez(path, **{input_name: array})")
    return DataError(f"{path}: not a .npz file (not a zip archive); save the data with "
                     "np.savez(path, **{input_name: array})")


def _check_npy_header(f, size: int, where: str) -> None:
    """Refuse, before reading any data, a member that is not a plain array of `size` bytes.

    Object arrays would need unpickling, which would let the file run code: never done. A
    header declaring more elements than the bytes present (2^40 in a few bytes) is refused
    instead of allocating what it declares.
    """
    try:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    except (ValueError, EOFError, OSError) as e:
        raise DataError(f"{where}: not a .npy array ({e or 'empty'})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: holds pickled Python objects; onnxpress never unpickles "
                        "data files: save plain numeric arrays")
    declared = math.prod(shape) * dtype.itemsize
    if declared > size:
        raise DataError(f"{where}: declares shape {shape} ({declared:,} bytes) but holds "
                        f"{size:,} bytes; the file is truncated or crafted")


def batch_size_for(model: Model, source: DataSource, requested: int) -> int:
    """The batch size to slice an array source with for `model`.

    A batch axis the model's inputs fix (all to the same size) overrides the request, since
    onnxruntime accepts no other; iterables bring their own batches.

    Raises:
        DataError: the samples cannot be cut into batches of the fixed size.
    """
    fixed = {spec.shape[0] for spec in input_specs(model) if spec.shape}
    if source.arrays is None or len(fixed) != 1:
        return requested
    (size,) = fixed
    if not isinstance(size, int):
        return requested
    if len(source) % size:
        raise DataError(f"{source.origin}: the model fixes the batch dimension at {size}, so "
                        f"the {len(source)} samples must be a multiple of {size}")
    return size


def _random(rng: np.random.Generator, dtype: np.dtype, shape: tuple) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 8, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


def as_data_source(data, model: Model | None = None) -> DataSource:
    """A checked `DataSource` from a DataSource, .npz path, folder, dict of arrays or iterable.

    Raises:
        DataError: the data cannot be read or does not fit `model`'s inputs.
    """
    if isinstance(data, DataSource):
        source = data
    elif isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_dir():
            source = DataSource.from_folder(path)
        elif path.suffix == ".npz" or path.is_file():
            source = DataSource.from_npz(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    elif isinstance(data, Mapping):
        source = DataSource.from_arrays(data)
    elif isinstance(data, Iterable) or callable(data):
        source = DataSource.from_feeds(data)
    else:
        raise DataError(f"cannot use a {type(data).__name__} as data: give a .npz path, a "
                        "folder of .npy files, a dict of arrays or an iterable of feed dicts")
    return source.check(model) if model is not None else source
