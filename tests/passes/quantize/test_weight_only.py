"""quantize-weights: block-wise int4 / int8 weights and embeddings, two encodings.

onnxruntime must compute with exactly the integers, scales and zero points we wrote (the
packing round-trips through MatMulNBits and GatherBlockQuantized run as single ops), every
emitted model must pass the full checker and run, and outputs stay close to FP32 on a real
(small) transformer. Tolerances: mean cosine of the pooled output to FP32 >= 0.99 at 4 bits,
>= 0.9999 at 8 bits (measured 0.9968 / 0.99999).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from zoo import MODELS_DIR

import onnxpress as ox
from onnxpress.errors import PassError
from onnxpress.ir.opset import require_opset
from onnxpress.passes import QuantizeWeights
from onnxpress.passes.quantize.blockwise import round_to_nearest
from onnxpress.testing import make_model, run

TRANSFORMER = MODELS_DIR / "torch_transformer.onnx"
RNG = np.random.default_rng(0)
CALIBRATION = [{"input_ids": RNG.integers(0, 100, (8, 16)).astype(np.int64)} for _ in range(3)]
TEST = {"input_ids": RNG.integers(0, 100, (16, 16)).astype(np.int64)}


def _ops(model) -> list[str]:
    return [n.op for n in model.graph.nodes]


def _checked(model) -> onnx.ModelProto:
    proto = model.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


@functools.cache
def _quantized(target: str, bits: int, method: str):
    return ox.optimize(TRANSFORMER, [QuantizeWeights(bits=bits, method=method)],
                       data=CALIBRATION, target=target)


# --------------------------------------------------------------------------------------------
# The packing, checked against onnxruntime's own kernels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matmulnbits_computes_with_our_dequantized_weight(bits, symmetric):
    k, n = 80, 24  # K = 80: the last block of 32 is ragged
    w = RNG.standard_normal((k, n)).astype(np.float32)
    model = make_model(f'<ir_version: 8, opset_import: ["": 14]> g (float[3, {k}] x) => '
                       f'(float[3, {n}] y) {{ y = MatMul(x, w) }}', w=w)
    out = ox.optimize(model, [QuantizeWeights(bits=bits, symmetric=symmetric)])
    assert _ops(out) == ["MatMulNBits"]
    _checked(out)
    # x = rows of the identity: MatMulNBits returns the weight it really uses.
    eye = np.eye(k, dtype=np.float32)[:3]
    want = round_to_nearest(w.T, bits, 32, symmetric).dequantize().T
    np.testing.assert_allclose(run(out, {"x": eye})[0], want[:3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_gather_block_quantized_returns_our_dequantized_rows(bits):
    table = RNG.standard_normal((10, 64)).astype(np.float32)
    model = make_model('<ir_version: 8, opset_import: ["": 14]> g (int64[2, 5] i) => '
                       '(float[2, 5, 64] y) { y = Gather(t, i) }', t=table)
    out = ox.optimize(model, [QuantizeWeights(bits=bits)])
    assert _ops(out) == ["GatherBlockQuantized"]
    _checked(out)
    index = np.arange(10, dtype=np.int64).reshape(2, 5)
    want = round_to_nearest(table, bits, 32, False).dequantize()
    np.testing.assert_allclose(run(out, {"i": index})[0].reshape(10, 64), want, atol=1e-6)


# --------------------------------------------------------------------------------------------
# A real transformer, both encodings
@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
@pytest.mark.parametrize(("bits", "method", "floor"), [(4, "gptq", 0.99), (8, "rtn", 0.9999)])
def test_transformer_close_to_fp32(target, bits, method, floor):
    out = _quantized(target, bits, method)
    proto = _checked(out)
    (want,) = run(TRANSFORMER, TEST, optimize=True)[:1]
    (got,) = run(out, TEST, optimize=True)[:1]
    assert _cosine(want, got) >= floor
    ops = _ops(out)
    if target == "cpu":
        assert ops.count("MatMulNBits") == 8 and ops.count("GatherBlockQuantized") == 1
        assert out.opset == 14  # onnxruntime's ops need no opset change
    else:
        assert "MatMulNBits" not in ops and ops.count("DequantizeLinear") == 9
        assert out.opset == 21
    weights = sum(i.ByteSize() for i in proto.graph.initializer)
    original = sum(i.ByteSize() for i in onnx.load(str(TRANSFORMER)).graph.initializer)
    assert weights < (0.3 if bits == 4 else 0.45) * original


def test_gptq_beats_rtn_on_the_transformer():
    (want,) = run(TRANSFORMER, TEST, optimize=True)[:1]
    errors = {m: np.mean((run(_quantized("cpu", 4, m), TEST, optimize=True)[0] - want) ** 2)
              for m in ("rtn", "gptq")}
    assert errors["gptq"] < errors["rtn"]


# --------------------------------------------------------------------------------------------
# Tied weights, Gemm forms, opset conversion, errors
TIED = ('<ir_version: 8, opset_import: ["": 14]> g (int64[2, 3] i) => (float[2, 3, 12] y) '
        '{ e = Gather(t, i)  f = Reshape(e, s)  l = Gemm <transB = 1> (f, t)  y = Reshape(l, o) }')


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_tied_table_stored_once(target):
    table = RNG.standard_normal((12, 64)).astype(np.float32)
    model = make_model(TIED, t=table, s=np.array([6, 64]), o=np.array([2, 3, 12]))
    out = ox.optimize(model, [QuantizeWeights(bits=4)], target=target)
    proto = _checked(out)
    packed = [i for i in proto.graph.initializer if i.dims[0] == 12 and len(i.dims) >= 2
              and i.data_type in (onnx.TensorProto.UINT8, onnx.TensorProto.UINT4)
              and np.prod(i.dims) >= 12 * 32]
    assert len(packed) == 1, [i.name for i in packed]  # one copy of the integers
    index = np.array([[0, 3, 5], [7, 9, 11]], np.int64)
    deq = round_to_nearest(table, 4, 32, False).dequantize()
    want = (deq[index].reshape(6, 64) @ deq.T).reshape(2, 3, 12)
    np.testing.assert_allclose(run(out, {"i": index}, optimize=True)[0], want, rtol=1e-4,
                               atol=1e-4)


GEMM = ('<ir_version: 8, opset_import: ["": 14]> g (float[4, 64] x) => (float[4, 16] y) '
        '{{ y = Gemm <{attrs}> (x, w, b) }}')


@pytest.mark.parametrize("attrs", ["transB = 1, beta = 0.5", "transB = 0", "alpha = 2.0"])
def test_gemm_forms(attrs):
    trans = "transB = 1" in attrs
    w = RNG.standard_normal((16, 64) if trans else (64, 16)).astype(np.float32)
    bias = RNG.standard_normal(16).astype(np.float32)
    model = make_model(GEMM.format(attrs=attrs), w=w, b=bias)
    out = ox.optimize(model, [QuantizeWeights(bits=8)])
    result = out.report.records[-1].stats
    if "alpha" in attrs:
        assert not result.get("Gemm") and "alpha" in next(iter(result["skipped"].values()))
        return
    assert "MatMulNBits" in _ops(out) and "Gemm" not in _ops(out)
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    deq = round_to_nearest(w if trans else w.T, 8, 32, False).dequantize()
    want = x @ deq.T + (0.5 if "beta" in attrs else 1.0) * bias
    np.testing.assert_allclose(run(out, {"x": x})[0], want, rtol=1e-4, atol=1e-4)


def test_opset_raised_with_every_op_converted():
    """ReduceL2 takes `axes` as an input from opset 18: a bare opset bump leaves an invalid
    model (onnxruntime's quantizer does); conversion must rewrite it."""
    w = RNG.standard_normal((64, 16)).astype(np.float32)
    model = make_model('<ir_version: 8, opset_import: ["": 14]> g (float[2, 64] x) => '
                       '(float[2, 1] y) { m = MatMul(x, w)  y = ReduceL2 <axes = [1]> (m) }', w=w)
    out = ox.optimize(model, [QuantizeWeights(bits=4)], target="tensorrt")
    _checked(out)
    assert out.opset == 21
    reduce = next(n for n in out.graph.nodes if n.op == "ReduceL2")
    assert "axes" not in reduce.attrs and len(reduce.inputs) == 2
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=0.05)
    assert model.opset == 14  # the input is never modified


