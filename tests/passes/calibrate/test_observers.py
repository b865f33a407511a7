"""Observers against numpy references: exactness, batch invariance, robustness."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxpress.errors import DataError
from onnxpress.passes.calibrate.observers import (
    KL_TIE,
    Gram,
    Histogram,
    MinMax,
    _entropy_threshold_bins,
)

RNG = np.random.default_rng(0)
NORMAL = RNG.standard_normal(100_000).astype(np.float32)
UNIFORM = RNG.uniform(-3, 5, 100_000).astype(np.float32)


def observe(observer, batches):
    for batch in batches:
        observer.update(batch)
    return observer


def histogram(batches, bins=2048):
    return observe(Histogram(bins, "t"), batches)


def ranges(h: Histogram) -> tuple:
    return h.minmax(), h.percentile(99.99), h.entropy(), h.mse()


# --------------------------------------------------------------------------------------------
# MinMax
def test_minmax_is_exact_and_merges():
    a, b = NORMAL[:700], UNIFORM[:300]
    whole = observe(MinMax(), [a, b])
    assert whole.minmax() == (float(min(a.min(), b.min())), float(max(a.max(), b.max())))
    assert whole.count == a.size + b.size
    left, right = observe(MinMax(), [a]), observe(MinMax(), [b])
    left.merge(right)
    assert (left.minmax(), left.count) == (whole.minmax(), whole.count)


# --------------------------------------------------------------------------------------------
# Histogram: exact re-binning
@pytest.mark.parametrize("data", [NORMAL, UNIFORM], ids=["normal", "uniform"])
def test_batch_size_and_order_do_not_change_anything(data):
    one = histogram(np.array_split(data[:4000], 4000))
    sixteen = histogram(np.array_split(data[:4000], 250))
    shuffled = histogram(np.array_split(RNG.permutation(data[:4000]), 7)[::-1])
    # Growing magnitudes force a doubling at almost every batch.
    growing = histogram(np.array_split(data[:4000][np.argsort(np.abs(data[:4000]))], 50))
    for other in (sixteen, shuffled, growing):
        np.testing.assert_array_equal(other.counts, one.counts)
        assert ranges(other) == ranges(one)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 300),
                  elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=True)),
       st.lists(st.integers(0, 300), max_size=6), st.randoms(use_true_random=False))
def test_any_split_and_order_gives_identical_counts(values, cuts, random):
    pieces = np.split(values, sorted(c % (values.size + 1) for c in cuts))
    random.shuffle(pieces)
    np.testing.assert_array_equal(histogram(pieces, 64).counts, histogram([values], 64).counts)


def test_tiny_values_keep_their_sign_bin_when_the_range_grows():
    # -2**-30 sits just below zero: its bin is B/2 - 1 whatever m becomes.
    early = histogram([np.float32([-2.0**-30]), np.float32([1000.0])], 8)
    late = histogram([np.float32([1000.0, -2.0**-30])], 8)
    np.testing.assert_array_equal(early.counts, late.counts)
    assert early.counts[3] == 1


def test_merge_equals_observing_both_streams():
    a, b = NORMAL[:5000] * 0.01, UNIFORM[:5000] * 100
    whole = histogram([a, b])
    for first, second in ((a, b), (b, a)):
        merged = histogram([first])
        merged.merge(histogram([second]))
        np.testing.assert_array_equal(merged.counts, whole.counts)
        assert ranges(merged) == ranges(whole)


def test_counts_cover_every_value_within_the_bound():
    h = histogram([UNIFORM])
    assert h.count == UNIFORM.size
    assert h.bound == 8.0  # smallest power of two above max|x| = 5
    edges = h.edges
    np.testing.assert_array_equal(h.counts, np.histogram(UNIFORM, edges)[0])


# --------------------------------------------------------------------------------------------
# Ranges
@pytest.mark.parametrize("data", [NORMAL, UNIFORM], ids=["normal", "uniform"])
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_within_one_bin_of_numpy(data, p):
    h = histogram([data])
    lo, hi = h.percentile(p)
    want = np.percentile(np.abs(data), p)
    assert abs(min(-lo, hi) if lo < 0 else hi) - want <= h.bin_width
    assert abs(hi - min(want, data.max())) <= h.bin_width


def test_entropy_threshold_on_a_gaussian_is_sane():
    lo, hi = histogram([NORMAL]).entropy()
    assert lo == -hi and 2.5 <= hi <= 6.0


def test_entropy_clips_a_sparse_tail_and_keeps_both_modes():
    tail = np.concatenate([NORMAL, (RNG.standard_normal(100) * 100).astype(np.float32)])
    lo, hi = histogram([tail]).entropy()
    assert hi < 0.25 * np.abs(tail).max() and lo == -hi
    bimodal = np.concatenate([NORMAL[:50_000] - 6, NORMAL[50_000:] + 6])
    lo, hi = histogram([bimodal]).entropy()
    assert hi >= 6 and lo <= -6


def test_entropy_keeps_isolated_outliers_in_empty_bins():
    # Clipping them piles mass on an empty bin: infinite divergence, as in TensorRT.
    far = np.concatenate([NORMAL, np.float32([-900.0, 1000.0])])
    assert histogram([far]).entropy() == (-900.0, 1000.0)


def _reference_entropy_bins(counts: np.ndarray, q: int) -> int:
    """TensorRT's loop, written plainly: one KL per candidate."""
    divergences = []
    for i in range(q, counts.size + 1):
        p = counts[:i].astype(np.float64)
        p[-1] += counts[i:].sum()
        group = np.arange(i) * q // i
        expanded = np.zeros(i)
        for j in range(q):
            members = (group == j) & (counts[:i] > 0)
            if members.any():
                expanded[members] = counts[:i][members].sum() / members.sum()
        if expanded.sum() == 0 or ((p > 0) & (expanded == 0)).any():
            divergences.append(np.inf)
            continue
        p, expanded = p / p.sum(), expanded / expanded.sum()
        kept = p > 0
        divergences.append(float((p[kept] * np.log(p[kept] / expanded[kept])).sum()))
    kl = np.array(divergences)
    if not np.isfinite(kl).any():
        return counts.size
    return q + int(np.flatnonzero(kl <= kl.min() + KL_TIE)[-1])


