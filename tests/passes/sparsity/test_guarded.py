"""Sensitivity-aware pruning: coupling through reductions and LSTM inputs, MAC targets,
measured sensitivities, the refit's rows and ridge, and the accuracy guard."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import graph, ints

import onnxpress as ox
from onnxpress import demo
from onnxpress.errors import GuardError, PassError
from onnxpress.ir import analyses
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context
from onnxpress.passes.manager import PassManager
from onnxpress.passes.sparsity.channels import PruneChannels, kept_channels
from onnxpress.passes.sparsity.coupling import analyze, node_label
from onnxpress.passes.sparsity.flops import layer_costs, total_macs
from onnxpress.passes.sparsity.guarded import PruneGuarded
from onnxpress.passes.sparsity.reconstruct import Reconstruct
from onnxpress.recipes import RECIPES
from onnxpress.runtime.data import DataSource
from onnxpress.targets import get_target
from onnxpress.testing import run

RNG = np.random.default_rng(5)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def mean_pooled(opset: int) -> Model:
    """A digits-like CNN pooled by torch's ``x.mean((2, 3))``: ReduceMean over H, W."""
    reduce = ("ReduceMean <axes = [2, 3], keepdims = 0> (r2)" if opset < 18
              else "ReduceMean <keepdims = 0> (r2, axes)")
    inits = {"axes": ints(2, 3)} if opset >= 18 else {}
    return graph("(float[N,3,8,8] x) => (float[N,10] y)", f"""
        c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        r1 = Relu (c1)
        c2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r1, w2, b2)
        r2 = Relu (c2)
        p = {reduce}
        y = Gemm <transB = 1> (p, w3, b3)""", opset=opset, w1=_w(16, 3, 3, 3), b1=_w(16),
                 w2=_w(16, 16, 3, 3), b2=_w(16), w3=_w(10, 16), b3=_w(10), **inits)


def crnn() -> Model:
    """Conv features read by an LSTM: ReduceMean over H, Transpose to [W, N, C], LSTM."""
    return graph("(float[1,3,4,10] x) => (float[10,1,1,6] y)", """
        c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        r1 = Relu (c1)
        p = ReduceMean <axes = [2], keepdims = 0> (r1)
        s = Transpose <perm = [2, 0, 1]> (p)
        y, h = LSTM <hidden_size = 6> (s, w, r, b)""", opset=13, w1=_w(16, 3, 3, 3), b1=_w(16),
                 w=_w(1, 24, 16), r=_w(1, 24, 6), b=_w(1, 48))


