"""Observers: streaming statistics of a tensor, fed one batch at a time.

Calibration must not hold the dataset's activations in memory (onnxruntime's histogram
calibrators do, and run out of memory on BERT-sized models), and its result must not depend
on how the data was cut into batches (ModelOpt's entropy scales do). Every observer here keeps
a state whose size is fixed when it is created and offers ``update(batch)``, ``merge(other)``,
``count`` and ``nbytes``; merging two observers equals observing both streams.

`MinMax` keeps the running minimum and maximum.

`Histogram` keeps ``B`` bins (B a power of two) over ``[-m, m)`` with ``m = 2**e`` the smallest
power of two strictly above every ``|x|`` seen, so the bin width ``w = 2m / B`` is a power of
two and the bin of ``x`` is ``floor(x / w) + B/2``: a division by a power of two, which is exact
in float64 for float16/bfloat16/float32 data. When a batch exceeds ``m``, ``m`` doubles and
adjacent bin pairs merge: bin ``i`` goes to ``floor(i / 2) + B/4``, which is exactly where the
values it holds fall at the doubled width, because ``floor(floor(y) / 2) == floor(y / 2)``.
``m`` depends only on the largest ``|x|`` overall, so the final counts, and every range
computed from them, are identical whatever the batch size or order. Zero always falls in bin
``B/2``, which merging leaves in place, so all-zero batches need no range at all.

Ranges come from the histogram folded onto ``|x|`` (``H = B/2`` bins of width ``w`` over
``[0, m)``). Percentile, entropy and MSE each choose a clipping threshold ``t`` for ``|x|``, as
symmetric int8 does (TensorRT; onnxruntime's symmetric mode), and return ``-t`` and ``t``
clamped into the observed ``[min, max]``: a ReLU output gets ``(0, t)``, not ``(-t, t)``.
Ranges are not widened to include zero; the quantizer does that when its zero point needs it.

- ``percentile(p)``: ``t`` is the ``p``-th percentile of ``|x|``, linear inside its bin, so it is
  within one bin width of the exact order statistic.
- ``entropy(Q)``: TensorRT's KL calibration. For each candidate ``t = i·w`` (``Q <= i <= H``),
  the reference ``P`` is the first ``i`` bins with the clipped mass added to the last one, and
  ``Q_t`` splits those ``i`` bins into ``Q`` groups (bin ``k`` in group ``floor(k·Q / i)``) and
  spreads each group's unclipped count evenly over its non-empty bins; ``t`` minimizes
  ``KL(P || Q_t)``, the largest on ties. Bin 0 first takes bin 1's count, as TensorRT's
  ``pytorch_quantization`` does, so the zeros of a ReLU output do not drag ``t`` down. With
  prefix sums of ``c``, ``[c > 0]`` and ``c·log c``, each candidate's KL is ``O(Q)``::

      KL = Σ p log p / n - log n - (Σ_j g_j log(g_j / z_j) + O log(g_last / z_last)) / n
           + log(n - O)

  where ``g_j`` / ``z_j`` are group ``j``'s count / non-empty bins and ``O`` the clipped count.
  Clipping onto an empty last bin has infinite divergence (``Q_t`` is zero there), so, as in
  TensorRT, isolated outliers far from the bulk are kept; use percentile or MSE for those.
  onnxruntime smooths zeros with an absolute epsilon instead, which trips its own assertions
  on sparse histograms. This one runs on any histogram (constant, all-zero, one bin) and
  falls back to no clipping when every candidate is infinite.
- ``mse(levels)``: ``t`` minimizes the expected squared error of symmetric quantization with
  step ``s = t / levels``, values uniform inside each bin. With ``G(u) = k/12 + r³/3`` for
  ``u = k + r`` (``k`` the nearest integer), ``∫₀ˣ (y - s·round(y/s))² dy = s³·G(x/s)``, so a
  bin's error is the difference of ``F(x) = s³·G(min(x, t)/s) + max(x - t, 0)³ / 3`` at its
  edges, divided by ``w``.

`PerChannel` keeps, for each channel of a chosen axis, the minimum, maximum and sum of the values
with the count per channel: the per-channel abs-max SmoothQuant needs (``max(-min, max)``), the
pre-activation minimum bias absorption needs and the channel mean bias correction needs, in
``O(channels)`` memory, independent of batch order and size (sums up to float rounding).

`Gram` accumulates ``XᵀX`` (and ``XᵀY`` for a paired target) for least-squares reconstruction,
with ``X`` the activation laid out as rows = samples × positions, columns = channels.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from onnxpress.errors import DataError

#: KL divergences closer than this are ties (rounding of the closed form is ~1e-15).
KL_TIE = 1e-12

#: Elements binned at once: bounds the float64 temporaries of `Histogram.update`.
CHUNK = 1 << 20


class Observer(Protocol):
    """What collection needs from an observer."""

    name: str

    @property
    def count(self) -> int:
        """Values (or rows) observed so far."""

    @property
    def nbytes(self) -> int:
        """Bytes of the statistics kept; fixed at creation, whatever the data size."""

    def update(self, batch: np.ndarray) -> None:
        """Fold one batch into the statistics."""

    def merge(self, other: Observer) -> None:
        """Fold another observer of the same kind into this one."""


def _extrema(batch: np.ndarray, name: str) -> tuple[float, float]:
    """Min and max of a non-empty batch; NaN or inf raises, since no range survives them."""
    lo, hi = float(batch.min()), float(batch.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        what = f"tensor '{name}'" if name else "the tensor"
        raise DataError(f"{what} has NaN or infinite values (min {lo}, max {hi}); its range "
                        "cannot be calibrated: check the input data, or the model for overflow")
    return lo, hi


def _same_kind(observer: object, other: object) -> None:
    if type(other) is not type(observer):
        raise TypeError(f"cannot merge a {type(other).__name__} into a "
                        f"{type(observer).__name__}")


class MinMax:
    """Running minimum and maximum of a tensor.

    Attributes:
        name: Tensor name, used in error messages.
        min: Smallest value seen (+inf before any).
        max: Largest value seen (-inf before any).
    """

    def __init__(self, name: str = "") -> None:
        """Start empty."""
        self.name = name
        self.min = math.inf
        self.max = -math.inf
        self._count = 0

    @property
    def count(self) -> int:
        """Values observed."""
        return self._count

    @property
    def nbytes(self) -> int:
        """Two float64 and one int64."""
        return 24

    def update(self, batch: np.ndarray) -> None:
        """Fold a batch in.

        Raises:
            DataError: the batch holds NaN or inf.
        """
        batch = np.asarray(batch)
        if batch.size == 0:
            return
        lo, hi = _extrema(batch, self.name)
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self._count += batch.size

    def merge(self, other: MinMax) -> None:
        """Fold another MinMax in."""
        _same_kind(self, other)
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self._count += other.count

    def minmax(self) -> tuple[float, float]:
        """The observed ``(min, max)``.

        Raises:
            DataError: nothing was observed.
        """
        _require_values(self)
        return self.min, self.max

    def summary(self) -> dict[str, float | int]:
        """Count and extrema, for the calibration table."""
        return {"count": self.count, "min": self.min, "max": self.max}

    def __repr__(self) -> str:
        """Name, count and extrema."""
        return f"MinMax({self.name!r}, count={self.count}, min={self.min}, max={self.max})"


def _require_values(observer: MinMax) -> None:
    if observer.count == 0:
        what = f"tensor '{observer.name}'" if observer.name else "the tensor"
        raise DataError(f"{what} had no values (empty on every batch); it has no range: "
                        "leave it out of the tensors to calibrate")


class Histogram(MinMax):
    """Fixed-size histogram over ``[-m, m)`` that re-bins exactly as ``m`` doubles; it also
    keeps the exact extrema (it is a `MinMax`).

    Args:
        bins: Number of bins ``B``, a power of two ≥ 4 (so bin edges are exact binary
            fractions of ``m``; see the module docstring).
        name: Tensor name, used in error messages.

    Attributes:
        name: Tensor name.
        min: Smallest value seen (+inf before any).
        max: Largest value seen (-inf before any).
    """

    def __init__(self, bins: int = 2048, name: str = "") -> None:
        """Start empty, with all ``bins`` counts at zero."""
        if bins < 4 or bins & (bins - 1):
            raise ValueError(f"Histogram bins must be a power of two ≥ 4, not {bins}")
        super().__init__(name)
        self._counts = np.zeros(bins, np.int64)
        # m = 2**exponent; None until a non-zero value arrives (zeros sit in bin B/2 anyway).
        self._exponent: int | None = None
        self._log2_bins = bins.bit_length() - 1

    # ----------------------------------------------------------------------------------------
    # State
    @property
    def bins(self) -> int:
        """Number of bins ``B``."""
        return self._counts.size

    @property
    def nbytes(self) -> int:
        """Bytes of the counts plus the scalars; independent of the data seen."""
        return self._counts.nbytes + 24

    @property
    def counts(self) -> np.ndarray:
        """Counts per bin, ``B`` of them over ``[-m, m)`` (a read-only view)."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    @property
    def bound(self) -> float:
        """``m``: the histogram covers ``[-m, m)``.

        0.0 while every value seen is zero; inf when float64 data reach 2**1023 (``m = 2**1024``
        is not a float).
        """
        if self._exponent is None:
            return 0.0
        return math.ldexp(1.0, self._exponent) if self._exponent < 1024 else math.inf

    @property
    def bin_width(self) -> float:
        """``w = 2m / B``; 0.0 while every value seen is zero."""
        return 0.0 if self._exponent is None else math.ldexp(1.0, self._shift_to_width())

    @property
    def edges(self) -> np.ndarray:
        """The ``B + 1`` bin edges, from ``-m`` to ``m``."""
        return np.arange(-self.bins // 2, self.bins // 2 + 1) * self.bin_width

    def _shift_to_width(self) -> int:
        """``log2(w)``: ``w = 2m / B = 2**(e + 1 - log2 B)``."""
        return self._exponent + 1 - self._log2_bins

    # ----------------------------------------------------------------------------------------
    # Streaming
    def update(self, batch: np.ndarray) -> None:
        """Fold a batch in: grow ``m`` if needed, then count each value into its bin.

        Raises:
            DataError: the batch holds NaN or inf.
        """
        batch = np.asarray(batch)
        if batch.size == 0:
            return
        super().update(batch)
        # The running extrema bound this batch's too, and m only ever grows.
        amax = max(-self.min, self.max)
        if amax > 0:
            # frexp: amax = f·2**e with 0.5 <= f < 1, so 2**e is the smallest power of two > amax.
            self._grow_to(math.frexp(amax)[1])
        if self._exponent is None:
            self._counts[self.bins // 2] += batch.size
            return
        flat = batch.reshape(-1)
        for start in range(0, flat.size, CHUNK):
            self._counts += np.bincount(self._indices(flat[start:start + CHUNK]),
                                        minlength=self.bins)

    def _indices(self, values: np.ndarray) -> np.ndarray:
        """Bin of each value: ``floor(x / w) + B/2``, exact in float64 (w is a power of two)."""
        scaled = values.astype(np.float64)
        shift = -self._shift_to_width()
        if shift < 1000:
            scaled *= math.ldexp(1.0, shift)
        else:  # 2**shift overflows a float only for float64 data with a subnormal range
            np.ldexp(scaled, shift, out=scaled)
        np.floor(scaled, out=scaled)
        index = scaled.astype(np.intp)
        index += self.bins // 2
        return index

    def _grow_to(self, exponent: int) -> None:
        """Make ``m = 2**exponent`` if that is larger, merging bin pairs once per doubling."""
        if self._exponent is None:
            self._exponent = exponent
        elif exponent > self._exponent:
            self._counts = _doubled(self._counts, exponent - self._exponent)
            self._exponent = exponent

    def merge(self, other: Histogram) -> None:
        """Fold another histogram (same number of bins) in; exact, like `update`."""
        _same_kind(self, other)
        if other.bins != self.bins:
            raise ValueError(f"cannot merge a {other.bins}-bin histogram into a "
                             f"{self.bins}-bin one")
        theirs = other._counts
        if other._exponent is not None:
            self._grow_to(other._exponent)
            theirs = _doubled(theirs, self._exponent - other._exponent)
        self._counts += theirs
        super().merge(other)

    def summary(self) -> dict[str, float | int | None]:
        """Count, extrema, bins and ``log2(m)`` (an int, so always JSON-safe), for the table."""
        return {"count": self.count, "min": self.min, "max": self.max, "bins": self.bins,
                "log2_bound": self._exponent}

    def __repr__(self) -> str:
        """Name, bins, count, extrema and bound."""
        return (f"Histogram({self.name!r}, bins={self.bins}, count={self.count}, "
                f"min={self.min}, max={self.max}, bound={self.bound})")

    # ----------------------------------------------------------------------------------------
    # Ranges
    def abs_counts(self) -> np.ndarray:
        """Counts of ``|x|`` over ``H = B/2`` bins of width ``w`` on ``[0, m)``.

        Bin ``k < 0`` of the signed histogram (``x`` in ``[k·w, (k+1)·w)``) holds ``|x|`` in
        ``(-(k+1)·w, -k·w]``, i.e. bin ``-k-1`` of ``|x|``.
        """
        half = self.bins // 2
        return self._counts[half:] + self._counts[half - 1::-1]

    def _clip(self, threshold: float) -> tuple[float, float]:
        """``-t`` and ``t`` clamped into the observed ``[min, max]``, as Python floats.

        Clamping both ends (rather than intersecting) keeps ``lo <= hi`` when all the data
        lies beyond ``t`` on one side: values in ``[5, 6]`` with ``t = 4`` give ``(5, 5)``.
        """
        t = float(threshold)
        return min(max(-t, self.min), self.max), min(max(t, self.min), self.max)

    def percentile(self, p: float = 99.999) -> tuple[float, float]:
        """Clip ``|x|`` at its ``p``-th percentile (linear inside the bin where it falls).

        Args:
            p: Percentile in (0, 100]; 100 gives the observed range.

        Raises:
            ValueError: `p` is out of range.
            DataError: nothing was observed.
        """
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], not {p}")
        _require_values(self)
        if self._exponent is None:
            return self._clip(0.0)
        cumulative = np.cumsum(self.abs_counts())
        target = p / 100 * cumulative[-1]
        k = int(np.searchsorted(cumulative, target))  # target <= total, so k < H
        below = cumulative[k - 1] if k else 0
        inside = (target - below) / (cumulative[k] - below)
        return self._clip((k + inside) * self.bin_width)

    def entropy(self, num_quantized_bins: int = 128) -> tuple[float, float]:
        """Clip ``|x|`` where ``KL(P || Q_t)`` is smallest (TensorRT's entropy calibration).

        Args:
            num_quantized_bins: ``Q``, the levels the reference is quantized to (128 for int8:
                the positive half of the int8 grid). Needs ``Q <= bins / 2``.

        Raises:
            ValueError: `num_quantized_bins` is not in [1, bins / 2].
            DataError: nothing was observed.
        """
        q = num_quantized_bins
        if not 1 <= q <= self.bins // 2:
            raise ValueError(f"num_quantized_bins must be in [1, {self.bins // 2}] (half the "
                             f"{self.bins} bins), not {q}")
        _require_values(self)
        if self._exponent is None:
            return self._clip(0.0)
        counts = self.abs_counts().astype(np.float64)
        # ReLU outputs and padding pile a spike at zero that dominates every divergence and
        # drags the threshold down; TensorRT's calibrator flattens it the same way.
        counts[0] = counts[1]
        best = _entropy_threshold_bins(counts, q)
        return self._clip(best * self.bin_width)

    def mse(self, levels: int = 127) -> tuple[float, float]:
        """Clip ``|x|`` where the expected squared error of symmetric quantization is smallest.

        Args:
            levels: Positive quantization levels: 127 for symmetric int8 (scale ``t / 127``).

        Raises:
            ValueError: `levels` < 1.
            DataError: nothing was observed.
        """
        if levels < 1:
            raise ValueError(f"levels must be ≥ 1, not {levels}")
        _require_values(self)
        if self._exponent is None:
            return self._clip(0.0)
        counts = self.abs_counts().astype(np.float64)
        best = _mse_threshold_bins(counts, levels)
        return self._clip(best * self.bin_width)


def _doubled(counts: np.ndarray, doublings: int) -> np.ndarray:
    """Counts after `doublings` doublings of ``m``: bin ``i`` goes to ``floor(i/2) + B/4``."""
    quarter = counts.size // 4
    # After log2(B) doublings every value sits in bin B/2 - 1 or B/2: further ones change nothing.
    for _ in range(min(doublings, counts.size.bit_length() - 1)):
        pairs = counts.reshape(-1, 2).sum(axis=1)
        counts = np.zeros_like(counts)
        counts[quarter:quarter + pairs.size] = pairs
    return counts


def _xlogx(x: np.ndarray) -> np.ndarray:
    """``x·log(x)`` with ``0·log 0 = 0``."""
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def _entropy_threshold_bins(counts: np.ndarray, q: int) -> int:
    """The ``i`` in ``[q, H]`` minimizing ``KL(P_i || Q_i)`` (largest on ties); in bins."""
    h = counts.size
    n = counts.sum()
    zero = np.zeros(1)
    cum = np.concatenate([zero, np.cumsum(counts)])
    nonzero = np.concatenate([zero, np.cumsum(counts > 0)])
    cum_xlogx = np.concatenate([zero, np.cumsum(_xlogx(counts))])
    i = np.arange(q, h + 1)
    outliers = n - cum[i]
    last = counts[i - 1]
    # Group j of candidate i holds bins [ceil(j·i/q), ceil((j+1)·i/q)).
    bounds = (np.arange(q + 1)[None, :] * i[:, None] + q - 1) // q
    group = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
    filled = nonzero[bounds[:, 1:]] - nonzero[bounds[:, :-1]]
    log_level = np.log(np.where(group > 0, group, 1.0) / np.maximum(filled, 1.0))
    cross = (group * log_level).sum(axis=1) + outliers * log_level[:, -1]
    p_log_p = cum_xlogx[i - 1] + _xlogx(last + outliers)
    inside = n - outliers
    with np.errstate(divide="ignore"):
        kl = p_log_p / n - np.log(n) - cross / n + np.log(inside)
    # Clipped mass piled on an empty last bin has no counterpart in Q: infinite divergence.
    kl[((outliers > 0) & (last == 0)) | (inside == 0)] = np.inf
    if not np.isfinite(kl).any():
        return h
    # The closed form carries ~1e-15 of rounding, so exact ties (e.g. P == Q_t on sparse
    # histograms) must be compared with a tolerance to keep TensorRT's "largest on ties".
    return int(i[np.flatnonzero(kl <= kl.min() + KL_TIE)[-1]])


def _quantization_error_integral(x: np.ndarray, threshold: np.ndarray, levels: int
                                 ) -> np.ndarray:
    """``F(x) = ∫₀ˣ (y - Q(y))² dy`` for symmetric quantization.

    ``Q`` rounds to multiples of ``s = threshold / levels`` up to `threshold` and clips beyond.
    """
    step = threshold / levels
    u = np.minimum(x, threshold) / step
    nearest = np.floor(u + 0.5)
    rest = u - nearest
    beyond = np.maximum(x - threshold, 0.0)
    return step * step * step * (nearest / 12 + rest * rest * rest / 3) + beyond**3 / 3


def _mse_threshold_bins(counts: np.ndarray, levels: int) -> int:
    """The ``i`` in ``[1, last non-empty bin + 1]`` minimizing the expected squared error."""
    top = int(np.flatnonzero(counts)[-1]) + 1
    counts = counts[:top]
    edges = np.arange(top + 1, dtype=np.float64)  # in units of the bin width
    # Σ_k c_k (F(e_{k+1}) - F(e_k)) = Σ_j F(e_j) (c_{j-1} - c_j): one matrix-vector product.
    weights = np.concatenate([[0.0], counts]) - np.concatenate([counts, [0.0]])
    best, best_error = top, math.inf
    # Candidates in chunks keep the (candidates × edges) table near 1M floats.
    chunk = max(1, (1 << 20) // (top + 1))
    for start in range(1, top + 1, chunk):
        thresholds = np.arange(start, min(start + chunk, top + 1), dtype=np.float64)
        errors = _quantization_error_integral(edges, thresholds[:, None], levels) @ weights
        k = int(np.argmin(errors))
        if errors[k] < best_error:
            best, best_error = int(thresholds[k]), float(errors[k])
    return best


class PerChannel:
    """Per-channel minimum, maximum and mean of a tensor along one axis.

    Args:
        axis: The channel axis of the batches (-1 for MatMul inputs ``[..., K]``, 1 for NCHW).
        name: Tensor name, used in error messages.

    Attributes:
        name: Tensor name.
        axis: The channel axis.
        min, max: Per-channel extrema (None before the first batch).
        sum: Per-channel sum in float64 (None before the first batch).
    """

    def __init__(self, axis: int = -1, name: str = "") -> None:
        """Start empty; the channel count is set by the first batch."""
        self.axis = axis
        self.name = name
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self._per_channel = 0

    @property
    def count(self) -> int:
        """Values observed per channel."""
        return self._per_channel

    @property
    def nbytes(self) -> int:
        """Bytes of the three per-channel arrays; independent of the data seen."""
        return sum(a.nbytes for a in (self.min, self.max, self.sum) if a is not None) + 8

    def update(self, batch: np.ndarray) -> None:
        """Fold a batch in.

        Raises:
            DataError: NaN/inf values.
            ValueError: the channel count changed between batches.
        """
        batch = np.asarray(batch)
        if batch.size == 0:
            return
        _extrema(batch, self.name)
        rows = np.moveaxis(batch, self.axis, -1).reshape(-1, batch.shape[self.axis])
        self._add(rows.min(axis=0).astype(np.float64), rows.max(axis=0).astype(np.float64),
                  rows.sum(axis=0, dtype=np.float64), rows.shape[0])

    def _add(self, lo: np.ndarray, hi: np.ndarray, total: np.ndarray, rows: int) -> None:
        if self.min is None:
            self.min, self.max, self.sum = lo, hi, total
        else:
            if self.min.shape != lo.shape:
                raise ValueError(f"PerChannel '{self.name}': {lo.size} channels, but earlier "
                                 f"batches had {self.min.size}")
            self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)
            self.sum = self.sum + total
        self._per_channel += rows

    def merge(self, other: PerChannel) -> None:
        """Fold another PerChannel (same axis and channels) in."""
        _same_kind(self, other)
        if other.min is not None:
            self._add(other.min, other.max, other.sum, other.count)

    def _require(self) -> None:
        if self.min is None:
            what = f"tensor '{self.name}'" if self.name else "the tensor"
            raise DataError(f"{what} had no values (empty on every batch); it has no "
                            "per-channel statistics")

    def absmax(self) -> np.ndarray:
        """``max |x|`` per channel."""
        self._require()
        return np.maximum(-self.min, self.max)

    def mean(self) -> np.ndarray:
        """Mean per channel."""
        self._require()
        return self.sum / self._per_channel

    def __repr__(self) -> str:
        """Name, axis, channels and count."""
        channels = None if self.min is None else self.min.size
        return (f"PerChannel({self.name!r}, axis={self.axis}, channels={channels}, "
                f"count={self.count})")


class Gram:
    """Accumulates ``XᵀX`` (and ``XᵀY``) with a row count, for least-squares reconstruction.

    The channel axis becomes the columns and every other axis the rows:

    - Conv activations ``[N, C, H, W]`` (``axis=1``): rows are the ``N·H·W`` pixels, so
      ``XᵀX`` is ``C × C``, the per-pixel channel covariance summed over positions. That is
      what a 1×1 convolution's least squares needs; a ``k×k`` convolution needs its inputs
      unfolded into ``C·k²``-wide patches first (the caller's job), then ``axis=-1``.
    - MatMul / Gemm activations ``[..., K]`` (``axis=-1``): rows are every leading index, so
      ``XᵀX`` is ``K × K``.

    Sums are float64. They are invariant to batch order and size up to float rounding only.

    Args:
        axis: The channel axis of the batches (and targets).
        name: Tensor name, used in error messages.

    Attributes:
        name: Tensor name.
        xtx: ``XᵀX``, ``C × C`` (None before the first batch).
        xty: ``XᵀY``, ``C × D`` (None unless targets were given).
    """

    def __init__(self, axis: int = -1, name: str = "") -> None:
        """Start empty; the channel count is set by the first batch."""
        self.axis = axis
        self.name = name
        self.xtx: np.ndarray | None = None
        self.xty: np.ndarray | None = None
        self._rows = 0

    @property
    def count(self) -> int:
        """Rows observed (samples × positions)."""
        return self._rows

    @property
    def nbytes(self) -> int:
        """Bytes of ``XᵀX`` and ``XᵀY``; independent of the rows seen."""
        return sum(a.nbytes for a in (self.xtx, self.xty) if a is not None) + 8

    def _rows_of(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float64)
        return np.moveaxis(batch, self.axis, -1).reshape(-1, batch.shape[self.axis])

    def update(self, batch: np.ndarray, target: np.ndarray | None = None) -> None:
        """Add ``XᵀX`` (and ``XᵀY``) of a batch.

        Args:
            batch: Activations; its channel axis is ``self.axis``.
            target: Paired outputs with the same rows, channel axis ``self.axis``.

        Raises:
            DataError: NaN/inf values, or target rows that do not pair with the batch's.
            ValueError: the channel count changed, or targets came and went between batches.
        """
        batch = np.asarray(batch)
        if batch.size == 0:
            return
        _extrema(batch, self.name)
        x = self._rows_of(batch)
        y = None
        if target is not None:
            _extrema(np.asarray(target), f"{self.name} (target)" if self.name else "target")
            y = self._rows_of(target)
            if y.shape[0] != x.shape[0]:
                raise DataError(f"Gram '{self.name}': target has {y.shape[0]} rows, the batch "
                                f"{x.shape[0]}; they must pair row for row")
        if (self.xty is None) != (y is None) and self._rows:
            raise ValueError(f"Gram '{self.name}': give a target with every batch or with none")
        self._add(x.T @ x, None if y is None else x.T @ y, x.shape[0])

    def _add(self, xtx: np.ndarray, xty: np.ndarray | None, rows: int) -> None:
        if self.xtx is not None and self.xtx.shape != xtx.shape:
            raise ValueError(f"Gram '{self.name}': {xtx.shape[0]} channels, but earlier "
                             f"batches had {self.xtx.shape[0]}")
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        if xty is not None:
            self.xty = xty if self.xty is None else self.xty + xty
        self._rows += rows

    def merge(self, other: Gram) -> None:
        """Fold another Gram in."""
        _same_kind(self, other)
        if other.xtx is not None:
            self._add(other.xtx, other.xty, other.count)

    def __repr__(self) -> str:
        """Name, rows and the Gram's shape."""
        shape = None if self.xtx is None else self.xtx.shape
        return f"Gram({self.name!r}, rows={self.count}, xtx={shape})"
