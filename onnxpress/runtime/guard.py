"""Guards: is a lossy result still the user's model, and is it really faster?

A lossy pass is judged against the FP32 model on held-back samples of the user's data:

- `Reference` runs the FP32 model once on the held-back feeds and keeps its outputs, so each
  candidate costs one session and one pass over the samples;
- `Reference.measure` gives, per output, the mean per-sample cosine, the SNR
  ``10·log10(Σr² / Σ(r−c)²)`` and, for class-like outputs, the top-1 agreement (argmax over
  the last axis equal); outputs of any shape, batches of different sequence lengths, several
  outputs and fixed-batch models are all handled batch by batch (nothing is concatenated);
- `Budget` states what must hold: every judged output's cosine ≥ ``min_cosine`` and every
  class-like output's agreement ≥ ``min_agreement``. An output is class-like when it is
  2-D ``[batch, classes]`` or produced by (Log)Softmax / ArgMax-style ops over its last axis
  — argmax agreement on a box regression or a feature map means nothing;
- `latency_ratio` times a candidate against the baseline in one process, interleaved
  (ABAB…, so machine noise lands on both), and returns the ratio of medians.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxpress.errors import DataError
from onnxpress.ir.model import Model
from onnxpress.runtime.compare import OutputAccumulator, OutputComparison
from onnxpress.runtime.data import DataSource, Feeds, batch_size_for
from onnxpress.runtime.session import session

#: Ops whose output's last axis is a distribution over classes.
CLASS_OPS = frozenset({"Softmax", "LogSoftmax", "ArgMax", "TopK"})


@dataclass(frozen=True)
class Budget:
    """What a lossy result must keep, per output, against FP32.

    Attributes:
        min_cosine: Mean per-sample cosine of every judged output.
        min_agreement: Top-1 agreement of every class-like judged output.
        outputs: Names of the judged outputs (None: all).
    """

    min_cosine: float = 0.99
    min_agreement: float = 0.99
    outputs: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Measurement:
    """A candidate's outputs against FP32.

    Attributes:
        outputs: One comparison per judged output.
        class_like: Names of the outputs judged by agreement too.
        samples: Samples measured.
    """

    outputs: tuple[OutputComparison, ...]
    class_like: frozenset[str]
    samples: int

    def failures(self, budget: Budget) -> list[str]:
        """What misses the budget, one phrase per output ("logits: agreement 0.912 < 0.99")."""
        missed = []
        for o in self.outputs:
            if not o.cosine >= budget.min_cosine:  # NaN fails too
                missed.append(f"{o.name}: cosine {o.cosine:.4f} < {budget.min_cosine}")
            if o.name in self.class_like and not o.top1_agreement >= budget.min_agreement:
                missed.append(f"{o.name}: top-1 agreement {o.top1_agreement:.4f} < "
                              f"{budget.min_agreement}")
        return missed

    def meets(self, budget: Budget) -> bool:
        """Whether every judged output is within the budget."""
        return not self.failures(budget)

    def score(self) -> float:
        """One number to rank candidates by: the worst output's cosine (or agreement)."""
        worst = 1.0
        for o in self.outputs:
            worst = min(worst, o.cosine if np.isfinite(o.cosine) else -1.0)
            if o.name in self.class_like:
                worst = min(worst, o.top1_agreement)
        return worst

    def summary(self) -> str:
        """``logits: cosine 0.9991, SNR 31.2 dB, agreement 0.998`` for every output."""
        parts = []
        for o in self.outputs:
            text = f"{o.name}: cosine {o.cosine:.5f}, SNR {o.snr_db:.1f} dB"
            if o.name in self.class_like:
                text += f", agreement {o.top1_agreement:.4f}"
            parts.append(text)
        return "; ".join(parts)


def holdout(model: Model, data: DataSource, samples: int) -> list[Feeds]:
    """Up to `samples` samples of `data` as feeds the model accepts: the last ones of an array
    source (calibration statistics lean on the first), batches of the fixed size for a model
    that fixes its batch axis, else batches of up to 8; an iterable's own batches."""
    if data.arrays is not None:
        total = len(data)
        start = max(0, total - samples)
        tail = DataSource.from_arrays({k: v[start:] for k, v in data.arrays.items()},
                                      origin=data.origin)
        batch = batch_size_for(model, tail, min(8, samples))
        return list(tail.batches(batch))
    feeds, count = [], 0
    for feed in data.batches():
        feeds.append(feed)
        count += len(next(iter(feed.values()))) if feed else 1
        if count >= samples:
            break
    if not feeds:
        raise DataError(f"{data.origin}: no samples to measure on")
    return feeds


class Reference:
    """The FP32 model's outputs on fixed feeds, computed once, to measure candidates against."""

    def __init__(self, model: Model, feeds: Sequence[Feeds], outputs: Sequence[str] | None = None
                 ) -> None:
        names = [t.name for t in model.graph.outputs]
        unknown = sorted(set(outputs or ()) - set(names))
        if unknown:
            raise DataError(f"{unknown} are not outputs of the model (outputs: {names})")
        self.names = list(outputs) if outputs is not None else names
        self.feeds = list(feeds)
        sess = session(model, "cpu")
        self.expected = [sess.run(self.names, feed) for feed in self.feeds]
        self.class_like = frozenset(n for n in self.names if _class_like(model, n))

    def measure(self, candidate: Model) -> Measurement:
        """Run `candidate` on the same feeds and compare its judged outputs."""
        sess = session(candidate, "cpu")
        accumulators = [OutputAccumulator(n) for n in self.names]
        samples = 0
        for feed, expected in zip(self.feeds, self.expected, strict=True):
            got = sess.run(self.names, feed)
            for acc, want, have in zip(accumulators, expected, got, strict=True):
                acc.add(want, have)
            samples += len(expected[0]) if np.ndim(expected[0]) else 1
        return Measurement(tuple(a.result() for a in accumulators), self.class_like, samples)


def _class_like(model: Model, name: str) -> bool:
    tensor = next(t for t in model.graph.outputs if t.name == name)
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is not None and producer.op in CLASS_OPS:
        axis = producer.attrs.get("axis", -1)
        rank = len(tensor.shape) if tensor.shape is not None else None
        return axis == -1 or (rank is not None and axis == rank - 1)
    return tensor.shape is not None and len(tensor.shape) == 2


def latency_ratio(candidate: Model, baseline: Model, feed: Feeds, *, rounds: int = 15,
                  calls: int = 5, threads: int = 1) -> float:
    """Median latency of `candidate` over that of `baseline`, timed interleaved in this process.

    Each round times `calls` runs of one model then of the other (the order alternating
    between rounds); the medians of the per-call times are compared. One intra-op thread by
    default, so the two do not compete for cores and the ratio reflects the kernels.
    """
    sessions = [session(candidate, "cpu", threads=threads),
                session(baseline, "cpu", threads=threads)]
    for sess in sessions:  # warm-up: allocations, caches, kernel selection
        for _ in range(3):
            sess.run(None, feed)
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            for _ in range(calls):
                start = time.perf_counter()
                sessions[i].run(None, feed)
                times[i].append(time.perf_counter() - start)
    return float(np.median(times[0]) / np.median(times[1]))
