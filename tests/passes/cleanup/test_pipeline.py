"""`cleanup`: fold constants, remove no-ops and dead code to a fixed point, on every model."""

from __future__ import annotations

import numpy as np
from conftest import build
from zoo import ZOO, count, feed_list

import onnxpress as ox
from onnxpress.ir.verify import verify_structure
from onnxpress.passes import Cleanup, Context
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs, make_model

H = '<ir_version: 8, opset_import: ["": 17]>'


class _Result:
    """cleanup's record as a result: whether it changed the model, and its stats with its
    children's summed (``"<pass>.<key>"``)."""

    def __init__(self, record):
        self.changed = record.changed
        self.stats = {**record.stats, **record.totals()}


def _cleanup(model, **options):
    reference = model.copy()
    record = Context(target=get_target("cpu")).run(Cleanup(**options), model)
    return _Result(record), reference


def test_every_model_keeps_outputs_and_is_idempotent(any_model):
    result, reference = _cleanup(any_model)
    assert verify_structure(any_model) == []
    assert len(any_model) <= len(reference)
    assert_same_outputs(reference, any_model, feed_list(any_model), rtol=1e-5, atol=1e-5)
    again, _ = _cleanup(any_model)
    assert not again.changed and again.stats == {"rounds": 1}
    # A fixed point well before the cap: a pass that keeps reporting changes would spin to it.
    rounds = result.stats["rounds"]
    assert (2 <= rounds < Cleanup.max_rounds) if result.changed else rounds == 1


def test_same_bytes_twice(any_model, request):
    model_id = request.node.callspec.id
    first = ox.optimize(build(model_id), ["cleanup"]).to_onnx().SerializeToString()
    second = ox.optimize(build(model_id), ["cleanup"]).to_onnx().SerializeToString()
    assert first == second


def test_layernorm_constants_become_initializers():
    model = ZOO["layernorm_decomposed"]()
    result, reference = _cleanup(model)
    assert result.stats == {"rounds": 2, "fold-constants.constant_nodes": 2}
    assert sorted(c.name for c in model.constants()) == ["beta", "eps", "gamma", "two"]
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_exact_counts_on_the_zoo():
    expected = {
        "layernorm_decomposed": (11, 9),   # the Pow exponent and epsilon Constant nodes
        "reshape": (8, 3),                 # Shape→Gather→Unsqueeze→Concat folded
        "control_flow": (8, 6),            # trip count and condition Constant nodes
        "conv_bn_relu": (3, 3),
        "transpose_chain": (4, 4),         # cancelling transposes are a fusion, not cleanup
        "dynamic_batch": (8, 8),           # Gather(Shape) picks the dynamic batch: kept
    }
    for name, (before, after) in expected.items():
        model = ZOO[name]()
        assert len(model) == before, name
        result, _ = _cleanup(model)
        assert len(model) == after, name
        assert result.changed == (before != after), name


def test_folding_exposes_a_no_op_and_dead_code():
    # The Reshape target is computed from Shape(x); once folded it equals x's shape, so the
    # Reshape is a no-op, and the weights only the dead branch read disappear.
    model = make_model(f"""{H}
    g (float[2,3,4] x) => (float[2,3,4] y) {{
        s = Shape (x)
        t = Reshape (x, s)
        y = Relu (t)
        dead = Mul (x, unused)
    }}""", unused=np.ones((2, 3, 4), np.float32))
    result, reference = _cleanup(model)
    assert [n.op for n in model.graph.nodes] == ["Relu"]
    assert model.nbytes == 0
    assert result.stats["fold-constants.shapes"] == 1
    assert result.stats["eliminate-identity.Reshape"] == 1
    assert result.stats["rounds"] == 2
    assert_same_outputs(reference, model, feed_list(model), rtol=0, atol=0)


def test_max_rounds_bounds_the_work():
    text = f"""{H}
    g (float[2,3,4] x) => (float[2,3,4] y) {{
        s = Shape (x)
        t = Reshape (x, s)
        y = Relu (t)
    }}"""
    result, _ = _cleanup(make_model(text), max_rounds=1)
    assert result.changed and result.stats["rounds"] == 1


def test_a_clean_model_is_unchanged():
    model = ZOO["gemm"]()
    result, _ = _cleanup(model)
    assert not result.changed and count(model) == 2
