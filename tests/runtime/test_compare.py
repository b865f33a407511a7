"""compare: each statistic checked against numpy on the very outputs onnxruntime produced."""

import math

import numpy as np
import pytest
from rich.table import Table

from onnxpress.errors import DataError, VerificationError
from onnxpress.runtime.compare import compare
from onnxpress.runtime.session import session
from onnxpress.testing import make_model

HEADER = '<ir_version: 8, opset_import: ["": 17]>'
W = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
#: Added to the candidate's logits: shifts class 0 so that some argmaxes change.
BIAS = np.array([0.75, 0, 0, 0, 0], np.float32)
REFERENCE = make_model(f"{HEADER} g (float[N, 4] x) => (float[N, 5] y) {{ y = MatMul(x, W) }}",
                       W=W)
CANDIDATE = make_model(f"""{HEADER} g (float[N, 4] x) => (float[N, 5] y) {{
    t = MatMul(x, W)
    y = Add(t, b)
}}""", W=W, b=BIAS)
X = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)


def outputs(model):
    """The output compare sees: same session settings (onnxruntime optimizations on)."""
    return session(model).run(None, {"x": X})[0].astype(np.float64)


def test_a_model_against_itself_is_identical():
    result = compare(REFERENCE, REFERENCE, {"x": X})
    (out,) = result.outputs
    assert (out.max_abs, out.mean_abs, out.cosine, out.snr_db, out.top1_agreement) == (
        0.0, 0.0, 1.0, math.inf, 1.0)
    assert result.samples == 10
    assert result.reference_accuracy is None


def test_perturbed_model_statistics_match_numpy():
    ref, cand = outputs(REFERENCE), outputs(CANDIDATE)
    diff = ref - cand
    cosines = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1))
    agreement = np.mean(ref.argmax(1) == cand.argmax(1))
    assert 0 < agreement < 1, "the bias must flip some but not all argmaxes"

    out = compare(REFERENCE, CANDIDATE, {"x": X}, batch_size=3)["y"]
    assert out.max_abs == pytest.approx(np.abs(diff).max(), rel=1e-12)
    assert out.max_abs == pytest.approx(0.75, abs=1e-6)
    assert out.mean_abs == pytest.approx(np.abs(diff).mean(), rel=1e-12)
    assert out.cosine == pytest.approx(cosines.mean(), rel=1e-12)
    assert out.snr_db == pytest.approx(10 * np.log10((ref**2).sum() / (diff**2).sum()),
                                       rel=1e-12)
    assert out.top1_agreement == agreement


def test_results_do_not_depend_on_the_batch_size():
    whole = compare(REFERENCE, CANDIDATE, {"x": X}, batch_size=10)[0]
    batched = compare(REFERENCE, CANDIDATE, {"x": X}, batch_size=4)[0]
    for field in ("max_abs", "mean_abs", "cosine", "snr_db", "top1_agreement"):
        assert getattr(batched, field) == pytest.approx(getattr(whole, field), rel=1e-12)


def test_accuracy_of_both_models_against_labels():
    ref, cand = outputs(REFERENCE).argmax(1), outputs(CANDIDATE).argmax(1)
    labels = np.where(np.arange(10) < 5, ref, (ref + 1) % 5)  # reference right on half
    result = compare(REFERENCE, CANDIDATE, {"x": X}, labels=labels, batch_size=3)
    assert result.reference_accuracy == 0.5
    assert result.candidate_accuracy == np.mean(cand == labels)


def test_max_batches_limits_the_samples_and_the_labels_scored():
    labels = outputs(REFERENCE).argmax(1)
    result = compare(REFERENCE, REFERENCE, {"x": X}, labels=labels, batch_size=4, max_batches=2)
    assert result.samples == 8
    assert result.reference_accuracy == 1.0


