"""How far a candidate model's outputs are from a reference's, on real data.

Lossy passes (quantization, pruning, low rank) trade accuracy for size and speed; `compare`
measures what was traded. Both models run in onnxruntime on the same feeds, batch by batch,
and every output pair (matched by position) is summarized by:

- **max-abs** and **mean-abs** error: ``max |r − c|`` and ``mean |r − c|`` over all elements;
- **cosine** similarity per sample, averaged: each output is cut along axis 0 into samples,
  each sample flattened, ``r·c / (‖r‖‖c‖)`` computed, and the mean taken over samples (two
  all-zero samples count as 1, one all-zero sample as 0). Per-sample cosine catches a sample
  that went wrong, which one cosine over the whole tensor would average away;
- **SNR** in dB: ``10·log10(Σr² / Σ(r − c)²)`` over all elements, ``inf`` when identical;
  roughly, 40 dB means the error is 1 % of the signal's magnitude;
- **top-1 agreement**, for outputs of rank ≥ 2: the fraction of positions where
  ``argmax`` over the last axis is the same in both models (for logits [N, classes]: the
  fraction of samples classified alike);
- with ``labels``, the **accuracy** of each model: ``argmax`` of the first output over its
  last axis against the labels.

Statistics are accumulated as running sums in float64, so memory does not grow with the data
set and results do not depend on the batch size (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from rich.table import Table

from onnxpress.errors import DataError, VerificationError
from onnxpress.ir.io import ModelLike, load
from onnxpress.progress import no_progress
from onnxpress.runtime.data import Feeds, as_data_source, batch_size_for
from onnxpress.runtime.session import session
from onnxpress.targets import Target


@dataclass(frozen=True)
class OutputComparison:
    """How one candidate output differs from the reference output at the same position.

    Attributes:
        name: The reference output's name (``"ref / cand"`` when the names differ).
        max_abs: Largest absolute difference over all elements.
        mean_abs: Mean absolute difference over all elements.
        cosine: Cosine similarity per sample (axis 0), averaged over samples.
        snr_db: Signal-to-noise ratio in dB; ``inf`` when the outputs are identical.
        top1_agreement: Fraction of equal argmaxes over the last axis; None for rank < 2.
    """

    name: str
    max_abs: float
    mean_abs: float
    cosine: float
    snr_db: float
    top1_agreement: float | None


@dataclass(frozen=True)
class Comparison:
    """The result of `compare`: one `OutputComparison` per output, plus accuracies.

    Attributes:
        outputs: Per-output statistics, in output order.
        samples: Number of samples compared (along axis 0 of the first output).
        reference_accuracy: Top-1 accuracy of the reference vs the labels (None without).
        candidate_accuracy: Top-1 accuracy of the candidate vs the labels (None without).
    """

    outputs: tuple[OutputComparison, ...]
    samples: int
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None

    def __getitem__(self, key: int | str) -> OutputComparison:
        """An output's statistics by position or name."""
        if isinstance(key, int):
            return self.outputs[key]
        for output in self.outputs:
            if output.name == key or output.name.split(" / ")[0] == key:
                return output
        raise KeyError(key)

    def table(self, *, markdown: bool = False) -> Table | str:
        """The comparison as a rich `Table` (default) or a Markdown string."""
        headers = ["output", "max abs", "mean abs", "cosine", "SNR (dB)", "top-1 agree"]
        rows = [[o.name, f"{o.max_abs:.4g}", f"{o.mean_abs:.4g}", f"{o.cosine:.6f}",
                 f"{o.snr_db:.1f}", "—" if o.top1_agreement is None
                 else f"{o.top1_agreement:.2%}"] for o in self.outputs]
        caption = f"{self.samples} samples"
        if self.reference_accuracy is not None:
            caption += (f"; top-1 accuracy: reference {self.reference_accuracy:.2%}, "
                        f"candidate {self.candidate_accuracy:.2%}")
        if markdown:
            lines = ["| " + " | ".join(headers) + " |",
                     "|---|" + "---:|" * (len(headers) - 1)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            return "\n".join(lines) + f"\n\n{caption}"
        table = Table(*headers, title="reference vs candidate", caption=caption)
        for column in table.columns[1:]:
            column.justify = "right"
        for row in rows:
            table.add_row(*row)
        return table


class OutputAccumulator:
    """Running sums for one output pair; memory independent of the number of batches."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.max_abs = 0.0
        self.abs_sum = 0.0
        self.elements = 0
        self.signal = 0.0
        self.noise = 0.0
        self.cosine_sum = 0.0
        self.rows = 0
        self.agree = 0
        self.positions = 0
        self.ranked = False

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """Fold one batch of both models' outputs into the sums."""
        r, c = ref.astype(np.float64), cand.astype(np.float64)
        diff = np.abs(r - c)
        if diff.size:  # np.maximum, unlike max(), lets a NaN through: it must show
            self.max_abs = float(np.maximum(self.max_abs, diff.max()))
        self.abs_sum += float(diff.sum())
        self.elements += diff.size
        self.signal += float(np.square(r).sum())
        self.noise += float(np.square(diff).sum())
        cosines = _cosines(_rows(r), _rows(c))
        self.cosine_sum += float(cosines.sum())
        self.rows += len(cosines)
        self.ranked = ref.ndim >= 2
        if self.ranked:
            self.agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
            self.positions += ref[..., 0].size

    def result(self) -> OutputComparison:
        """The accumulated statistics."""
        return OutputComparison(
            name=self.name,
            max_abs=self.max_abs,
            mean_abs=self.abs_sum / self.elements if self.elements else 0.0,
            cosine=self.cosine_sum / self.rows if self.rows else 1.0,
            snr_db=_snr_db(self.signal, self.noise),
            top1_agreement=(self.agree / self.positions if self.positions else 1.0)
            if self.ranked else None)


def _rows(a: np.ndarray) -> np.ndarray:
    """`a` as one flattened row per sample (axis 0); a scalar is one sample."""
    return a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)


