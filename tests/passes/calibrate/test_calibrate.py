"""The calibrate pass on the digits model: ranges, invariance, no model change, errors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnxpress import demo
from onnxpress.errors import PassError, PreconditionError
from onnxpress.ir import load
from onnxpress.passes import Context, PassManager, QuantizeStatic, get
from onnxpress.passes.calibrate import Calibrate, CalibrationTable, tensors_to_calibrate
from onnxpress.runtime.data import DataSource
from onnxpress.targets import get_target
from onnxpress.testing import make_model

CPU = get_target("cpu")
IMAGES = demo.calibration_data()


def calibrate(p: Calibrate, data=None) -> tuple[CalibrationTable, dict]:
    model = load(demo.model_path())
    ctx = Context(target=CPU, data=data if data is not None else demo.calibration_data())
    report = PassManager([p]).run(model, ctx)
    return ctx.calibration, report["calibrate"].stats


@pytest.fixture(scope="module")
def minmax():
    return calibrate(Calibrate())[0]


def test_registered_and_exact():
    assert get("calibrate") is Calibrate and Calibrate.exact


def test_needs_data():
    with pytest.raises(PreconditionError, match=r"calibrate needs data: pass data=\.\.\. / --data"):
        PassManager([Calibrate()]).run(load(demo.model_path()), Context(target=CPU))


def test_a_missing_provider_says_how_to_calibrate_elsewhere():
    tensorrt = get_target("tensorrt")
    if tensorrt.providers[0] in ort.get_available_providers():
        pytest.skip("TensorRT is installed here")
    model = load(demo.model_path())
    with pytest.raises(PreconditionError, match=r"Calibrate\(run_on='cpu'\)"):
        PassManager([Calibrate()]).run(model, Context(target=tensorrt, data=IMAGES))
    ctx = Context(target=tensorrt, data=IMAGES)
    PassManager([Calibrate(run_on="cpu")]).run(model, ctx)
    assert list(ctx.calibration) == tensors_to_calibrate(model, tensorrt) and len(ctx.calibration)


def test_changes_nothing_and_reports_stats():
    model = load(demo.model_path())
    before = model.to_onnx().SerializeToString()
    ctx = Context(target=CPU, data=demo.calibration_data())
    record = PassManager([Calibrate(method="entropy")]).run(model, ctx)["calibrate"]
    assert not record.changed
    model.pipeline.clear()  # the manager's record of the run is the only difference allowed
    assert model.to_onnx().SerializeToString() == before
    assert record.stats["tensors"] == len(ctx.calibration) == len(tensors_to_calibrate(model, CPU))
    assert record.stats["reused"] == 0
    assert (record.stats["samples"], record.stats["batches"], record.stats["probes"]) == (256, 8, 1)
    assert record.stats["method"] == "entropy" and record.stats["seconds"] >= 0


def test_default_tensors_are_the_quantization_plans(minmax):
    """Calibrate measures exactly what quantize-static will read: one plan, two readers."""
    model = load(demo.model_path())
    names = tensors_to_calibrate(model, CPU)
    assert list(minmax) == names == QuantizeStatic().plan(model, CPU).tensors()
    assert names[0] == "input"
    assert "/head/head.0/Flatten_output_0" in names  # a Gemm input
    assert "logits" not in names  # the last Gemm's output is read by no int8 unit
    assert not any(c.name in names for c in model.constants())


def test_ops_fed_by_no_int8_unit_need_no_range():
    """An Add of a Gather and a Sin would not fuse (its inputs come from float ops): the plan
    keeps it float, so nothing in this graph needs a range."""
    model = make_model(
        '<ir_version: 8, opset_import: ["": 17]> g (int64[N] ids, float[N, 4] x) => (float[N, 4] y)'
        " { e = Gather(table, ids) s = Sin(x) y = Add(e, s) }",
        table=np.ones((10, 4), np.float32))
    assert tensors_to_calibrate(model, CPU) == []


def test_data_movement_after_an_int8_unit_shares_its_range():
    model = make_model(
        '<ir_version: 8, opset_import: ["": 17]> g (float[N, 3, 4, 4] x) => (float[N, 48] y)'
        " { c = Conv(x, w) r = Reshape(c, shape) y = Sin(r) }",
        w=np.ones((3, 3, 1, 1), np.float32), shape=np.array([-1, 48], np.int64))
    assert "Reshape" in CPU.quantization
    # r reuses c's parameters, but a plan without the Reshape would quantize it on its own
    assert tensors_to_calibrate(model, CPU) == ["x", "c", "r"]
    with pytest.raises(PreconditionError, match="no fused int8 kernels"):
        tensors_to_calibrate(model, get_target("cuda"))


def test_minmax_ranges_are_the_observed_extrema(minmax):
    relu, images = minmax["/stem/stem.1/Relu_output_0"], minmax["input"]
    assert relu.min == relu.summary["min"] == 0.0
    assert (images.min, images.max) == (images.summary["min"], images.summary["max"])
    assert images.summary["count"] == 256 * 64


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_clipped_ranges_stay_inside_the_observed_ones(minmax, method):
    table, _ = calibrate(Calibrate(method=method, percentile=99.9))
    assert table.method == method and list(table) == list(minmax)
    for name in table:
        assert minmax[name].min <= table[name].min <= table[name].max <= minmax[name].max
        assert table[name].summary["bins"] == 2048


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_batch_size_does_not_change_the_table(method):
    one, _ = calibrate(Calibrate(method=method, batch_size=1))
    sixteen, _ = calibrate(Calibrate(method=method, batch_size=16, max_outputs=7))
    assert one == sixteen


def test_save_writes_the_table(tmp_path):
    path = tmp_path / "calib.json"
    table, _ = calibrate(Calibrate(method="percentile", tensors=["logits", "input"],
                                   save=str(path)))
    assert list(table) == ["logits", "input"]
    assert CalibrationTable.load(path) == table


def test_iterable_data_and_one_shot_batches():
    images = demo.calibration_data().arrays["input"]
    feeds = iter([{"input": images[:100]}, {"input": images[100:]}])
    table, stats = calibrate(Calibrate(), DataSource.from_feeds(feeds))
    assert stats["batches"] == 2 and table["input"].max == float(images.max())


@pytest.mark.parametrize("options, match", [
    ({"method": "kl"}, "unknown method 'kl'"),
    ({"bins": 1000}, "power of two"),
    ({"bins": 128}, "power of two ≥ 256"),
    ({"percentile": 0}, r"percentile must be in \(0, 100\]"),
    ({"batch_size": 0}, "must be positive"),
    ({"tensors": "logits"}, "list of names"),
    ({"run_on": "gpu"}, "run_on must be one of"),
])
def test_bad_options(options, match):
    with pytest.raises(PassError, match=match):
        Calibrate(**options)


def test_unknown_tensor_names_the_pass_and_the_tensor():
    with pytest.raises(PassError, match="pass 'calibrate' failed.*tensor 'nope'"):
        calibrate(Calibrate(tensors=["nope"]))


def test_a_table_in_the_context_is_reused_and_completed():
    model = load(demo.model_path())
    names = tensors_to_calibrate(model, CPU)
    ctx = Context(target=CPU, data=demo.calibration_data())
    PassManager([Calibrate(tensors=names[:3])]).run(model, ctx)
    partial = ctx.calibration
    record = PassManager([Calibrate()]).run(model, ctx)["calibrate"]
    assert (record.stats["reused"], record.stats["tensors"]) == (3, len(names) - 3)
    assert list(ctx.calibration) == [*names[:3], *names[3:]]
    assert all(ctx.calibration[n] == partial[n] for n in names[:3])
    again = PassManager([Calibrate()]).run(model, ctx)["calibrate"]
    assert again.stats == {"reused": len(names), "tensors": 0}
