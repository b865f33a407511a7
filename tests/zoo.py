"""The test zoo: small graphs in ONNX text format with seeded weights, and the real models.

`ZOO` maps a name to a builder returning a fresh `Model` each call (tests mutate what they
get). Each graph is the shape of something a pass must handle — Conv/BN/Relu chains, a
residual Add, depthwise convolution, Flatten→Gemm, MatMul+bias, PyTorch's decomposed
LayerNorm and both GELU forms, transpose chains, Shape→Reshape arithmetic, a symbolic batch
dimension and If/Loop bodies that capture outer tensors by name. Every one passes
`onnx.checker` and runs in onnxruntime (tested in ``tests/ir/test_io.py``).

`REAL_MODELS` are the exported files in ``tests/models`` (built by ``models/test_models.py``);
they are globbed when this module is imported, i.e. at collection time. `feeds` makes inputs
for any model: dynamic dimensions become batch 2 / sequence 7 and integer inputs token ids in
``[0, VOCAB)``, as ``tests/models/README.md`` prescribes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir.model import Model
from onnxpress.runtime.data import input_specs
from onnxpress.testing import make_model

HEADER = '<ir_version: 8, opset_import: ["": 17]>'

MODELS_DIR = Path(__file__).resolve().parent / "models"
#: Value of a dynamic first (batch) dimension in test feeds.
BATCH = 2
#: Value of every other dynamic dimension (README: "seq is at most 64").
SEQ = 7
#: Integer inputs are token ids in [0, VOCAB) (README: "token ids in [0, 100)").
VOCAB = 100


def graph(signature: str, body: str, opset: int = 17, **initializers: np.ndarray) -> Model:
    """A model from a graph signature (``(float[N,4] x) => (float[N,4] y)``) and a body."""
    return make_model(f'<ir_version: 8, opset_import: ["": {opset}]>\ng {signature} '
                      f"{{\n{body}\n}}", **initializers)


def ints(*values: int) -> np.ndarray:
    """An int64 constant (shapes, axes, split sizes)."""
    return np.array(values, np.int64)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _bn(rng: np.random.Generator, channels: int, prefix: str) -> dict[str, np.ndarray]:
    """Inference BatchNormalization parameters, none of them trivial (ones/zeros hide bugs)."""
    return {
        f"{prefix}_scale": rng.uniform(0.5, 1.5, channels).astype(np.float32),
        f"{prefix}_bias": _f32(rng, channels),
        f"{prefix}_mean": _f32(rng, channels),
        f"{prefix}_var": rng.uniform(0.5, 1.5, channels).astype(np.float32),
    }


def conv_bn_relu() -> Model:
    """Conv(3→4, 3x3, pad 1) → BatchNormalization → Relu."""
    rng = _rng(1)
    return make_model(f"""{HEADER}
    conv_bn_relu (float[1,3,8,8] x) => (float[1,4,8,8] y) {{
        c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w, b)
        n = BatchNormalization <epsilon = 0.00001> (c, bn_scale, bn_bias, bn_mean, bn_var)
        y = Relu (n)
    }}""", w=_f32(rng, 4, 3, 3, 3), b=_f32(rng, 4), **_bn(rng, 4, "bn"))


def residual_add() -> Model:
    """Two Conv/BN (Relu between) with the block input added back, then Relu."""
    rng = _rng(2)
    return make_model(f"""{HEADER}
    residual_add (float[1,4,8,8] x) => (float[1,4,8,8] y) {{
        c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        n1 = BatchNormalization (c1, bn1_scale, bn1_bias, bn1_mean, bn1_var)
        r1 = Relu (n1)
        c2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r1, w2, b2)
        n2 = BatchNormalization (c2, bn2_scale, bn2_bias, bn2_mean, bn2_var)
        s = Add (n2, x)
        y = Relu (s)
    }}""", w1=_f32(rng, 4, 4, 3, 3), b1=_f32(rng, 4), w2=_f32(rng, 4, 4, 3, 3),
        b2=_f32(rng, 4), **_bn(rng, 4, "bn1"), **_bn(rng, 4, "bn2"))


def concat() -> Model:
    """Two parallel convolutions (1x1 and 3x3) with Relu, concatenated on channels."""
    rng = _rng(3)
    return make_model(f"""{HEADER}
    concat (float[1,3,8,8] x) => (float[1,8,8,8] y) {{
        a = Conv <kernel_shape = [1, 1]> (x, wa, ba)
        ra = Relu (a)
        b = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wb, bb)
        rb = Relu (b)
        y = Concat <axis = 1> (ra, rb)
    }}""", wa=_f32(rng, 4, 3, 1, 1), ba=_f32(rng, 4), wb=_f32(rng, 4, 3, 3, 3),
        bb=_f32(rng, 4))


def depthwise_conv() -> Model:
    """Depthwise Conv (group = channels = 4) → Relu."""
    rng = _rng(4)
    return make_model(f"""{HEADER}
    depthwise_conv (float[1,4,8,8] x) => (float[1,4,8,8] y) {{
        c = Conv <group = 4, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w, b)
        y = Relu (c)
    }}""", w=_f32(rng, 4, 1, 3, 3), b=_f32(rng, 4))


def gemm() -> Model:
    """Flatten → Gemm(transB) with bias."""
    rng = _rng(5)
    return make_model(f"""{HEADER}
    gemm (float[2,3,4,4] x) => (float[2,10] y) {{
        f = Flatten <axis = 1> (x)
        y = Gemm <transB = 1> (f, w, b)
    }}""", w=_f32(rng, 10, 48), b=_f32(rng, 10))


def matmul() -> Model:
    """3-D MatMul [N,S,K]·[K,M] + bias, the transformer projection form."""
    rng = _rng(6)
    return make_model(f"""{HEADER}
    matmul (float[2,5,16] x) => (float[2,5,8] y) {{
        m = MatMul (x, w)
        y = Add (m, b)
    }}""", w=_f32(rng, 16, 8), b=_f32(rng, 8))


def layernorm_decomposed() -> Model:
    """LayerNorm as PyTorch's TorchScript exporter writes it, Constant nodes included."""
    rng = _rng(7)
    return make_model(f"""{HEADER}
    layernorm_decomposed (float[2,5,16] x) => (float[2,5,16] y) {{
        mean = ReduceMean <axes = [-1]> (x)
        d = Sub (x, mean)
        two = Constant <value = float {{2.0}}> ()
        sq = Pow (d, two)
        var = ReduceMean <axes = [-1]> (sq)
        eps = Constant <value = float {{0.00001}}> ()
        ve = Add (var, eps)
        std = Sqrt (ve)
        n = Div (d, std)
        g = Mul (n, gamma)
        y = Add (g, beta)
    }}""", gamma=rng.uniform(0.5, 1.5, 16).astype(np.float32), beta=_f32(rng, 16))


