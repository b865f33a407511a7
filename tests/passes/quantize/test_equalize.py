"""equalize: exact on Conv-Relu-Conv and depthwise-separable chains, balanced ranges, what
blocks it, and better per-tensor int8 on the digits CNN."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from zoo import graph

import onnxpress as ox
from onnxpress import demo
from onnxpress.ir.model import Model
from onnxpress.passes import Calibrate
from onnxpress.passes.quantize.equalize import find_pairs
from onnxpress.runtime.compare import compare
from onnxpress.runtime.data import DataSource
from onnxpress.testing import assert_same_outputs


def _uneven(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Weights whose output channels differ in range by up to 100× (what CLE evens out)."""
    w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    return (w * np.logspace(-1, 1, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
            ).astype(np.float32)


def _conv_relu_conv(activation: str = "Relu") -> Model:
    rng = np.random.default_rng(0)
    return graph("(float[N, 4, 10, 10] x) => (float[N, 6, 10, 10] y)", f"""
        h = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
        a = {activation} (h)
        p = MaxPool <kernel_shape = [2, 2], strides = [1, 1], pads = [0, 0, 1, 1]> (a)
        y = Conv <pads = [1, 1, 1, 1]> (p, w2, b2)""",
                 w1=_uneven(rng, 8, 4, 3, 3), b1=rng.standard_normal(8).astype(np.float32),
                 w2=_uneven(rng, 6, 8, 3, 3), b2=rng.standard_normal(6).astype(np.float32))


def _depthwise_separable() -> Model:
    """Pointwise → Relu → depthwise → LeakyRelu → pointwise → GAP → Flatten → Gemm."""
    rng = np.random.default_rng(1)
    return graph("(float[N, 4, 8, 8] x) => (float[N, 5] y)", """
        a = Conv (x, pw1, c1)
        b = Relu (a)
        c = Conv <group = 16, pads = [1, 1, 1, 1]> (b, dw, c2)
        d = LeakyRelu <alpha = 0.1> (c)
        e = Conv (d, pw2, c3)
        f = Relu (e)
        g = GlobalAveragePool (f)
        h = Flatten (g)
        y = Gemm <transB = 1> (h, fc, c4)""",
                 pw1=_uneven(rng, 16, 4, 1, 1), c1=rng.standard_normal(16).astype(np.float32),
                 dw=_uneven(rng, 16, 1, 3, 3), c2=rng.standard_normal(16).astype(np.float32),
                 pw2=_uneven(rng, 12, 16, 1, 1), c3=rng.standard_normal(12).astype(np.float32),
                 fc=_uneven(rng, 5, 12), c4=rng.standard_normal(5).astype(np.float32))


def _feeds(model: Model, n: int = 4) -> dict[str, np.ndarray]:
    return DataSource.random(model, n=n).take(1)[0]


@pytest.mark.parametrize("build", [_conv_relu_conv, _depthwise_separable])
def test_outputs_equal_and_ranges_balanced(build):
    model = build()
    equalized = ox.optimize(model, ["equalize"])
    assert_same_outputs(model, equalized, _feeds(model), rtol=1e-4, atol=1e-5)
    stats = equalized.report["equalize"].stats
    assert stats["converged"] and stats["pairs"] == len(find_pairs(model)[0]) >= 1
    for pair in find_pairs(equalized)[0]:
        np.testing.assert_allclose(pair.first_range(), pair.second_range(), rtol=1e-2)
    # The uneven source ranges (100×) are evened out on every first layer.
    before = max(p.first_range().max() / p.first_range().min() for p in find_pairs(model)[0])
    assert stats["max_range_ratio"] < before / 3


def test_depthwise_chain_finds_every_pair():
    pairs, blocked = find_pairs(_depthwise_separable())
    assert [(p.first.op, [n.op for n in p.through], [n.op for n in p.second])
            for p in pairs] == [
        ("Conv", ["Relu"], ["Conv"]), ("Conv", ["LeakyRelu"], ["Conv"]),
        ("Conv", ["Relu", "GlobalAveragePool", "Flatten"], ["Gemm"])]
    assert blocked == {}
    assert ox.optimize(_depthwise_separable(), ["equalize"]).report["equalize"].stats[
        "depthwise"] == 1


@pytest.mark.parametrize("op", ["HardSwish", "Sigmoid"])
def test_non_homogeneous_activations_block_with_a_reason(op):
    result = ox.optimize(_conv_relu_conv(op), ["equalize"])
    stats = result.report["equalize"].stats
    assert not result.report["equalize"].changed and stats["pairs"] == 0
    assert stats["blocked"] == {f"{op} is not positively homogeneous": 1}


def test_second_layer_shared_by_two_readers_uses_one_scale():
    """A Relu output read by two Convs: both get the same input scaling (outputs equal)."""
    rng = np.random.default_rng(2)
    model = graph("(float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y, float[N, 2, 6, 6] z)", """
        h = Conv (x, w1, b1)
        a = Relu (h)
        y = Conv (a, w2, b2)
        z = Conv <pads = [1, 1, 1, 1]> (a, w3)""", w1=_uneven(rng, 8, 3, 1, 1),
                  b1=rng.standard_normal(8).astype(np.float32), w2=_uneven(rng, 4, 8, 1, 1),
                  b2=rng.standard_normal(4).astype(np.float32), w3=_uneven(rng, 2, 8, 3, 3))
    equalized = ox.optimize(model, ["equalize"])
    assert equalized.report["equalize"].stats["pairs"] == 1
    assert_same_outputs(model, equalized, _feeds(model), rtol=1e-4, atol=1e-5)


@functools.cache
def _digits_per_tensor(passes: tuple[str, ...]) -> float:
    test = dict(np.load(demo.model_path().parent / "digits_test.npz"))
    quantized = ox.optimize(demo.model_path(), ["fuse", *passes, Calibrate(method="percentile"),
                                                "quantize-static:per_channel=False"],
                            data=demo.calibration_data())
    return compare(demo.model_path(), quantized, test)[0].snr_db


def test_digits_per_tensor_int8_improves():
    """Measured: SNR of the logits 35.8 dB plain, 36.5 equalized, 40.8 with bias-correction
    too (per-tensor weights; per-channel ones gain nothing from equalization)."""
    plain, equalized = _digits_per_tensor(()), _digits_per_tensor(("equalize",))
    both = _digits_per_tensor(("equalize", "bias-correction:per_channel=False"))
    assert equalized > plain + 0.3
    assert both > plain + 3


def test_absorb_bias_moves_positive_floors_and_keeps_outputs_on_the_data():
    """Conv (bias +3: every pre-activation stays positive) → Relu → MaxPool → unpadded
    Conv without bias; the floor moves into a new bias of the second Conv."""
    rng = np.random.default_rng(3)
    model = graph("(float[N, 4, 8, 8] x) => (float[N, 6, 6, 6] y)", """
        h = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
        a = Relu (h)
        p = MaxPool <kernel_shape = [2, 2], strides = [1, 1]> (a)
        y = Conv (p, w2)""", w1=(rng.standard_normal((8, 4, 3, 3)) * 0.1).astype(np.float32),
                  b1=np.full(8, 3.0, np.float32),
                  w2=rng.standard_normal((6, 8, 2, 2)).astype(np.float32))
    x = rng.standard_normal((16, 4, 8, 8)).astype(np.float32)
    absorbed = ox.optimize(model, ["absorb-bias"], data=DataSource.from_arrays({"x": x}))
    stats = absorbed.report["absorb-bias"].stats
    assert stats == {"pairs": 1, "channels": 8}
    conv1, conv2 = [n for n in absorbed.graph.nodes if n.op == "Conv"]
    assert (np.asarray(conv1.inputs[2].values) < 3.0).all() and len(conv2.inputs) == 3
    assert_same_outputs(model, absorbed, {"x": x}, rtol=1e-4, atol=1e-4)


def test_absorb_bias_leaves_padded_second_layers_alone():
    result = ox.optimize(_conv_relu_conv(), ["absorb-bias"],
                         data=DataSource.random(_conv_relu_conv(), n=4))
    assert not result.report["absorb-bias"].changed
