"""DataSource: every kind of source, and a clear DataError for every way data can misfit."""

import numpy as np
import pytest

from onnxpress.errors import DataError
from onnxpress.runtime.data import DataSource, as_data_source
from onnxpress.testing import make_model

MODEL = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }""")
#: A model whose second dimension is dynamic too, so random data needs its shape.
SEQUENCE_MODEL = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[N, T] x) => (float[N, T] y) { y = Relu(x) }""")


def samples(n):
    return np.arange(n * 3, dtype=np.float32).reshape(n, 3)


def shapes(source, batch_size):
    return [feed["x"].shape for feed in source.batches(batch_size)]


def test_npz_file_is_sliced_into_batches(tmp_path):
    np.savez(tmp_path / "data.npz", x=samples(5))
    source = as_data_source(tmp_path / "data.npz", MODEL)
    assert len(source) == 5
    assert shapes(source, 2) == [(2, 3), (2, 3), (1, 3)]
    np.testing.assert_array_equal(np.concatenate(list(f["x"] for f in source.batches(2))),
                                  samples(5))


def test_folder_of_npy_files_is_keyed_by_file_name(tmp_path):
    np.save(tmp_path / "x.npy", samples(4))
    source = as_data_source(tmp_path, MODEL)
    assert len(source) == 4
    assert shapes(source, 4) == [(4, 3)]


def test_iterable_of_feeds_keeps_its_own_batches():
    feeds = [{"x": samples(2)}, {"x": samples(3)}]
    source = as_data_source(feeds, MODEL)
    assert shapes(source, 1) == [(2, 3), (3, 3)]
    assert shapes(source, 1) == [(2, 3), (3, 3)], "a list can be iterated again"


def test_callable_source_can_be_iterated_many_times():
    source = as_data_source(lambda: iter([{"x": samples(1)}]), MODEL)
    assert shapes(source, 1) == shapes(source, 1) == [(1, 3)]


def test_random_data_is_deterministic_and_fits_the_model():
    first, second = DataSource.random(MODEL, n=3), DataSource.random(MODEL, n=3)
    assert len(first) == 3
    np.testing.assert_array_equal(first.arrays["x"], second.arrays["x"])
    first.check(MODEL)


def test_random_data_takes_shapes_of_dynamic_dimensions():
    source = DataSource.random(SEQUENCE_MODEL, n=2, shapes={"x": (1, 7)})
    assert shapes(source, 1) == [(1, 7), (1, 7)]


def test_random_data_without_shapes_of_dynamic_dimensions_says_what_to_give():
    with pytest.raises(DataError, match=r"shapes=\{'x'"):
        DataSource.random(SEQUENCE_MODEL)


@pytest.mark.parametrize("arrays, message", [
    ({"z": samples(2)}, r"missing \['x'\].*not inputs of the model \['z'\]"),
    ({"x": samples(2).astype(np.float64)}, "'x' is float64, the model expects float32"),
    ({"x": samples(2).reshape(2, 3, 1)}, "expects rank 2"),
    ({"x": np.zeros((2, 4), np.float32)}, r"expects \('N', 3\) \(axis 1\)"),
    ({"x": np.zeros((0, 3), np.float32)}, "no samples"),
], ids=["input name", "dtype", "rank", "static dimension", "no samples"])
def test_misfitting_arrays_raise_data_error_naming_the_problem(arrays, message):
    with pytest.raises(DataError, match=message):
        as_data_source(arrays, MODEL)


def test_empty_iterable_raises_data_error():
    with pytest.raises(DataError, match="no samples"):
        as_data_source([], MODEL)


def test_missing_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        as_data_source(tmp_path / "missing.npz", MODEL)
    with pytest.raises(DataError, match="no such file or folder"):
        as_data_source(tmp_path / "missing", MODEL)
    with pytest.raises(DataError, match="no .npy files"):
        as_data_source(tmp_path, MODEL)


def test_one_shot_iterator_keeps_its_first_batch():
    source = as_data_source(iter([{"x": samples(1)}, {"x": samples(2)}]), MODEL)
    assert shapes(source, 1) == [(1, 3), (2, 3)]


def test_npy_file_path_raises_data_error(tmp_path):
    np.save(tmp_path / "x.npy", samples(2))
    with pytest.raises(DataError):
        as_data_source(tmp_path / "x.npy", MODEL)
