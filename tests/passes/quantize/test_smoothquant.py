"""smoothquant: exact in float, folds where it is free, flattens outlier channels, helps int8.

The transformer-like graph below has what MiniLM has: a LayerNorm output read by three
MatMuls and by the residual Add (so its scales cannot fold: a Mul goes in front), a
LayerNorm read only by one MatMul (folds into its scale/bias), a constant Mul read only by a
MatMul (folds into the constant) and a GELU output (a Mul goes in front). Its input has two
outlier channels, 40× the others, as BERT-style activations do.
"""

from __future__ import annotations

import numpy as np
import pytest
from zoo import MODELS_DIR, count, feed_list

import onnxpress as ox
from onnxpress.errors import PassError, PreconditionError
from onnxpress.ir.model import Model
from onnxpress.passes import Calibrate
from onnxpress.passes.base import Context
from onnxpress.passes.calibrate.channels import channel_statistics
from onnxpress.passes.quantize.smoothquant import SmoothQuant
from onnxpress.runtime.compare import compare
from onnxpress.runtime.data import DataSource
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs, make_model

K, N = 32, 48
OUTLIERS = (3, 17)


def _outlier_model() -> Model:
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    gamma = np.ones(K, np.float32)
    gamma[list(OUTLIERS)] = 40.0  # the LayerNorm's scale makes the outlier channels
    return make_model(f"""<ir_version: 9, opset_import: ["": 20]>
    block (float[B, 8, {K}] x) => (float[B, 8, {K}] y) {{
        h = LayerNormalization <axis = -1> (x, g1, b1)
        q = MatMul (h, wq)
        k = MatMul (h, wk)
        v = MatMul (h, wv)
        qk = Add (q, k)
        qkv = Add (qk, v)
        o = MatMul (qkv, wo)
        r = Add (o, h)
        h2 = LayerNormalization <axis = -1> (r, g1, b1)
        f = MatMul (h2, w1)
        a = Gelu (f)
        m = Mul (a, c)
        y2 = MatMul (m, w2)
        y = Add (y2, r)
    }}""", g1=gamma, b1=rng.standard_normal(K).astype(np.float32) * 0.1,
        wq=w(K, K), wk=w(K, K), wv=w(K, K), wo=w(K, K), w1=w(K, N),
        c=rng.uniform(0.5, 2.0, N).astype(np.float32), w2=w(N, K))


def _data(n: int = 32, seed: int = 1) -> DataSource:
    x = np.random.default_rng(seed).standard_normal((n, 8, K)).astype(np.float32)
    return DataSource.from_arrays({"x": x})


def test_outputs_equal_and_what_folds_vs_what_is_inserted():
    model = _outlier_model()
    smooth = ox.optimize(model, ["smoothquant"], data=_data())
    feeds = _data(4, seed=2).take(1)
    assert_same_outputs(model, smooth, feeds, rtol=1e-4, atol=1e-4)
    stats = smooth.report["smoothquant"].stats
    # h: 3 MatMuls + residual (insert); qkv: Add (insert); h2: LayerNorm alone (fold);
    # m: constant Mul alone (fold).
    assert stats["inputs"] == 4 and stats["matmuls"] == 6
    assert stats["folded"] == {"LayerNormalization": 1, "Mul": 1}
    assert stats["inserted"] == 2
    assert count(smooth, "Mul") == count(model, "Mul") + 2
    # The first LayerNorm still feeds the residual Add exactly: its constants are untouched,
    # the second LayerNorm (sharing them in the source) got its own copy.
    ln1, ln2 = [n for n in smooth.graph.nodes if n.op == "LayerNormalization"]
    np.testing.assert_array_equal(ln1.inputs[1].values, model.graph.nodes[0].inputs[1].values)
    assert ln2.inputs[1] is not ln1.inputs[1]


def test_smoothed_inputs_lose_their_outlier_channels():
    model = _outlier_model()
    smooth = ox.optimize(model, ["smoothquant"], data=_data())
    ctx = Context(get_target("cpu"), data=_data())
    # The Q/K/V MatMuls now read the inserted Mul's output.
    q_before = next(n for n in model.graph.nodes if n.op == "MatMul").inputs[0].name
    q_after = next(n for n in smooth.graph.nodes if n.op == "MatMul").inputs[0].name
    before = channel_statistics(model, ctx, {q_before: -1})[q_before].absmax()
    after = channel_statistics(smooth, ctx, {q_after: -1})[q_after].absmax()
    assert before.max() / np.median(before) > 20
    assert after.max() / np.median(after) < before.max() / np.median(before) / 4


def test_int8_error_drops_on_the_outlier_model():
    model = _outlier_model()
    plain = ["fuse", Calibrate(), "quantize-static"]
    smooth = ["fuse", "smoothquant", Calibrate(), "quantize-static"]
    data, held_out = _data(), _data(16, seed=3)
    error = {name: compare(model, ox.optimize(model, passes, data=data), held_out)[0]
             for name, passes in (("plain", plain), ("smooth", smooth))}
    # Measured: mean-abs 0.65 → 0.38, SNR 29.5 → 30.8 dB (the float residual dominates y).
    assert error["smooth"].mean_abs < 0.75 * error["plain"].mean_abs, error
    assert error["smooth"].snr_db > error["plain"].snr_db + 0.5, error


def test_auto_alpha_chooses_per_input_and_stays_exact():
    """Measured: auto picks α 0.4-0.55 per input here; mean-abs error 0.37 (α=0.5: 0.38)."""
    model = _outlier_model()
    data = _data()
    smooth = ox.optimize(model, [SmoothQuant(auto_alpha=True)], data=data)
    assert_same_outputs(model, smooth, _data(4, seed=2).take(1), rtol=1e-4, atol=1e-4)
    stats = smooth.report["smoothquant"].stats
    assert sum(stats["alphas"].values()) + stats["kept_unsmoothed"] == 4
    held_out = _data(16, seed=3)
    plain = ox.optimize(model, ["fuse", Calibrate(), "quantize-static"], data=data)
    auto = ox.optimize(model, ["fuse", SmoothQuant(auto_alpha=True), Calibrate(),
                               "quantize-static"], data=data)
    assert compare(model, auto, held_out)[0].mean_abs < 0.75 * compare(
        model, plain, held_out)[0].mean_abs


@pytest.mark.parametrize("fuse_first", [True, False])
def test_torch_transformer_outputs_equal(fuse_first):
    model = ox.load(MODELS_DIR / "torch_transformer.onnx")
    feeds = feed_list(model, 4)
    passes = (["fuse"] if fuse_first else []) + ["smoothquant"]
    smooth = ox.optimize(model, passes, data=DataSource.from_feeds(feeds))
    assert smooth.report["smoothquant"].stats["matmuls"] > 0
    assert_same_outputs(model, smooth, feeds, rtol=1e-4, atol=1e-4)


def test_min_outlier_ratio_skips_even_inputs():
    model = _outlier_model()
    smooth = ox.optimize(model, [SmoothQuant(min_outlier_ratio=1e6)], data=_data())
    stats = smooth.report["smoothquant"].stats
    assert stats["inputs"] == 0 and stats["no_outliers"] == 4
    assert not smooth.report["smoothquant"].changed


def test_bad_options_and_missing_data():
    with pytest.raises(PassError, match="alpha"):
        SmoothQuant(alpha=1.5)
    with pytest.raises(PreconditionError, match="data"):
        ox.optimize(_outlier_model(), ["smoothquant"])
