"""Run a probe copy of a model over data and stream chosen tensors into observers.

onnxruntime returns only graph outputs, so the tensors to observe become extra outputs of a
*probe*: an in-memory copy of the model (the caller's model is never touched and nothing is
written to disk, unlike onnxruntime's ``augmented_model.onnx``). The probe runs with graph
optimizations off, so fusions neither remove the tensors nor change their values. Graph inputs
are observed straight from the feeds (as outputs onnxruntime would hand back the feed's own
buffer, microsoft/onnxruntime#21922, and running the model for them is wasted work).

Memory: each batch's fetched tensors go to their observers and are dropped before the next
batch, so the peak is one batch of fetched tensors plus the observers' fixed state —
O(tensors × bins), never O(dataset) (onnxruntime's histogram calibrators keep every output of
every batch). ``max_outputs=K`` splits the tensors into ``ceil(T / K)`` groups and runs one probe
per group, each over all the data, trading inference passes for a smaller per-batch peak.

Every batch is checked against the model's inputs (names, dtypes, shapes) and for NaN/inf
before it runs, so bad data fails with one message naming the source, batch and input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import DataError
from onnxpress.ir import analyses
from onnxpress.ir.model import Model
from onnxpress.runtime.data import (
    DataSource,
    Feeds,
    as_data_source,
    batch_size_for,
    input_specs,
)
from onnxpress.runtime.session import session
from onnxpress.targets import Target

if TYPE_CHECKING:
    import onnxruntime as ort


@dataclass(frozen=True)
class Collected:
    """What a collection run read.

    Attributes:
        samples: Samples per pass over the data (axis 0 of the inputs).
        batches: Batches per pass over the data.
        probes: Probe models run (passes over the data).
    """

    samples: int
    batches: int
    probes: int


def collect(model: Model, tensors: Sequence[str], data: Any, observers: Mapping[str, Any], *,
            target: Target | str = "cpu", batch_size: int = 32, max_outputs: int | None = None,
            max_bytes: int | None = None,
            progress: Callable[..., Callable[[int], None]] | None = None) -> Collected:
    """Feed every batch of `data` through `model` and each tensor in `tensors` to its observer.

    Args:
        model: The model; not modified.
        tensors: Names of activations of the main graph (graph inputs included).
        data: A `DataSource`, or anything `as_data_source` accepts.
        observers: Tensor name → observer with ``update(batch)``; one for every tensor.
        target: Where onnxruntime runs the probe.
        batch_size: Samples per batch for array sources (iterables bring their own batches).
            A model whose inputs fix the batch dimension gets that size instead.
        max_outputs: At most this many tensors per probe (None: one probe for all).
        max_bytes: Bound on the bytes of tensors one probe run fetches (None: no bound). The
            fetched bytes per sample are measured on one sample of an array source first;
            then the batch shrinks, and tensors are split over several probes when a single
            sample's exceed the bound (`plan_memory`). Iterables keep their own batches.
        progress: ``progress(description, total)`` returning ``advance(n)``
            (`onnxpress.passes.Context.progress`); advanced once per batch.

    Returns:
        The samples, batches and probes run.

    Raises:
        ValueError: a tensor is not in the main graph or lacks an observer, or `batch_size` /
            `max_outputs` is not positive.
        TypeError: a tensor is an initializer, not an activation.
        DataError: the data is empty, does not fit the model's inputs, holds NaN/inf, yields
            different samples on another pass, or an observed tensor holds NaN/inf.
    """
    tensors = list(dict.fromkeys(tensors))
    if batch_size < 1 or (max_outputs is not None and max_outputs < 1):
        raise ValueError(f"batch_size ({batch_size}) and max_outputs ({max_outputs}) must be "
                         "positive")
    _check_tensors(model, tensors, observers)
    # Up front so bad data fails before any probe is built; batches are checked again below.
    source = as_data_source(data, model)
    batch_size = batch_size_for(model, source, batch_size)
    inputs = {spec.name for spec in input_specs(model)}
    step = max_outputs or max(len(tensors), 1)
    groups = [tensors[i:i + step] for i in range(0, len(tensors), step)] or [[]]
    if max_bytes is not None and source.arrays is not None:
        sizes = _bytes_per_sample(model, [t for t in tensors if t not in inputs], source,
                                  target)
        batch_size, groups = plan_memory(tensors, sizes, max_bytes, batch_size, groups)
        batch_size = batch_size_for(model, source, batch_size)
    total = (math.ceil(len(source) / batch_size) * len(groups) if source.arrays is not None
             else None)
    advance = (progress(f"collect {len(tensors)} tensors", total) if progress is not None
               else lambda n=1: None)
    first: tuple[int, int] | None = None
    for number, group in enumerate(groups):
        fetch = [name for name in group if name not in inputs]
        sess = session(_probe(model, fetch), target, optimize=False) if fetch else None
        try:
            counted = _stream(sess, fetch, [name for name in group if name in inputs],
                              observers, source, model, batch_size, advance)
        except DataError as e:
            if first is None:
                raise
            raise DataError(f"{e} (pass {number + 1} of {len(groups)}: max_outputs reads the "
                            "data once per probe, and a one-shot iterator cannot be read "
                            "again: give arrays, a file or a callable returning a fresh "
                            "iterable)") from None
        if first is not None and counted != first:
            raise DataError(f"{source.origin}: gave {first[0]} samples in {first[1]} batches on "
                            f"the first pass and {counted[0]} in {counted[1]} on pass "
                            f"{number + 1}; max_outputs needs the same data on every pass")
        first = counted
    return Collected(first[0], first[1], len(groups))


def _stream(sess: ort.InferenceSession | None, fetch: list[str], fed: Sequence[str],
            observers: Mapping[str, Any], source: DataSource, model: Model, batch_size: int,
            advance: Callable[[int], None]) -> tuple[int, int]:
    """One pass over the data; returns (samples, batches).

    Observers of `fetch` get the probe's outputs, observers of `fed` (graph inputs) the feeds.
    """
    samples = batches = 0
    for feeds in _checked_batches(source, model, batch_size):
        fetched = sess.run(fetch, feeds) if sess is not None else []
        try:
            for name, value in zip(fetch, fetched, strict=True):
                observers[name].update(value)
            for name in fed:
                observers[name].update(feeds[name])
        except DataError as e:
            raise DataError(f"{source.origin}, batch {batches}: {e}") from None
        del fetched  # the batch's outputs must not outlive it
        samples += _samples(feeds)
        batches += 1
        advance(1)
    return samples, batches


def plan_memory(tensors: Sequence[str], sizes: Mapping[str, float], max_bytes: int,
                batch_size: int, groups: list[list[str]]) -> tuple[int, list[list[str]]]:
    """Batch size and probe groups that keep one run's fetched bytes under `max_bytes`.

    With ``B`` bytes per sample over a group, a batch holds ``max_bytes // B`` samples (at
    least 1, at most `batch_size`). When even one sample of a group is over the bound the
    tensors are packed greedily into groups of at most `max_bytes` per sample (a tensor
    larger than that alone gets a group of its own: one sample of it is the floor).
    """
    per_sample = max((sum(sizes.get(t, 0.0) for t in g) for g in groups), default=0.0)
    if per_sample > max_bytes:
        groups, current, used = [], [], 0.0
        for name in tensors:
            size = sizes.get(name, 0.0)
            if current and used + size > max_bytes:
                groups.append(current)
                current, used = [], 0.0
            current.append(name)
            used += size
        groups.append(current)
        per_sample = max(sum(sizes.get(t, 0.0) for t in g) for g in groups)
    fitting = int(max_bytes // per_sample) if per_sample else batch_size
    return max(1, min(batch_size, fitting)), groups


def _bytes_per_sample(model: Model, fetch: Sequence[str], source: DataSource,
                      target: Target | str) -> dict[str, float]:
    """Bytes per sample of each fetched tensor, measured on the source's first batch of one
    sample (of the model's fixed batch size, if it has one)."""
    if not fetch:
        return {}
    feeds = next(iter(source.batches(batch_size_for(model, source, 1))))
    values = session(_probe(model, fetch), target, optimize=False).run(list(fetch), feeds)
    samples = max(_samples(feeds), 1)
    return {name: v.nbytes / samples for name, v in zip(fetch, values, strict=True)}


def _check_tensors(model: Model, tensors: Sequence[str], observers: Mapping[str, Any]) -> None:
    """Every tensor must be a main-graph activation with an observer."""
    known = model.graph.tensors()
    for name in tensors:
        tensor = known.get(name)
        if tensor is None:
            raise ValueError(f"tensor '{name}' is not in the model's main graph (tensors inside "
                             "If/Loop/Scan bodies cannot be observed)")
        if isinstance(tensor, gs.Constant):
            raise TypeError(f"tensor '{name}' is an initializer, not an activation; its "
                             "values are known without running the model")
        if name not in observers:
            raise ValueError(f"no observer for tensor '{name}'")


def _probe(model: Model, names: Sequence[str]) -> Model:
    """A copy of `model` whose graph outputs also include `names`, typed by shape inference."""
    probe = model.copy()
    probe.analysis(analyses.shapes)
    tensors = probe.graph.tensors()
    outputs = {t.name for t in probe.graph.outputs}
    probe.graph.outputs.extend(tensors[name] for name in names if name not in outputs)
    return probe


def _checked_batches(source: DataSource, model: Model, batch_size: int) -> Iterator[Feeds]:
    """The source's batches, each checked against the model's inputs and for NaN/inf.

    ``source.check`` sees one sample of an iterable and relaxes axis 0 of arrays; checking
    each batch covers every batch of an iterable and a batch axis the model fixes.
    """
    for index, feeds in enumerate(source.batches(batch_size)):
        where = f"{source.origin}, batch {index}"
        DataSource.from_feeds([feeds], origin=where).check(model)
        for name, array in feeds.items():
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                at = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
                raise DataError(f"{where}: input '{name}' has NaN or infinite values (first at "
                                f"index {at}); calibration needs finite inputs: drop or fix "
                                "those samples")
        yield feeds


def _samples(feeds: Feeds) -> int:
    """Samples in a batch: axis 0 of its first input (1 for a scalar input)."""
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1