def test_all_zero_outputs_are_identical_not_nan():
    zero = make_model(f"{HEADER} g (float[N, 4] x) => (float[N, 4] y) {{ y = Mul(x, z) }}",
                      z=np.zeros(4, np.float32))
    out = compare(zero, zero, {"x": X})[0]
    assert (out.cosine, out.snr_db) == (1.0, math.inf)


def test_rank_one_outputs_have_no_top1_agreement():
    total = make_model(f"""{HEADER} g (float[N, 4] x) => (float[N] y) {{
        y = ReduceSum <keepdims: int = 0> (x, axes)
    }}""", axes=np.array([1]))
    assert compare(total, total, {"x": X})[0].top1_agreement is None


def test_different_output_counts_are_refused():
    two = make_model(f"""{HEADER} g (float[N, 4] x) => (float[N, 5] y, float[N, 4] z) {{
        y = MatMul(x, W)
        z = Relu(x)
    }}""", W=W)
    with pytest.raises(VerificationError, match="1 outputs.*candidate 2"):
        compare(REFERENCE, two, {"x": X})


def test_different_output_shapes_are_refused():
    wider = make_model(f"{HEADER} g (float[N, 4] x) => (float[N, 6] y) {{ y = MatMul(x, V) }}",
                       V=np.ones((4, 6), np.float32))
    with pytest.raises(VerificationError, match=r"'y' has shape \(10, 5\).*\(10, 6\)"):
        compare(REFERENCE, wider, {"x": X}, batch_size=10)


@pytest.mark.parametrize("labels, message", [
    (np.zeros(11, np.int64), "11 labels for 10 samples"),
    (np.zeros(9, np.int64), "9 labels but the data has more samples"),
    (np.zeros(10, np.float32), "must be integer class indices"),
])
def test_labels_that_do_not_fit_are_a_data_error(labels, message):
    with pytest.raises(DataError, match=message):
        compare(REFERENCE, REFERENCE, {"x": X}, labels=labels, batch_size=5)


def test_table_as_rich_and_markdown():
    result = compare(REFERENCE, CANDIDATE, {"x": X}, labels=np.zeros(10, np.int64))
    table = result.table()
    assert isinstance(table, Table) and table.row_count == 1
    markdown = result.table(markdown=True)
    assert markdown.splitlines()[0] == ("| output | max abs | mean abs | cosine | SNR (dB) | "
                                        "top-1 agree |")
    assert "| y | 0.75 |" in markdown
    assert "10 samples; top-1 accuracy: reference" in markdown


def test_onnxruntime_failure_names_the_model_and_batch():
    # 10 samples x 4 = 40 elements cannot be reshaped to [3, -1]: onnxruntime fails at run time.
    bad = make_model(f"{HEADER} g (float[N, 4] x) => (float[3, M] y) {{ y = Reshape(x, s) }}",
                     s=np.array([3, -1], np.int64))
    with pytest.raises(DataError, match="cannot run the reference on batch #0"):
        compare(bad, bad, {"x": X}, batch_size=10)


def test_a_fixed_batch_dimension_sets_the_batch_size():
    fixed = make_model(f"{HEADER} g (float[2, 4] x) => (float[2, 4] y) {{ y = Relu(x) }}")
    result = compare(fixed, fixed, {"x": X}, batch_size=64)  # 10 samples: 5 batches of 2
    assert result.samples == 10 and result[0].max_abs == 0
    with pytest.raises(DataError, match="fixes the batch dimension at 2, so the 9 samples"):
        compare(fixed, fixed, {"x": X[:9]})


def test_nan_in_the_candidate_is_not_hidden():
    broken = make_model(f"{HEADER} g (float[N, 4] x) => (float[N, 5] y) {{ y = MatMul(x, V) }}",
                        V=np.full((4, 5), np.nan, np.float32))
    out = compare(REFERENCE, broken, {"x": X}, batch_size=3)[0]
    assert math.isnan(out.max_abs) and math.isnan(out.mean_abs) and math.isnan(out.snr_db)