def gelu_erf() -> Model:
    """GELU, exact form: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    return make_model(f"""{HEADER}
    gelu_erf (float[2,5,16] x) => (float[2,5,16] y) {{
        a = Div (x, sqrt2)
        e = Erf (a)
        p = Add (e, one)
        m = Mul (x, p)
        y = Mul (m, half)
    }}""", sqrt2=np.array(np.sqrt(2.0), np.float32), one=np.array(1.0, np.float32),
        half=np.array(0.5, np.float32))


def gelu_tanh() -> Model:
    """GELU, tanh approximation: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""
    return make_model(f"""{HEADER}
    gelu_tanh (float[2,5,16] x) => (float[2,5,16] y) {{
        x3 = Pow (x, three)
        k = Mul (x3, c)
        i = Add (x, k)
        s = Mul (i, sqrt_2_pi)
        t = Tanh (s)
        p = Add (t, one)
        h = Mul (x, half)
        y = Mul (h, p)
    }}""", three=np.array(3.0, np.float32), c=np.array(0.044715, np.float32),
        sqrt_2_pi=np.array(np.sqrt(2.0 / np.pi), np.float32), one=np.array(1.0, np.float32),
        half=np.array(0.5, np.float32))


def transpose_chain() -> Model:
    """NCHW→NHWC→NCHW (cancelling pair), Relu, then a real Transpose."""
    return make_model(f"""{HEADER}
    transpose_chain (float[1,3,4,5] x) => (float[1,4,3,5] y) {{
        a = Transpose <perm = [0, 2, 3, 1]> (x)
        b = Transpose <perm = [0, 3, 1, 2]> (a)
        r = Relu (b)
        y = Transpose <perm = [0, 2, 1, 3]> (r)
    }}""")


def reshape() -> Model:
    """Shape→Gather→Unsqueeze→Concat→Reshape (exporter form), MatMul, Reshape [0,-1,3]."""
    rng = _rng(8)
    return make_model(f"""{HEADER}
    reshape (float[2,3,4] x) => (float[2,2,3] y) {{
        s = Shape (x)
        i0 = Constant <value = int64 {{0}}> ()
        n = Gather <axis = 0> (s, i0)
        nu = Unsqueeze (n, axes0)
        target = Concat <axis = 0> (nu, minus1)
        f = Reshape (x, target)
        h = MatMul (f, w)
        y = Reshape (h, shape2)
    }}""", axes0=np.array([0], np.int64), minus1=np.array([-1], np.int64),
        w=_f32(rng, 12, 6), shape2=np.array([0, -1, 3], np.int64))


