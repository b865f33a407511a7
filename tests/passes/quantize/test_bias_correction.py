"""bias-correction: the corrected layer with rounded weights keeps the float layer's mean
output, and int8 digits gets closer to FP32."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import graph

import onnxpress as ox
from onnxpress import demo
from onnxpress.errors import PreconditionError
from onnxpress.passes import Calibrate
from onnxpress.passes.quantize.qdq import weight_qparams
from onnxpress.passes.quantize.sensitivity import fake_quantize
from onnxpress.runtime.compare import compare
from onnxpress.runtime.data import DataSource
from onnxpress.targets import get_target
from onnxpress.testing import run


def _layers():
    """A grouped 3×3 Conv → Relu → GlobalAveragePool → Flatten → Gemm (alpha 0.5)."""
    rng = np.random.default_rng(0)
    return graph("(float[N, 4, 6, 6] x) => (float[N, 8, 4, 4] h, float[N, 3] y)", """
        h = Conv <group = 2> (x, w, b)
        r = Relu (h)
        p = GlobalAveragePool (r)
        f = Flatten (p)
        y = Gemm <transB = 1, alpha = 0.5> (f, fc, c)""",
                 w=rng.standard_normal((8, 2, 3, 3)).astype(np.float32),
                 b=rng.standard_normal(8).astype(np.float32),
                 fc=rng.standard_normal((3, 8)).astype(np.float32),
                 c=rng.standard_normal(3).astype(np.float32))


def test_rounded_weights_with_corrected_bias_keep_the_mean_output():
    model = _layers()
    x = (np.random.default_rng(1).random((256, 4, 6, 6)) + 0.5).astype(np.float32)  # E[x] ≠ 0
    data = DataSource.from_arrays({"x": x})
    corrected = ox.optimize(model, ["bias-correction"], data=data)
    assert corrected.report["bias-correction"].stats["layers"] == 2
    # Round the corrected model's Conv weights as quantize-static will, keep its new bias.
    bits = get_target("cpu").weight_bits
    conv = next(n for n in corrected.graph.nodes if n.op == "Conv")
    w = np.asarray(conv.inputs[1].values)
    conv.inputs[1].values = fake_quantize(w, weight_qparams(w, 0, bits=bits))
    float_h = run(model, {"x": x})[0].mean(axis=(0, 2, 3))
    corrected_shift = run(corrected, {"x": x})[0].mean(axis=(0, 2, 3)) - float_h
    # Without the correction, rounding alone shifts the channel means.
    uncorrected = model.copy()
    conv = next(n for n in uncorrected.graph.nodes if n.op == "Conv")
    conv.inputs[1].values = fake_quantize(w, weight_qparams(w, 0, bits=bits))
    shift = run(uncorrected, {"x": x})[0].mean(axis=(0, 2, 3)) - float_h
    assert np.abs(shift).max() > 1e-3
    # ΔW·E[x] uses the channel mean over all pixels, while a 3×3 window without padding
    # weighs the border pixels less: what is left is that difference (measured 0.4 %).
    assert np.abs(corrected_shift).max() < 0.05 * np.abs(shift).max(), (shift,
                                                                          corrected_shift)


def test_matmul_add_bias_is_corrected_exactly():
    """A transformer-style linear layer (3-D MatMul + Add): ``E[x ΔW] = E[x] ΔW`` holds
    exactly, so the rounded layer's mean output matches the float one to rounding."""
    rng = np.random.default_rng(4)
    model = graph("(float[N, 5, 16] x) => (float[N, 5, 8] y)", """
        h = MatMul (x, w)
        y = Add (h, b)""", w=rng.standard_normal((16, 8)).astype(np.float32),
                  b=rng.standard_normal(8).astype(np.float32))
    x = (rng.random((32, 5, 16)) + 0.5).astype(np.float32)
    corrected = ox.optimize(model, ["bias-correction"], data=DataSource.from_arrays({"x": x}))
    assert corrected.report["bias-correction"].stats["layers"] == 1
    w = np.asarray(model.graph.nodes[0].inputs[1].values)
    rounded = fake_quantize(w, weight_qparams(w, 1, bits=get_target("cpu").weight_bits))
    add = corrected.graph.nodes[1]
    bias = np.asarray(add.inputs[1].values)
    float_mean = run(model, {"x": x})[0].mean(axis=(0, 1))
    rounded_mean = (x.astype(np.float64) @ rounded + bias).mean(axis=(0, 1))
    np.testing.assert_allclose(rounded_mean, float_mean, atol=1e-4)
    assert np.abs((x.astype(np.float64) @ rounded + np.asarray(model.graph.nodes[1].inputs[1]
                                                             .values)).mean(axis=(0, 1))
                  - float_mean).max() > 1e-3


def _digits(passes: list) -> float:
    test = dict(np.load(demo.model_path().parent / "digits_test.npz"))
    quantized = ox.optimize(demo.model_path(), ["fuse", *passes, Calibrate(method="percentile"),
                                                "quantize-static"],
                            data=demo.calibration_data())
    return compare(demo.model_path(), quantized, test)[0]


def test_digits_int8_output_error_drops():
    """Measured on an AVX2 (7-bit weights) CPU: mean-abs logit error 0.0573 → 0.0500, SNR
    40.1 → 41.2 dB."""
    plain, corrected = _digits([]), _digits(["bias-correction"])
    assert corrected.mean_abs < 0.93 * plain.mean_abs, (plain, corrected)
    assert corrected.snr_db > plain.snr_db + 0.4, (plain, corrected)


def test_needs_data():
    with pytest.raises(PreconditionError, match="data"):
        ox.optimize(_layers(), ["bias-correction"])