@pytest.mark.parametrize("seed", range(40))
def test_entropy_closed_form_matches_the_loop(seed):
    rng = np.random.default_rng(seed)
    size, q = int(rng.choice([32, 64, 128])), int(rng.choice([4, 8, 16]))
    shapes = [rng.integers(0, 50, size),
              np.histogram(np.abs(rng.standard_normal(5000)), size, range=(0, 5))[0],
              np.bincount(rng.integers(0, size, 3), minlength=size) * 7,
              (rng.random(size) < 0.3) * rng.integers(1, 10, size)]
    counts = shapes[seed % 4]
    assert _entropy_threshold_bins(counts.astype(np.float64), q) == \
        _reference_entropy_bins(counts, q)


def _mse(data: np.ndarray, threshold: float) -> float:
    step = threshold / 127
    return float(np.mean((data - np.clip(np.round(data / step), -127, 127) * step) ** 2))


@pytest.mark.parametrize("kind", ["student-t", "laplace", "normal"])
def test_mse_threshold_is_near_the_brute_force_optimum(kind):
    rng = np.random.default_rng(1)
    data = {"student-t": rng.standard_t(2, 50_000), "laplace": rng.laplace(size=50_000),
            "normal": rng.standard_normal(50_000)}[kind].astype(np.float32)
    h = histogram([data])
    lo, hi = h.mse()
    threshold = max(-lo, hi)
    grid = np.linspace(0.05, np.abs(data).max(), 800)
    best = min(_mse(data, t) for t in grid)
    assert _mse(data, threshold) <= best * 1.01
    if kind != "normal":  # heavy tails: clipping pays
        assert threshold < 0.95 * np.abs(data).max()


def test_one_signed_data_keeps_its_sign():
    relu = np.maximum(NORMAL, 0)
    h = histogram([relu])
    for lo, hi in ranges(h):
        assert lo == 0.0 and 0 < hi <= relu.max()