def dynamic_batch() -> Model:
    """Symbolic batch "N": Conv → Relu → GlobalAveragePool → Reshape to [N, -1] via Shape."""
    rng = _rng(9)
    return make_model(f"""{HEADER}
    dynamic_batch (float[N,3,8,8] x) => (float[N,4] y) {{
        c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w, b)
        r = Relu (c)
        p = GlobalAveragePool (r)
        s = Shape (p)
        n = Gather <axis = 0> (s, i0)
        nu = Unsqueeze (n, axes0)
        target = Concat <axis = 0> (nu, minus1)
        y = Reshape (p, target)
    }}""", w=_f32(rng, 4, 3, 3, 3), b=_f32(rng, 4), i0=np.array(0, np.int64),
        axes0=np.array([0], np.int64), minus1=np.array([-1], np.int64))


def control_flow() -> Model:
    """If and Loop whose bodies read outer tensors by name.

    `h` (a Sigmoid of the input) is read only inside the If's then-branch, `w` and `step`
    (initializers) only inside the bodies: dead-code and toposort must count those captures.
    """
    rng = _rng(10)
    return make_model(f"""{HEADER}
    control_flow (float[2,4] x) => (float[2,4] y) {{
        h = Sigmoid (x)
        s = ReduceSum <keepdims = 0> (x)
        cond = Greater (s, zero)
        b = If (cond) <
            then_branch = then_g () => (float[2,4] t) {{ t = Mul (h, w) }},
            else_branch = else_g () => (float[2,4] e) {{ e = Add (x, w) }}
        >
        trip = Constant <value = int64 {{3}}> ()
        keep = Constant <value = bool {{1}}> ()
        l = Loop (trip, keep, b) <
            body = body_g (int64 i, bool c, float[2,4] v) => (bool c_out, float[2,4] v_out) {{
                c_out = Identity (c)
                v_out = Add (v, step)
            }}
        >
        y = Add (l, b)
    }}""", zero=np.array(0.0, np.float32), w=_f32(rng, 2, 4), step=_f32(rng, 4))


ZOO: dict[str, Callable[[], Model]] = {
    "conv_bn_relu": conv_bn_relu,
    "residual_add": residual_add,
    "concat": concat,
    "depthwise_conv": depthwise_conv,
    "gemm": gemm,
    "matmul": matmul,
    "layernorm_decomposed": layernorm_decomposed,
    "gelu_erf": gelu_erf,
    "gelu_tanh": gelu_tanh,
    "transpose_chain": transpose_chain,
    "reshape": reshape,
    "dynamic_batch": dynamic_batch,
    "control_flow": control_flow,
}

#: The exported models in tests/models, sorted; globbed at import (collection) time.
REAL_MODELS: list[Path] = sorted(MODELS_DIR.glob("*.onnx"))


def feeds(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """One feed dict for `model`: a dynamic first dimension is BATCH, any other SEQ; floats
    are standard normal (negated for odd seeds, so a branch on the sign of a sum sees both
    signs in `feed_list`), integers token ids in [0, VOCAB), bools random."""
    rng = np.random.default_rng(seed)
    sign = -1 if seed % 2 else 1
    result = {}
    for spec in input_specs(model):
        shape = tuple(d if isinstance(d, int) else (BATCH if axis == 0 else SEQ)
                      for axis, d in enumerate(spec.shape))
        if spec.dtype == np.bool_:
            result[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(spec.dtype, np.integer):
            result[spec.name] = rng.integers(0, VOCAB, size=shape).astype(spec.dtype)
        else:
            result[spec.name] = (sign * rng.standard_normal(size=shape)).astype(spec.dtype)
    return result


def feed_list(model: Model, n: int = 2) -> list[dict[str, np.ndarray]]:
    """`n` feed dicts with different seeds (both branches of an If get exercised)."""
    return [feeds(model, seed) for seed in range(n)]


def count(model: Model | gs.Graph, op: str | None = None) -> int:
    """Nodes of the main graph, or those of type `op`."""
    graph = model.graph if isinstance(model, Model) else model
    return sum(1 for n in graph.nodes if op is None or n.op == op)
