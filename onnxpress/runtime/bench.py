"""Latency benchmarks: is the optimized model really faster, on this machine, with onnxruntime?

`benchmark` builds one onnxruntime session and one feed of `batch_size` samples, runs
`warmup` untimed inferences (allocations, caches, thread-pool start-up), then times `runs`
calls of ``session.run`` alone with `time.perf_counter`. Loading, session creation and data
preparation are never timed.

How to read the numbers:

- The headline is the **median** over the runs: a shared machine is noisy and a single slow
  run (another process, a page fault, a frequency change) moves the mean but not the median.
  ``p90_ms`` shows the tail; a p90 far above the median means the machine was busy.
- Absolute milliseconds depend on the machine, its load and the thread count, so they do not
  travel between machines or even between hours. Compare **ratios** of models measured side
  by side, in one process, with the same settings (`onnxpress bench a.onnx b.onnx` does this).
- ``throughput`` is ``batch_size / median``: samples per second at that batch size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxpress.errors import DataError
from onnxpress.ir.io import ModelLike, load
from onnxpress.ir.model import Model
from onnxpress.progress import no_progress
from onnxpress.runtime.data import DataSource, Feeds, as_data_source, input_specs
from onnxpress.runtime.session import session
from onnxpress.targets import Target


@dataclass(frozen=True)
class BenchResult:
    """Latency of one model at one batch size.

    Attributes:
        median_ms: Median latency of one ``session.run`` call, in milliseconds.
        p90_ms: 90th percentile latency, in milliseconds.
        mean_ms: Mean latency, in milliseconds (sensitive to outliers; prefer the median).
        throughput: Samples per second, ``batch_size / median``.
        runs: Number of timed runs.
        threads: Intra-op threads onnxruntime used (its default, one per CPU, when not set).
        batch_size: Samples per ``session.run`` call.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float
    runs: int
    threads: int
    batch_size: int


def benchmark(model: ModelLike, data=None, *, target: Target | str = "cpu",
              threads: int | None = None, warmup: int = 10, runs: int = 50,
              batch_size: int = 1, optimize: bool | str = True,
              progress: Callable[..., Callable[[int], None]] = no_progress) -> BenchResult:
    """Time `model` in onnxruntime on one feed of `batch_size` samples.

    Args:
        model: A path, bytes, onnx.ModelProto, gs.Graph or `Model`.
        data: Where the samples come from: a `DataSource` or anything `as_data_source`
            accepts. Default: random data shaped like the model's inputs. Samples are
            repeated if there are fewer than `batch_size`.
        target: "cpu", "cuda", "tensorrt" or a `Target`.
        threads: onnxruntime intra-op threads; None keeps onnxruntime's default.
        warmup: Untimed runs before measuring.
        runs: Timed runs.
        batch_size: Samples per run.
        optimize: Let onnxruntime apply its graph optimizations, as a deployment would.
        progress: ``progress(description, total)`` returning ``advance(n=1)``, called once
            per run (warm-up included) outside the timed region.

    Returns:
        The `BenchResult`.

    Raises:
        ValueError: `runs`, `batch_size` or `threads` below 1, or `warmup` negative.
        DataError: the data does not fit the model (or onnxruntime fails on it), or the
            model's batch dimension is fixed to another size than `batch_size`.
        TargetError: the target's provider is not installed.
    """
    if runs < 1 or batch_size < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise ValueError(f"need runs >= 1, batch_size >= 1, warmup >= 0 and threads >= 1 or "
                         f"None; got runs={runs}, batch_size={batch_size}, warmup={warmup}, "
                         f"threads={threads}")
    model = load(model)
    _check_batch_dimension(model, batch_size)
    source = (DataSource.random(model, n=batch_size) if data is None
              else as_data_source(data, model))
    feed = _feed(source, batch_size)
    sess = session(model, target, threads=threads, optimize=optimize)
    try:  # one untimed run first, so that data onnxruntime rejects fails readably
        sess.run(None, feed)
    except Exception as e:  # onnxruntime's exception types share no base but Exception
        raise DataError(f"onnxruntime cannot run the model on this data: {e}") from None
    advance = progress(f"benchmark (batch {batch_size})", warmup + runs)
    for _ in range(warmup):
        sess.run(None, feed)
        advance(1)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times[i] = time.perf_counter() - start
        advance(1)
    median = float(np.median(times))
    return BenchResult(median_ms=median * 1e3,
                       p90_ms=float(np.percentile(times, 90)) * 1e3,
                       mean_ms=float(times.mean()) * 1e3,
                       throughput=batch_size / median,
                       runs=runs,
                       threads=threads if threads is not None else os.cpu_count() or 1,
                       batch_size=batch_size)


def _feed(source: DataSource, batch_size: int) -> Feeds:
    """One feed dict of exactly `batch_size` samples.

    The source's first samples, cycled if it holds fewer: for latency, which samples run
    does not matter.
    """
    parts: list[Feeds] = []
    count = 0
    for batch in source.batches(batch_size):
        parts.append(batch)
        count += _samples(batch)
        if count >= batch_size:
            break
    order = np.arange(batch_size) % count
    return {name: np.ascontiguousarray(np.concatenate([p[name] for p in parts])[order])
            for name in parts[0]}


def _samples(feed: Feeds) -> int:
    """Samples in a feed: the length of axis 0, which every input must share."""
    counts = {name: a.shape[0] if a.ndim else None for name, a in feed.items()}
    if None in counts.values() or len(set(counts.values())) != 1:
        raise DataError(f"cannot batch inputs {counts} (sample counts along axis 0); "
                        "benchmark needs every input to have the same leading sample axis")
    return next(iter(counts.values()))


def _check_batch_dimension(model: Model, batch_size: int) -> None:
    """Fail clearly, rather than inside onnxruntime, when the model fixes another batch size."""
    for spec in input_specs(model):
        if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] != batch_size:
            raise DataError(f"input '{spec.name}' has a fixed batch dimension of "
                            f"{spec.shape[0]} {spec.shape}; benchmark it with batch size "
                            f"{spec.shape[0]}")
