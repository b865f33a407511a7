"""collect(): probe runs against a one-batch reference, bad data, memory, and no side effects."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxpress import demo
from onnxpress.errors import DataError
from onnxpress.ir import load
from onnxpress.passes.calibrate import Histogram, MinMax
from onnxpress.runtime.collect import collect, plan_memory
from onnxpress.runtime.data import DataSource
from onnxpress.testing import make_model

IMAGES = demo.calibration_data().arrays["input"]


@pytest.fixture(scope="module")
def digits():
    return load(demo.model_path())


@pytest.fixture(scope="module")
def tensors(digits):
    """The input and every node's output: 28 float activations."""
    return ["input", *(node.outputs[0].name for node in digits.graph.nodes)]


def observers(names, kind=MinMax):
    return {name: kind(name=name) for name in names}


def reference_outputs(names):
    """Every tensor from one onnxruntime run over all the data, built with onnx directly."""
    proto = onnx.load(str(demo.model_path()))
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    fetch = [n for n in names if n != "input"]
    return {"input": IMAGES, **dict(zip(fetch, sess.run(fetch, {"input": IMAGES}), strict=True))}


def test_minmax_matches_one_full_batch(digits, tensors):
    seen = observers(tensors)
    collected = collect(digits, tensors, demo.calibration_data(), seen, batch_size=32)
    assert (collected.samples, collected.batches, collected.probes) == (256, 8, 1)
    assert {"input", "logits"} <= set(tensors)
    for name, values in reference_outputs(tensors).items():
        assert seen[name].minmax() == (float(values.min()), float(values.max())), name


def test_histograms_are_identical_across_batch_sizes_and_probe_splits(digits, tensors):
    runs = []
    for batch_size, max_outputs in ((1, None), (16, None), (16, 5)):
        seen = observers(tensors, Histogram)
        collected = collect(digits, tensors, demo.calibration_data(), seen,
                            batch_size=batch_size, max_outputs=max_outputs)
        runs.append(seen)
    assert collected.probes == 6  # ceil(28 / 5)
    for name in tensors:
        for other in runs[1:]:
            np.testing.assert_array_equal(other[name].counts, runs[0][name].counts)
            assert other[name].entropy() == runs[0][name].entropy()


def test_the_model_is_not_modified(digits, tensors):
    before = digits.to_onnx().SerializeToString()
    file_before = demo.model_path().read_bytes()
    collect(digits, tensors, demo.calibration_data(), observers(tensors), max_outputs=10)
    assert digits.to_onnx().SerializeToString() == before
    assert demo.model_path().read_bytes() == file_before


def test_progress_counts_batches(digits):
    calls = []

    def progress(description, total=None):
        calls.append((description, total))
        return lambda n=1: calls.append(n)

    collect(digits, ["logits"], demo.calibration_data(), observers(["logits"]), batch_size=100,
            progress=progress)
    assert calls == [("collect 1 tensors", 3), 1, 1, 1]


@pytest.mark.parametrize("data, match", [
    ({"image": IMAGES}, r"missing \['input'\].*not inputs of the model \['image'\]"),
    ({"input": IMAGES[:, :, :4]}, r"input 'input' has shape \(\d+, 1, 4, 8\)"),
    ({"input": IMAGES.astype(np.float64)}, "input 'input' is float64, the model expects float32"),
    (iter([]), "no samples"),
    ({"input": np.where(np.arange(256)[:, None, None, None] == 40, np.nan, IMAGES)
      .astype(np.float32)}, r"batch 1: input 'input' has NaN or infinite values .*\(8, 0, 0, 0\)"),
])
def test_bad_data_gives_one_clear_error(digits, data, match):
    with pytest.raises(DataError, match=match):
        collect(digits, ["logits"], data, observers(["logits"]))


def test_nan_inside_the_model_names_the_tensor():
    model = make_model('<ir_version: 8, opset_import: ["": 17]> '
                       "g (float[N, 2] x) => (float[N, 2] y) { y = Log(x) }")
    with pytest.raises(DataError, match=r"arrays, batch 0: tensor 'y' has NaN"):
        collect(model, ["y"], {"x": np.float32([[1, -1]])}, observers(["y"]))


def test_a_batch_axis_fixed_by_the_model_sets_the_batch_size():
    model = make_model('<ir_version: 8, opset_import: ["": 17]> '
                       "g (float[1, 2] x) => (float[1, 2] y) { y = Relu(x) }")
    seen = observers(["y"])
    collected = collect(model, ["y"], {"x": np.float32(np.arange(10).reshape(5, 2))}, seen,
                        batch_size=32)
    assert (collected.samples, collected.batches) == (5, 5) and seen["y"].minmax() == (0, 9)


def test_unknown_tensors_and_initializers_are_refused(digits):
    with pytest.raises(ValueError, match="tensor 'nope' is not in the model's main graph"):
        collect(digits, ["nope"], demo.calibration_data(), observers(["nope"]))
    with pytest.raises(TypeError, match=r"'head\.1\.weight' is an initializer"):
        collect(digits, ["head.1.weight"], demo.calibration_data(), observers(["head.1.weight"]))


def test_several_probes_need_data_that_can_be_read_again(digits, tensors):
    batches = [{"input": IMAGES[i:i + 64]} for i in range(0, 256, 64)]
    with pytest.raises(DataError, match="one-shot iterator cannot be read again"):
        collect(digits, tensors, iter(batches), observers(tensors), max_outputs=10)
    again = collect(digits, tensors, DataSource.from_feeds(lambda: iter(batches)),
                    observers(tensors), max_outputs=10)
    assert (again.samples, again.batches, again.probes) == (256, 4, 3)


def test_memory_does_not_grow_with_the_data(digits, tensors):
    sizes, peaks = [], []
    for copies in (1, 10):
        data = DataSource.from_arrays({"input": np.tile(IMAGES, (copies, 1, 1, 1))})
        seen = observers(tensors, Histogram)
        tracemalloc.start()
        collect(digits, tensors, data, seen, batch_size=32)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        sizes.append(sum(o.nbytes for o in seen.values()))
    assert sizes[0] == sizes[1] == len(tensors) * (2048 * 8 + 24)
    assert peaks[1] < 1.5 * peaks[0]  # ten times the samples, about the same peak


def test_a_memory_bound_shrinks_the_batch_not_the_ranges(digits, tensors):
    unbounded, bounded = observers(tensors, Histogram), observers(tensors, Histogram)
    first = collect(digits, tensors, demo.calibration_data(), unbounded, batch_size=64)
    fetched = [n for n in tensors if n != "input"]
    per_sample = sum(v[:1].nbytes for n, v in reference_outputs(tensors).items() if n in fetched)
    second = collect(digits, tensors, demo.calibration_data(), bounded, batch_size=64,
                     max_bytes=3 * per_sample)  # three samples per batch
    assert (first.batches, second.batches) == (4, 86) and second.probes == 1
    assert all(unbounded[n].percentile(99.9) == bounded[n].percentile(99.9) for n in tensors)


def test_a_bound_below_one_sample_splits_the_tensors_over_probes():
    sizes = {"a": 600.0, "b": 500.0, "c": 300.0}
    batch, groups = plan_memory(["a", "b", "c"], sizes, 800, 32, [["a", "b", "c"]])
    assert (batch, groups) == (1, [["a"], ["b", "c"]])
    assert plan_memory(["a"], {"a": 10.0}, 100, 32, [["a"]]) == (10, [["a"]])