def _feed(model: Model, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    shape = [d if isinstance(d, int) else n for d in model.graph.inputs[0].shape]
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _zeroed_readers(model: Model, pruned: Model, layer: str) -> Model:
    """`model` with the reader columns of the channels `layer` lost in `pruned` zeroed: the
    same function as the pruned model (what the sensitivity probe relies on)."""
    kept = kept_channels(next(n for n in pruned.graph.nodes if node_label(n) == layer))
    masked = model.copy()
    coupling = analyze(masked)
    (group,) = [g for g in coupling.groups if layer in g.label]
    for edit in coupling.edits:
        if edit.role == "consumer" and set(edit.layout.spaces) & set(group.spaces):
            keep = edit.layout.positions(dict.fromkeys(group.spaces, kept))
            values = np.array(edit.node.inputs[1].values)
            dead = [slice(None)] * values.ndim
            dead[edit.axis] = np.setdiff1d(np.arange(values.shape[edit.axis]), keep)
            values[tuple(dead)] = 0
            edit.node.inputs[1].values = values
    return masked


# --------------------------------------------------------------------------------------------
# Coupling gaps
@pytest.mark.parametrize("opset", [13, 18])
def test_mean_pooling_couples_like_global_average_pool(opset):
    model = mean_pooled(opset)
    groups = {g.label: g for g in analyze(model).groups}
    assert groups["Conv→c2"].frozen is None
    assert [node_label(n) for n, _ in groups["Conv→c2"].consumers] == ["Gemm→y"]
    pruned = ox.optimize(model, [PruneChannels(ratio=0.5, round_to=4, prune_first=True)])
    assert pruned.report["prune-channels"].stats["widths"]["Conv→c2"] == "16 → 8"
    feed = _feed(model)
    # Pruning = zeroing what the readers see of the removed channels (before any refit).
    masked = _zeroed_readers(_zeroed_readers(model, pruned, "Conv→c1"), pruned, "Conv→c2")
    np.testing.assert_allclose(run(pruned, feed)[0], run(masked, feed)[0], rtol=1e-4,
                               atol=1e-5)


def test_a_reduction_over_the_channel_axis_freezes_with_the_reason():
    model = graph("(float[N,3,8,8] x) => (float[N,8,8] y)", """
        c = Conv <kernel_shape = [1, 1]> (x, w)
        y = ReduceSum <keepdims = 0> (c, axes)""", opset=13, w=_w(8, 3, 1, 1),
                  axes=ints(1))
    (group,) = analyze(model).groups
    assert "ReduceSum node 'ReduceSum→y' reduces the channel axis" in group.frozen


def test_lstm_inputs_are_pruned_through_transpose_and_its_hidden_channels_stay():
    model = crnn()
    (group,) = analyze(model).groups
    assert group.frozen is None
    assert [n.op for n, _ in group.consumers] == ["LSTM"]
    pruned = ox.optimize(model, [PruneChannels(ratio=0.5, round_to=8, prune_first=True)])
    lstm = next(n for n in pruned.graph.nodes if n.op == "LSTM")
    assert lstm.inputs[1].values.shape == (1, 24, 8)  # input channels 16 → 8, gates whole
    feed = _feed(model)
    np.testing.assert_allclose(run(pruned, feed)[0],
                               run(_zeroed_readers(model, pruned, "Conv→c1"), feed)[0],
                               rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Targets in multiply-accumulates
def _macs(model: Model) -> float:
    """Conv/Gemm MACs per sample from weight and output shapes, counted independently."""
    model.analysis(analyses.shapes)
    total = 0
    for node in model.graph.nodes:
        w = node.inputs[1].values if node.op in ("Conv", "Gemm") else None
        if node.op == "Conv":
            total += np.prod(node.outputs[0].shape[2:]) * w.size
        elif node.op == "Gemm":
            total += w.size
    return float(total)


def test_a_mac_target_is_met_and_measured_from_shapes():
    model = mean_pooled(13)
    coupling = analyze(model)
    assert total_macs(layer_costs(coupling, list(model.graph.nodes)),
                      [0] * len(coupling.groups)) == _macs(model)
    out = ox.optimize(model, [PruneChannels(target=0.5, round_to=4, prune_first=True)])
    stats = out.report["prune-channels"].stats
    assert stats["macs_ratio"] <= 0.5
    assert _macs(out) / _macs(model) == pytest.approx(stats["macs_ratio"], abs=1e-4)
    assert stats["sensitivity"].startswith("not measured")


def test_measured_sensitivity_spends_the_cut_where_it_costs_least():
    # Half of the first conv's filters are near zero: removing them changes nothing, so its
    # measured sensitivity is tiny and the MAC cut lands there before the second conv's.
    model = mean_pooled(13)
    first = next(n for n in model.graph.nodes if n.op == "Conv")
    weight = np.array(first.inputs[1].values)
    weight[8:] *= 1e-4
    first.inputs[1].values, first.inputs[2].values = weight, np.zeros(16, np.float32)
    data = DataSource.from_arrays(_feed(model, 32))
    out = ox.optimize(model, [PruneChannels(target=0.6, round_to=4, prune_first=True)],
                      data=data)
    stats = out.report["prune-channels"].stats
    sens = stats["sensitivity"]
    assert sens["Conv→c1"] < 1e-3 < sens["Conv→c2"]
    assert stats["widths"]["Conv→c1"] == "16 → 8" and stats["macs_ratio"] <= 0.6


def test_ratio_and_target_together_are_refused():
    with pytest.raises(PassError, match="not both"):
        PruneChannels(ratio=0.3, target=0.7)


# --------------------------------------------------------------------------------------------
# Reconstruct: drawn rows, held-out ridge, include / exclude
def test_drawn_rows_and_held_out_ridge_still_recover_the_teacher():
    teacher = mean_pooled(13)
    pruned = ox.optimize(teacher, [PruneChannels(ratio=0.5, round_to=4, prune_first=True)])
    data = DataSource.from_arrays(_feed(teacher, 64))
    ctx = Context(target=get_target("cpu"), data=data, reference=teacher)
    student = pruned.copy()
    stats = PassManager([Reconstruct(rows_per_batch=256)]).run(student, ctx)[
        "reconstruct"].stats
    assert set(stats["ridge"].values()) <= {1e-4, 1e-3, 1e-2, 1e-1, 1.0}
    assert all(after <= before for before, after in stats["error"].values())
    assert stats["error"]["Gemm→y"][1] < stats["error"]["Gemm→y"][0]
    again = pruned.copy()
    PassManager([Reconstruct(rows_per_batch=256)]).run(again, ctx)
    feed = _feed(teacher, 8, seed=3)
    np.testing.assert_array_equal(run(student, feed)[0], run(again, feed)[0])  # seeded rows


def test_include_and_exclude_choose_the_layers():
    teacher = mean_pooled(13)
    data = DataSource.from_arrays(_feed(teacher, 16))
    ctx = Context(target=get_target("cpu"), data=data, reference=teacher)
    stats = PassManager([Reconstruct(exclude=("Conv",))]).run(teacher.copy(), ctx)[
        "reconstruct"].stats
    assert list(stats["error"]) == ["Gemm→y"]
    assert stats["skipped"] == dict.fromkeys(["Conv→c1", "Conv→c2"],
                                             "left out by include/exclude")
    with pytest.raises(PassError, match="one string"):
        Reconstruct(include="conv")


# --------------------------------------------------------------------------------------------
# The guard
def _accuracy(model: Model) -> float:
    x = demo.test_data().arrays
    return float((run(model, x)[0].argmax(1) == demo.test_labels()).mean())


def test_the_recipe_is_guarded_and_keeps_digits_within_a_point():
    digits = ox.load(demo.model_path())
    out = ox.optimize(digits, RECIPES["prune-channels"], data=demo.calibration_data())
    stats = out.report["prune-guarded"].stats
    assert stats["held_back_split"] and stats["samples"] == 64
    assert "agreement" in stats["measured"]
    assert _accuracy(out) >= _accuracy(digits) - 0.01
    assert out.nbytes < 0.7 * digits.nbytes


def test_a_budget_no_pruning_meets_is_a_guard_error_with_the_numbers():
    model = mean_pooled(13)
    guarded = PruneGuarded(PruneChannels(target=0.4, round_to=4, prune_first=True),
                           min_cosine=0.99999, attempts=2, samples=32)
    with pytest.raises(GuardError, match=r"target=0\.4: y: cosine 0\.\d+.*target=0\.7: y: "):
        ox.optimize(model, [guarded], data=DataSource.from_arrays(_feed(model, 96)))
