"""benchmark: what it measures and reports, on a real onnxruntime session."""

import dataclasses
import os

import numpy as np
import pytest

from onnxpress.errors import DataError
from onnxpress.runtime.bench import BenchResult, benchmark
from onnxpress.testing import make_model

MODEL = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[N, 16] x) => (float[N, 8] y) { y = MatMul(x, W) }""",
                   W=np.ones((16, 8), np.float32))


def test_reports_consistent_statistics():
    result = benchmark(MODEL, warmup=1, runs=7, batch_size=4, threads=1)
    assert (result.runs, result.batch_size, result.threads) == (7, 4, 1)
    assert 0 < result.median_ms <= result.p90_ms
    assert result.mean_ms > 0
    assert result.throughput == pytest.approx(4 / (result.median_ms / 1e3))


def test_default_threads_are_reported_as_one_per_cpu():
    assert benchmark(MODEL, warmup=0, runs=1).threads == os.cpu_count()


def test_result_is_frozen():
    result = benchmark(MODEL, warmup=0, runs=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.median_ms = 0.0  # type: ignore[misc]
    assert isinstance(result, BenchResult)


def test_cycles_samples_when_the_data_has_fewer_than_a_batch(tmp_path):
    np.savez(tmp_path / "data.npz", x=np.ones((3, 16), np.float32))
    assert benchmark(MODEL, tmp_path / "data.npz", warmup=0, runs=2,
                     batch_size=8).batch_size == 8


def test_progress_advances_once_per_run():
    calls = []

    def progress(description, total):
        calls.append(total)
        return lambda n=1: calls.append(n)

    benchmark(MODEL, warmup=2, runs=3, progress=progress)
    assert calls == [5, 1, 1, 1, 1, 1]


def test_fixed_batch_dimension_other_than_the_batch_size_is_a_data_error():
    fixed = make_model("""<ir_version: 8, opset_import: ["": 17]>
        g (float[4, 16] x) => (float[4, 16] y) { y = Relu(x) }""")
    with pytest.raises(DataError, match="fixed batch dimension of 4.*batch size 4"):
        benchmark(fixed, batch_size=1)
    assert benchmark(fixed, batch_size=4, warmup=0, runs=1).batch_size == 4


def test_data_that_does_not_fit_is_a_data_error():
    with pytest.raises(DataError, match="'x' is float64"):
        benchmark(MODEL, {"x": np.ones((2, 16))}, runs=1)


@pytest.mark.parametrize("options", [{"runs": 0}, {"batch_size": 0}, {"warmup": -1},
                                     {"threads": 0}])
def test_rejects_impossible_settings(options):
    with pytest.raises(ValueError, match="need runs >= 1"):
        benchmark(MODEL, **options)


def test_data_onnxruntime_rejects_is_a_data_error():
    reshape = make_model("""<ir_version: 8, opset_import: ["": 17]>
        g (float[N, 6] x) => (float[N, 4] y) { y = Reshape(x, shape) }""",
                         shape=np.array([-1, 4]))
    with pytest.raises(DataError, match="onnxruntime cannot run the model on this data"):
        benchmark(reshape, runs=1)