def _cosines(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair; 1 for two zero rows, 0 for one zero row."""
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    both_zero = ~r.any(axis=1) & ~c.any(axis=1)
    dots = np.einsum("ij,ij->i", r, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dots / norms, 0.0)
    return np.where(both_zero, 1.0, cos)


def _snr_db(signal: float, noise: float) -> float:
    """``10·log10(signal / noise)``: inf without noise, -inf for noise without signal."""
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def compare(reference: ModelLike, candidate: ModelLike, data, *, target: Target | str = "cpu",
            labels: Sequence[int] | np.ndarray | None = None, max_batches: int | None = None,
            batch_size: int = 64,
            progress: Callable[..., Callable[[int], None]] = no_progress) -> Comparison:
    """Run both models on the same data and measure how the candidate's outputs differ.

    Args:
        reference: The model to match (path, bytes, ModelProto, gs.Graph or `Model`).
        candidate: The model under test.
        data: A `DataSource` or anything `as_data_source` accepts (.npz, folder, dict,
            iterable of feeds); checked against the reference's inputs.
        target: "cpu", "cuda", "tensorrt" or a `Target`; both models run on it with
            onnxruntime's graph optimizations on, as deployed.
        labels: Integer class per sample (aligned with the data's samples along axis 0, shaped
            like the first output without its last axis) to score both models' accuracy.
        max_batches: Compare only the first batches.
        batch_size: Samples per batch for array sources (iterables keep their own batches);
            a batch size the reference's inputs fix overrides it.
        progress: ``progress(description, total)`` returning ``advance(n=1)``, called per
            batch.

    Returns:
        The `Comparison`.

    Raises:
        VerificationError: the models have different numbers of outputs, or an output's
            shapes differ.
        DataError: the data does not fit the reference (or onnxruntime fails on it), or the
            labels do not fit the data.
    """
    reference, candidate = load(reference), load(candidate)
    source = as_data_source(data, reference)
    ref_names = [t.name for t in reference.graph.outputs]
    cand_names = [t.name for t in candidate.graph.outputs]
    if len(ref_names) != len(cand_names):
        raise VerificationError(f"the reference has {len(ref_names)} outputs {ref_names}, the "
                                f"candidate {len(cand_names)} {cand_names}; compare needs "
                                "models with the same outputs")
    if labels is not None:
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"labels must be integer class indices, not {labels.dtype}")
    batch_size = batch_size_for(reference, source, batch_size)
    accumulators = [OutputAccumulator(r if r == c else f"{r} / {c}")
                    for r, c in zip(ref_names, cand_names, strict=True)]
    ref_sess, cand_sess = session(reference, target), session(candidate, target)
    total = None if source.arrays is None else math.ceil(len(source) / batch_size)
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    advance = progress("compare", total)
    samples = scored = ref_correct = cand_correct = 0
    for index, feed in enumerate(source.batches(batch_size)):
        if max_batches is not None and index >= max_batches:
            break
        ref_out = _run(ref_sess, feed, f"the reference on batch #{index}")
        cand_out = _run(cand_sess, feed, f"the candidate on batch #{index}")
        for acc, r, c in zip(accumulators, ref_out, cand_out, strict=True):
            if r.shape != c.shape:
                raise VerificationError(f"output '{acc.name}' has shape {r.shape} in the "
                                        f"reference but {c.shape} in the candidate (batch "
                                        f"#{index})")
            acc.add(r, c)
        count = len(_rows(ref_out[0]))
        if labels is not None:
            truth = _labels_for(labels, samples, count, ref_out[0])
            ref_correct += int((ref_out[0].argmax(-1) == truth).sum())
            cand_correct += int((cand_out[0].argmax(-1) == truth).sum())
            scored += truth.size
        samples += count
        advance(1)
    if labels is None:
        return Comparison(tuple(a.result() for a in accumulators), samples)
    if max_batches is None and samples != len(labels):
        raise DataError(f"{len(labels)} labels for {samples} samples; give one label per "
                        "sample")
    return Comparison(tuple(a.result() for a in accumulators), samples,
                      reference_accuracy=ref_correct / scored,
                      candidate_accuracy=cand_correct / scored)


def _run(sess: ort.InferenceSession, feed: Feeds, what: str) -> list[np.ndarray]:
    """All outputs of one run; onnxruntime's failure becomes a `DataError` saying where."""
    try:
        return sess.run(None, feed)
    except Exception as e:  # onnxruntime's exception types share no base but Exception
        raise DataError(f"onnxruntime cannot run {what}: {e}") from None


def _labels_for(labels: np.ndarray, start: int, count: int, output: np.ndarray) -> np.ndarray:
    """The labels of samples ``start … start + count``, checked against the output's shape."""
    if output.ndim < 2:
        raise DataError(f"labels need a first output of rank >= 2 (scores over the last axis); "
                        f"it has shape {output.shape}")
    if start + count > len(labels):
        raise DataError(f"{len(labels)} labels but the data has more samples; give one label "
                        "per sample")
    truth = labels[start:start + count]
    if truth.shape != output.shape[:-1]:
        raise DataError(f"labels of shape {truth.shape} for a batch whose first output has "
                        f"shape {output.shape}; labels must be shaped like the output without "
                        "its last axis")
    return truth
