"""mixed-precision: int8 guarded on held-back data — within budget and not slower, or a
clear error; any feeds (variable lengths, fixed batch); fallbacks over every unit."""

import numpy as np
import onnx
import pytest
from zoo import REAL_MODELS, graph

import onnxpress as ox
from onnxpress import demo
from onnxpress.errors import GuardError, PreconditionError
from onnxpress.passes import Calibrate, Context, MixedPrecision, QuantizeStatic
from onnxpress.passes.quantize.qdq import qparams, weight_qparams
from onnxpress.passes.quantize.sensitivity import fake_quantize
from onnxpress.passes.quantize.static import is_quantized
from onnxpress.runtime.compare import compare
from onnxpress.runtime.data import DataSource
from onnxpress.runtime.guard import holdout
from onnxpress.targets import get_target
from onnxpress.testing import run

TRANSFORMER = next(p for p in REAL_MODELS if p.name == "torch_transformer.onnx")


def _tokens(n: int, seed: int, length: int = 12) -> DataSource:
    ids = np.random.default_rng(seed).integers(0, 100, (n, length)).astype(np.int64)
    return DataSource.from_arrays({"input_ids": ids})


def _ort_qdq(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None) -> np.ndarray:
    attrs = {"axis": axis} if axis is not None else {}
    nodes = [onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    g = onnx.helper.make_graph(
        nodes, "qdq", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, x.shape)],
        [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zero, "z")])
    return run(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)],
                                      ir_version=8), {"x": x})[0]


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_fake_quantize_equals_onnxruntime_quantize_dequantize(axis):
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32) * 3
    p = (weight_qparams(x, axis) if axis is not None
         else qparams(float(x.min()), float(x.max()), np.uint8, symmetric=False))
    np.testing.assert_allclose(fake_quantize(x, p), _ort_qdq(x, p.scale, p.zero_point, axis),
                               rtol=0, atol=1e-6)


def test_reaches_the_cosine_it_promises_on_other_samples_too():
    model = ox.optimize(TRANSFORMER, ["cleanup", Calibrate(),
                                      MixedPrecision(min_cosine=0.999, samples=16, latency=False)],
                        data=_tokens(48, 0))
    record = model.report["mixed-precision"]
    assert is_quantized(model) and "cosine" in record.stats["measured"]
    assert record.stats["quantized"] >= 1 and record.descendants("quantize-static")
    result = compare(TRANSFORMER, model, _tokens(16, 1))
    assert min(o.cosine for o in result.outputs) >= 0.998


def test_an_unreachable_budget_stops_with_the_numbers_and_the_worst_units():
    with pytest.raises(GuardError) as info:
        ox.optimize(TRANSFORMER, ["cleanup", Calibrate(),
                                  MixedPrecision(min_cosine=1.0, samples=8, latency=False)],
                    data=_tokens(8, 0))
    message = str(info.value)
    assert "misses the accuracy budget" in message and "cosine 0.9999" in message
    assert "Most sensitive units" in message


def test_needs_data_and_a_real_output_name():
    with pytest.raises(PreconditionError, match="calibrate"):
        ox.optimize(TRANSFORMER, ["mixed-precision"])
    with pytest.raises(PreconditionError, match="not outputs of the model"):
        ox.optimize(TRANSFORMER, [Calibrate(), MixedPrecision(outputs=("nope",))],
                    data=_tokens(8, 0))


def test_feeds_of_different_sequence_lengths():
    batches = [{"input_ids": _tokens(4, i, length).arrays["input_ids"]}
               for i, length in enumerate((5, 9, 12, 7, 16, 3))]
    data = DataSource.from_feeds(lambda: iter(batches))
    model = ox.optimize(TRANSFORMER, ["cleanup", Calibrate(),
                                      MixedPrecision(min_cosine=0.99, latency=False)], data=data)
    assert is_quantized(model)
    assert model.report["mixed-precision"].stats["samples"] == 24


def test_a_fixed_batch_of_one():
    model = graph("(float[1,3,8,8] x) => (float[1,4,8,8] y)",
                  "c = Conv <pads = [1, 1, 1, 1]> (x, w)\nr = Relu (c)\n"
                  "y = Conv <pads = [1, 1, 1, 1]> (r, v)",
                  w=np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32),
                  v=np.random.default_rng(1).normal(size=(4, 8, 3, 3)).astype(np.float32))
    data = DataSource.from_arrays(
        {"x": np.random.default_rng(2).normal(size=(40, 3, 8, 8)).astype(np.float32)})
    assert all(len(f["x"]) == 1 for f in holdout(model, data, 32))
    out = ox.optimize(model, [Calibrate(), MixedPrecision(latency=False)], data=data)
    assert is_quantized(out) and out.report["mixed-precision"].stats["samples"] == 32


def test_fallback_candidates_are_every_unit_not_only_weighted_layers():
    model = ox.optimize(demo.model_path(), ["fuse", Calibrate()], data=demo.calibration_data())
    ctx = Context(target=get_target("cpu"), data=demo.calibration_data())
    ox.passes.get("calibrate")().run(model, ctx)
    chosen = QuantizeStatic().plan(model, ctx.target)
    ranked = MixedPrecision()._ranked(model, ctx, chosen, holdout(model, ctx.data, 8))
    assert sorted(name for name, _ in ranked) == sorted(chosen.names())
    ops = {u.node.op for u in chosen.units}
    assert {"Add", "GlobalAveragePool"} <= ops and all(s >= 0 for _, s in ranked)


def test_the_latency_guard_refuses_a_result_that_does_not_pay():
    steps = ["fuse", Calibrate()]
    with pytest.raises(GuardError, match="does not pay here"):
        ox.optimize(demo.model_path(), [*steps, MixedPrecision(max_latency_ratio=0.01)],
                    data=demo.calibration_data())
    kept = ox.optimize(demo.model_path(), [*steps, MixedPrecision(max_latency_ratio=0.01,
                                                                  allow_slower=True)],
                       data=demo.calibration_data())
    assert is_quantized(kept) and kept.report["mixed-precision"].stats["latency_vs_float"] > 0.01
