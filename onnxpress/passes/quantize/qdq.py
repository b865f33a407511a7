"""The Q/DQ primitive: quantization parameters and the nodes that carry them.

Affine quantization maps a real value ``r`` to an integer ``q`` of a type with range
``[q_min, q_max]`` through a scale ``s > 0`` and a zero point ``z``:

    q = clamp(round(r / s) + z, q_min, q_max)          (QuantizeLinear)
    r ≈ (q - z) * s                                   (DequantizeLinear)

For a calibrated range ``[lo, hi]`` (always widened to contain 0, so that zero — padding,
ReLU's floor — is exact):

- symmetric: ``z = 0`` (0 for uint8 is 128), ``s = max(|lo|, |hi|) / ((q_max - q_min) / 2)``;
- asymmetric: ``s = (hi - lo) / (q_max - q_min)``, ``z = round(q_min - lo / s)``.

Weights are quantized here, once, and stored as integer initializers followed by a
DequantizeLinear, so the file shrinks ~4× and the runtime sees the exact node unit it fuses.
A bias feeding an int8 Conv/Gemm is stored as int32 with scale ``s_x · s_w`` and zero point 0:
then the integer accumulator ``Σ q_x q_w`` and the bias share one scale and add exactly.
Activations get a QuantizeLinear → DequantizeLinear pair on the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir.edit import consumers, insert_after, insert_before, is_graph_output, producer
from onnxpress.ir.model import Model

#: Smallest scale we emit: a zero scale is invalid for onnxruntime and TensorRT.
MIN_SCALE = 1e-12

#: float8 E4M3 (finite, no infinities: TensorRT's FP8) and its largest magnitude.
FP8_E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
FP8_MAX = 448.0

INT_RANGES = {
    np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor (arrays for per-channel, scalars otherwise)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    @property
    def dtype(self) -> np.dtype:
        """The integer type."""
        return self.zero_point.dtype


def qparams(lo: float | np.ndarray, hi: float | np.ndarray, dtype=np.int8, *,
            symmetric: bool, axis: int | None = None, narrow: bool = False) -> QParams:
    """Quantization parameters for the real range [lo, hi] (per channel if arrays).

    Args:
        lo: Lower range end, a scalar or one value per channel.
        hi: Upper range end, likewise.
        dtype: np.int8 or np.uint8.
        symmetric: Zero point at the middle of the type's range.
        axis: Channel axis for per-channel parameters.
        narrow: Use [-127, 127] for symmetric int8 (weights: keeps the range symmetric, as
            TensorRT and onnxruntime's symmetric weights do).
    """
    dtype = np.dtype(dtype)
    q_min, q_max = INT_RANGES[dtype]
    if narrow and dtype == np.int8:
        q_min = -127
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        scale = amax / ((q_max - q_min) / 2.0)
        zero = np.full_like(scale, 0 if dtype == np.int8 else 128)
    else:
        scale = (hi - lo) / (q_max - q_min)
        zero = np.round(q_min - lo / np.maximum(scale, MIN_SCALE))
    scale = np.maximum(scale, MIN_SCALE).astype(np.float32)
    zero = np.clip(zero, q_min, q_max).astype(dtype)
    return QParams(scale, zero, axis)


def quantize_array(values: np.ndarray, p: QParams) -> np.ndarray:
    """`values` quantized with `p` (broadcast along `p.axis` for per-channel).

    A float8 E4M3 zero point (always 0) means FP8: saturate to ±448, round to the format.
    """
    fp8 = p.dtype == FP8_E4M3
    scale, zero = p.scale, p.zero_point.astype(np.float64 if fp8 else np.int64)
    if p.axis is not None and scale.ndim:
        shape = [1] * values.ndim
        shape[p.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    if fp8:
        return np.clip(values.astype(np.float64) / scale, -FP8_MAX, FP8_MAX).astype(FP8_E4M3)
    q_min, q_max = INT_RANGES[p.dtype]
    q = np.round(values.astype(np.float64) / scale) + zero
    return np.clip(q, q_min, q_max).astype(p.dtype)


def weight_qparams(values: np.ndarray, axis: int | None, dtype=np.int8, bits: int = 8
                   ) -> QParams:
    """Symmetric parameters for a weight, per channel along `axis` (None: per tensor).

    `bits` < 8 keeps int8 storage but uses only ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``: with
    7 bits, x86 CPUs without VNNI can multiply uint8 activations by the weights in 16-bit
    pairs without saturating (`onnxpress.targets.Target.weight_bits`).
    """
    reduce = () if axis is None else tuple(i for i in range(values.ndim) if i != axis)
    amax = np.abs(values).max(axis=reduce or None, initial=0.0)
    p = qparams(-amax, amax, dtype, symmetric=True, axis=axis, narrow=True)
    if bits < 8:
        levels = 2 ** (bits - 1) - 1
        p = QParams((p.scale * (127 / levels)).astype(np.float32), p.zero_point, p.axis)
    return p


def _dq_node(model: Model, q: gs.Constant, p: QParams, hint: str) -> tuple[gs.Node, gs.Variable]:
    """DequantizeLinear of a constant, with an explicit zero point even when it is 0:
    onnxruntime's Gemm selector does not fuse a unit whose DQ omits it (measured)."""
    out = model.variable(f"{hint}_dq", dtype=np.float32, shape=list(q.values.shape))
    attrs = {"axis": p.axis} if p.axis is not None and np.ndim(p.scale) else {}
    inputs = [q, model.constant(f"{hint}_scale", p.scale),
              model.constant(f"{hint}_zp", p.zero_point)]
    node = model.node("DequantizeLinear", inputs, [out], hint=f"{hint}_dq", attrs=attrs)
    return node, out


def dequantized_constant(model: Model, reader: gs.Node, index: int, p: QParams,
                         values: np.ndarray | None = None) -> gs.Variable:
    """Store input `index` of `reader` (a float initializer) as integers + DequantizeLinear.

    The new DQ node goes just before `reader` and feeds only it (onnxruntime wants one DQ per
    node unit); the float initializer is left for other readers or dead code.
    """
    weight = reader.inputs[index]
    values = np.asarray(weight.values) if values is None else values
    q = model.constant(f"{weight.name}_q", quantize_array(values, p))
    node, out = _dq_node(model, q, p, weight.name)
    insert_before(model.graph, reader, [node])
    reader.inputs[index] = out
    return out


def quantize_activation(model: Model, tensor: gs.Variable, p: QParams,
                        readers: list[gs.Node] | None = None) -> gs.Variable:
    """Insert QuantizeLinear → DequantizeLinear on `tensor`; `readers` (default: all) read the
    dequantized tensor. Returns the DequantizeLinear output.

    With all readers switched, a graph output is moved too: the DequantizeLinear output takes
    its name, so the producer's only edge goes to the Q (what onnxruntime needs to fuse it)
    and the model's interface is unchanged.
    """
    hint = tensor.name
    every = readers is None
    readers = consumers(tensor) if every else readers  # before Q becomes a reader
    scale = model.constant(f"{hint}_scale", p.scale)
    zero = model.constant(f"{hint}_zp", p.zero_point)
    quantized = model.variable(f"{hint}_q", dtype=p.dtype, shape=tensor.shape)
    out = model.variable(f"{hint}_dq", dtype=tensor.dtype, shape=tensor.shape)
    q = model.node("QuantizeLinear", [tensor, scale, zero], [quantized], hint=f"{hint}_q")
    dq = model.node("DequantizeLinear", [quantized, scale, zero], [out], hint=f"{hint}_dq")
    for reader in readers:
        for i, t in enumerate(reader.inputs):
            if t is tensor:
                reader.inputs[i] = out
    if every and is_graph_output(model.graph, tensor):
        name = tensor.name
        tensor.name = model.fresh_name(f"{name}_float")
        out.name = name
        model.graph.outputs[:] = [out if t is tensor else t for t in model.graph.outputs]
    source = producer(tensor)
    if source is not None:
        insert_after(model.graph, source, [q, dq])
    else:
        model.graph.nodes[0:0] = [q, dq]
    return out
