"""lowrank: W[K,N] → A[K,r]·B[r,N] where it pays, plain or whitened by the inputs' XᵀX."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import feed_list

from onnxpress import optimize
from onnxpress.errors import PassError, PreconditionError
from onnxpress.ir.model import Model
from onnxpress.passes.lowrank import LowRank
from onnxpress.testing import assert_same_outputs, make_model, run

HEADER = '<ir_version: 8, opset_import: ["": 17]>'


def _rank_r(k: int, n: int, r: int, seed: int = 0) -> np.ndarray:
    """A [k, n] matrix of rank exactly r."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((k, r)) @ rng.standard_normal((r, n)) / np.sqrt(r)
            ).astype(np.float32)


def _model(signature: str, body: str, **inits: np.ndarray) -> Model:
    return make_model(f"{HEADER}\ng {signature} {{\n{body}\n}}", **inits)


def _lowrank(model: Model, data=None, **options) -> tuple[Model, dict]:
    out = optimize(model, [LowRank(**options)], data=data)
    return out, out.report["lowrank"].stats


def _ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]


# Weights of rank 3 and shape K=16, N=12 (break-even rank 16·12/28 ≈ 6.9), in every layout.
CASES = {
    "matmul": ("(float[2,5,16] x) => (float[2,5,12] y)", "m = MatMul (x, w)\ny = Add (m, b)",
               lambda w: w, ["MatMul", "MatMul", "Add"]),
    "gemm_transB0": ("(float[4,16] x) => (float[4,12] y)",
                     "y = Gemm <alpha = 0.5, beta = 2.0> (x, w, b)", lambda w: w,
                     ["Gemm", "Gemm"]),
    "gemm_transB1": ("(float[4,16] x) => (float[4,12] y)", "y = Gemm <transB = 1> (x, w, b)",
                     lambda w: w.T, ["Gemm", "Gemm"]),
    "gemm_transA": ("(float[16,4] x) => (float[4,12] y)",
                    "y = Gemm <transA = 1, transB = 1> (x, w, b)", lambda w: w.T,
                    ["Gemm", "Gemm"]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("option", [{"rank_ratio": 1.0}, {"energy": 1.0}], ids=str)
def test_at_the_numerical_rank_outputs_are_reproduced(case, option):
    signature, body, layout, ops = CASES[case]
    w = layout(_rank_r(16, 12, 3))
    model = _model(signature, body, w=w, b=np.linspace(-1, 1, 12, dtype=np.float32))
    out, stats = _lowrank(model, **option)
    assert_same_outputs(model, out, feed_list(model), rtol=1e-4, atol=1e-4)
    assert _ops(out) == ops
    assert stats["factorized"] == 1 and stats["ranks"] == {"w": 3}
    assert stats["kept_energy"]["w"] == pytest.approx(1.0)
    assert stats["params_saved"] == 16 * 12 - 3 * (16 + 12)
    assert stats["flops_saved_per_row"] == 2 * stats["params_saved"]
    shapes = sorted(tuple(c.values.shape) for c in out.constants() if c.name.startswith("w_"))
    assert shapes == [(3, 12), (16, 3)]


def test_a_rank_that_saves_nothing_leaves_the_layer_and_says_why():
    model = _model("(float[4,16] x) => (float[4,12] y)", "y = MatMul (x, w)",
                   w=_rank_r(16, 12, 12))
    out, stats = _lowrank(model, rank_ratio=0.75)  # r = 9 ≥ 6.9
    assert not out.report["lowrank"].changed and _ops(out) == ["MatMul"]
    assert stats["skipped"]["w"].startswith("rank 9 ≥ K·N/(K+N) = 6.9 for W[16, 12]")
    assert "no selected layer pays" in stats["reason"]


def test_energy_picks_the_smallest_rank_keeping_that_fraction():
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((16, 12)))
    v, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    sigma = np.array([8, 4, 2, 1, 0.5, 0.25, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    w = ((u * sigma) @ v.T).astype(np.float32)
    energy = np.cumsum(sigma**2) / np.sum(sigma**2)  # 0.750, 0.937, 0.984, 0.996, …
    model = _model("(float[4,16] x) => (float[4,12] y)", "y = MatMul (x, w)", w=w)
    for rank in (1, 2, 3, 4):
        for fraction, expected in ((energy[rank - 1] - 1e-4, rank),
                                   (energy[rank - 1] + 1e-4, rank + 1)):
            _, stats = _lowrank(model, energy=fraction)
            assert stats["ranks"] == {"w": expected}
            assert stats["kept_energy"]["w"] == pytest.approx(energy[expected - 1], abs=1e-6)
    _, stats = _lowrank(model, energy=energy[0] + 1e-4, round_to=4)
    assert stats["ranks"] == {"w": 4}


def _correlated(n: int, seed: int) -> np.ndarray:
    """Inputs [n, 32] concentrated in a few directions that are not W's principal ones."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((32, 32))
    scales = np.r_[np.full(4, 5.0), np.full(28, 0.05)]
    return (rng.standard_normal((n, 32)) * scales @ mix).astype(np.float32)


def test_data_aware_svd_has_lower_output_error_than_plain_svd_at_the_same_rank():
    w = np.random.default_rng(4).standard_normal((32, 24)).astype(np.float32)
    model = _model("(float[N,32] x) => (float[N,24] y)", "y = MatMul (x, w)", w=w)
    test = {"x": _correlated(200, seed=1)}
    reference = run(model, test)[0]
    errors = {}
    for aware in (False, True):
        data = {"x": _correlated(512, seed=0)} if aware else None
        out, stats = _lowrank(model, data=data, rank_ratio=0.25, data_aware=aware)
        assert stats["ranks"] == {"w": 6}
        errors[aware] = np.linalg.norm(run(out, test)[0] - reference) / np.linalg.norm(reference)
    # Measured: plain 0.73, data-aware 0.022 — the inputs live mostly in 4 directions.
    assert errors[True] < 0.05 and errors[False] > 0.5


def test_data_aware_needs_data():
    model = _model("(float[4,16] x) => (float[4,12] y)", "y = MatMul (x, w)",
                   w=_rank_r(16, 12, 3))
    with pytest.raises(PreconditionError, match="needs calibration data"):
        optimize(model, [LowRank(rank_ratio=0.2, data_aware=True)])


def test_a_shared_weight_is_factorized_once_and_its_readers_share_the_factors():
    w = _rank_r(16, 16, 2)
    model = _model("(float[4,16] x) => (float[4,16] y)",
                   "a = MatMul (x, w)\nb = Gemm (a, w)\ny = Add (a, b)", w=w)
    data = {"x": np.random.default_rng(5).standard_normal((64, 16)).astype(np.float32)}
    out, stats = _lowrank(model, data=data, rank_ratio=1.0, data_aware=True)
    assert_same_outputs(model, out, feed_list(model), rtol=1e-4, atol=1e-4)
    assert stats["factorized"] == 2 and stats["ranks"] == {"w": 2}
    assert stats["params_saved"] == 16 * 16 - 2 * 32
    assert stats["flops_saved_per_row"] == 2 * 2 * stats["params_saved"]
    assert len([c for c in out.constants() if c.name.startswith("w_")]) == 2


def test_include_and_exclude_select_layers_by_node_name():
    body = "[ffn_in] h = MatMul (x, w1)\n[ffn_out] y = MatMul (h, w2)"
    model = _model("(float[4,16] x) => (float[4,16] y)", body, w1=_rank_r(16, 16, 2),
                   w2=_rank_r(16, 16, 2, seed=1))
    _, stats = _lowrank(model, rank_ratio=1.0, include=("*_out",))
    assert list(stats["ranks"]) == ["w2"]
    _, stats = _lowrank(model, rank_ratio=1.0, exclude=("w2",))
    assert list(stats["ranks"]) == ["w1"]
    with pytest.raises(PassError, match="include pattern 'ffn' names no eligible weight"):
        _lowrank(model, rank_ratio=0.5, include=("ffn",))


def test_no_constant_weight_is_a_no_op_with_the_reason():
    model = _model("(float[4,16] x, float[16,12] v) => (float[4,12] y)", "y = MatMul (x, v)")
    out, stats = _lowrank(model, rank_ratio=0.5)
    assert not out.report["lowrank"].changed and "no constant 2-D" in stats["reason"]


@pytest.mark.parametrize(("options", "message"), [
    ({}, "give exactly one of rank_ratio and energy"),
    ({"rank_ratio": 0.5, "energy": 0.9}, "give exactly one of rank_ratio and energy"),
    ({"rank_ratio": 0.0}, r"rank_ratio must be in \(0, 1\]"),
    ({"energy": 1.5}, r"energy must be in \(0, 1\]"),
    ({"rank_ratio": 0.5, "round_to": 0}, "round_to and batch_size must be positive"),
    ({"rank_ratio": 0.5, "include": "ffn"}, "include must be a list"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(PassError, match=f"lowrank: {message}"):
        LowRank(**options)