# --------------------------------------------------------------------------------------------
# Robustness
@pytest.mark.parametrize("value", [0.0, 3.0, -7.5, 1e-40, -3.0e38, np.finfo(np.float32).max])
def test_constant_tensors_give_their_value(value):
    h = histogram([np.full(64, value, np.float32), np.full(3, value, np.float32)])
    v = float(np.float32(value))
    assert h.minmax() == h.entropy() == h.mse() == (v, v)
    # Interpolating inside v's bin can land up to one bin width short of |v|.
    lo, hi = h.percentile(99.99)
    assert lo <= hi and max(abs(lo - v), abs(hi - v)) <= h.bin_width


def test_huge_float64_values_do_not_crash():
    h = histogram([np.array([1.7e308, -1e-300, 5.0])])
    assert h.bound == np.inf
    for lo, hi in ranges(h):
        assert -1e-300 <= hi <= 1.7e308 and lo <= hi


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_raise_naming_the_tensor(bad):
    for observer in (Histogram(name="conv_out"), MinMax("conv_out"), Gram(name="conv_out")):
        with pytest.raises(DataError, match="tensor 'conv_out' has NaN or infinite"):
            observer.update(np.float32([1.0, bad]))


def test_no_values_is_a_clear_error_and_empty_batches_are_ignored():
    h = histogram([np.zeros((0, 3), np.float32)])
    with pytest.raises(DataError, match="had no values"):
        h.entropy()
    h.update(np.float32([2.0]))
    assert h.count == 1


def test_bad_options_raise():
    with pytest.raises(ValueError, match="power of two"):
        Histogram(1000)
    h = histogram([NORMAL[:100]], 64)
    with pytest.raises(ValueError, match="num_quantized_bins"):
        h.entropy(128)
    with pytest.raises(ValueError, match="percentile"):
        h.percentile(0)
    with pytest.raises(ValueError, match="64-bin"):
        Histogram(128).merge(h)


def test_state_size_does_not_grow_with_data():
    small, large = histogram([NORMAL[:100]]), histogram([NORMAL] * 10)
    assert small.nbytes == large.nbytes
    assert observe(MinMax(), [NORMAL[:100]]).nbytes == observe(MinMax(), [NORMAL] * 10).nbytes


# --------------------------------------------------------------------------------------------
# Gram
def test_gram_conv_layout_nchw():
    x = RNG.standard_normal((4, 3, 5, 5))
    y = RNG.standard_normal((4, 2, 5, 5))
    g = Gram(axis=1)
    g.update(x[:1], y[:1])
    g.update(x[1:], y[1:])
    rows_x = x.transpose(0, 2, 3, 1).reshape(-1, 3)
    rows_y = y.transpose(0, 2, 3, 1).reshape(-1, 2)
    np.testing.assert_allclose(g.xtx, rows_x.T @ rows_x, rtol=1e-12)
    np.testing.assert_allclose(g.xty, rows_x.T @ rows_y, rtol=1e-12)
    assert g.count == 4 * 25


def test_gram_matmul_layout_and_merge():
    x = RNG.standard_normal((2, 7, 6)).astype(np.float32)
    g, h = Gram(), Gram()
    g.update(x[0])
    h.update(x[1])
    g.merge(h)
    rows = x.reshape(-1, 6).astype(np.float64)
    np.testing.assert_allclose(g.xtx, rows.T @ rows, rtol=1e-12)
    assert g.xty is None and g.count == 14 and g.nbytes == 6 * 6 * 8 + 8


def test_gram_rejects_unpaired_targets_and_channel_changes():
    g = Gram(axis=1, name="x")
    with pytest.raises(DataError, match="pair row for row"):
        g.update(np.ones((2, 3, 4, 4)), np.ones((2, 3, 2, 2)))
    g.update(np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="channels"):
        g.update(np.ones((2, 5, 4, 4)))
    with pytest.raises(ValueError, match="every batch or with none"):
        g.update(np.ones((2, 3, 4, 4)), np.ones((2, 1, 4, 4)))