def test_unconvertible_model_fails_clearly():
    """A failed conversion names the encoding and leaves the model as it was."""
    model = ox.load(TRANSFORMER)
    with pytest.raises(PassError, match="needs opset 99"):
        require_opset(model, 99, "a future encoding")
    assert model.opset == 14


def test_bad_options_and_missing_data():
    with pytest.raises(ValueError, match="bits"):
        QuantizeWeights(bits=3)
    with pytest.raises(ValueError, match="block_size"):
        QuantizeWeights(block_size=48)
    with pytest.raises(PassError, match="needs sample inputs"):
        ox.optimize(TRANSFORMER, [QuantizeWeights(method="gptq")])


def test_matmulnbits_with_standard_embeddings_off_cpu():
    """Off the cpu target (onnxruntime's CUDA GatherBlockQuantized takes float16 scales only)
    MatMuls still become MatMulNBits and tables take the blocked DequantizeLinear."""
    out = ox.optimize(TRANSFORMER, [QuantizeWeights(bits=4, format="matmulnbits")],
                      target="tensorrt")
    _checked(out)
    ops = _ops(out)
    assert ops.count("MatMulNBits") == 8 and ops.count("DequantizeLinear") == 1
    assert out.opset == 21
    (want,) = run(TRANSFORMER, TEST, optimize=True)[:1]
    assert _cosine(want, run(out, TEST, optimize=True)[0]) >= 0.99
