"""Cross-layer equalization (Nagel et al., 2019): balance per-channel weight ranges of
consecutive layers so per-tensor and per-channel int8 lose less.

For a layer ``L1`` (Conv or Gemm, constant weight ``W1``, bias ``b1``) whose output channels
reach layers ``L2`` (Conv / Gemm / MatMul with constant weights) only through ops ``f`` that are
positively homogeneous per channel — ``f(x / s) = f(x) / s`` for ``s > 0``: Relu, LeakyRelu,
PRelu, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Flatten, or nothing —

    L2(f(L1(x))) = L2'(f(L1'(x)))   with   W1' = diag(s)⁻¹ W1,  b1' = b1 / s,
                                            W2' = W2 diag(s)   (input channels),

for any ``s > 0``. With ``r1_i = max|W1[i, …]|`` (output channel ``i`` of ``L1``) and ``r2_i`` the
largest ``|W2|`` reading channel ``i`` over every ``L2``, the choice

    s_i = sqrt(r1_i · r2_i) / r2_i = sqrt(r1_i / r2_i)

makes both ranges ``sqrt(r1_i · r2_i)``: a channel whose filter is tiny in ``L1`` no longer
rounds to a few int8 levels there. Depthwise layers (``group = C``) are where this pays most:
each output channel has its own small filter. Grouped ``L2`` convolutions scale the filters of
the group that reads channel ``i``; a Flatten before a Gemm maps channel ``i`` to its block of
``K / C`` columns.

Chains longer than two layers share layers between pairs, so pairs are equalized in graph order
and the sweep repeats until every scale is within `TOLERANCE` of 1 (at most `MAX_SWEEPS`);
the pass is then idempotent. Channels with a zero range on either side keep ``s = 1``.
`AbsorbBias` (``absorb-bias``, after ``equalize``) moves the part of ``L1``'s output that never
goes below a positive floor into the next layer's bias (Nagel et al., §4.2): equalization
scales some channels up, and a large always-on offset wastes their int8 range. With ``c_i =
max(0, min over the data of L1's output channel i)`` and a ReLU-family ``f`` in between,
``f(x − c) = f(x) − c`` wherever ``x ≥ c ≥ 0``, so

    b1' = b1 − c,   b2' = b2 + W2·c   (Conv: Σ over the kernel; Gemm: α·B·c / β)

keeps the outputs on the calibration data; lossy in general (an input whose pre-activation
dips below ``c`` changes). Only for ``L2`` without padding (a padded border would see ``0``, not
``−c``) and with a constant bias (a Conv gets one); MaxPool, global pooling and Flatten may
sit after the activation (they commute with ``− c``).

Equalization is exact in float. Not for HardSwish, SiLU (``x · Sigmoid(x)``), Clip (ReLU6),
Sigmoid, Tanh, GELU…: ``f(x/s) ≠ f(x)/s``, so those chains are skipped and counted in the
stats with the op that blocks them. Run after ``fuse`` (a BatchNormalization between the
layers blocks too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir.edit import consumers, is_graph_output
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.calibrate.channels import channel_statistics, require_data
from onnxpress.passes.quantize.bias_correction import output_shift
from onnxpress.passes.quantize.smoothquant import input_channel_axis
from onnxpress.passes.sparsity.coupling import set_constant

#: Ops with ``f(x / s) = f(x) / s`` per channel for ``s > 0`` (channel axis 1).
HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool",
                         "GlobalAveragePool", "GlobalMaxPool", "Flatten"})

#: Activations often found between convolutions that are not positively homogeneous.
NOT_HOMOGENEOUS = frozenset({"HardSwish", "HardSigmoid", "Sigmoid", "Clip", "Tanh", "Gelu",
                             "Elu", "Selu", "Softplus", "Mish", "Mul", "BatchNormalization"})

#: A pair is balanced when ``|log s_i| < TOLERANCE`` for every channel.
TOLERANCE = 1e-3

#: Sweeps over the pairs at most (chains converge geometrically; a few suffice).
MAX_SWEEPS = 64


def _float_weight(node: gs.Node) -> np.ndarray | None:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if isinstance(weight, gs.Constant):
        values = np.asarray(weight.values)
        if np.issubdtype(values.dtype, np.floating):
            return values
    return None


def output_channel_axis(node: gs.Node) -> int | None:
    """The axis of an ``L1`` weight holding its output channels; None if it cannot be ``L1``."""
    weight = _float_weight(node)
    if weight is None:
        return None
    if node.op == "Conv":
        return 0
    if node.op == "Gemm" and not node.attrs.get("transA", 0) and weight.ndim == 2:
        return 0 if node.attrs.get("transB", 0) else 1
    return None


def _reads_channels(node: gs.Node, tensor: gs.Tensor) -> bool:
    """Whether `node` can be an ``L2`` of `tensor`: a constant-weight layer reading it."""
    if not node.inputs or node.inputs[0] is not tensor:
        return False
    if node.op == "Conv":
        return _float_weight(node) is not None
    return input_channel_axis(node) is not None


@dataclass
class Pair:
    """``L1`` → homogeneous ops → every ``L2`` reading the result."""

    first: gs.Node
    through: list[gs.Node]
    second: list[gs.Node]

    @property
    def channels(self) -> int:
        """Output channels of ``L1``."""
        return np.asarray(self.first.inputs[1].values).shape[output_channel_axis(self.first)]

    def first_range(self) -> np.ndarray:
        """``r1``: ``max|W1|`` per output channel."""
        w = np.abs(np.asarray(self.first.inputs[1].values, np.float64))
        axis = output_channel_axis(self.first)
        return w.max(axis=tuple(a for a in range(w.ndim) if a != axis))

    def second_range(self) -> np.ndarray:
        """``r2``: the largest ``|W2|`` reading each channel, over every ``L2``."""
        return np.max(np.stack([_input_range(n, self.channels) for n in self.second]), axis=0)

    def apply(self, model: Model, scale: np.ndarray) -> None:
        """``W1 /= s`` (rows), ``b1 /= s``, ``W2 *= s`` (input channels of every ``L2``)."""
        first, axis = self.first, output_channel_axis(self.first)
        w1 = np.asarray(first.inputs[1].values)
        shape = [1] * w1.ndim
        shape[axis] = -1
        set_constant(model, first, 1, (w1 / scale.reshape(shape)).astype(w1.dtype))
        if len(first.inputs) > 2 and isinstance(first.inputs[2], gs.Constant):
            b1 = np.asarray(first.inputs[2].values)
            if b1.size in (1, scale.size):
                b1 = np.broadcast_to(b1.reshape(-1), scale.shape)
                set_constant(model, first, 2, (b1 / scale).astype(b1.dtype))
        for node in self.second:
            set_constant(model, node, 1, _scaled_input(node, scale))


def _conv_groups(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """A Conv weight ``[Cout, Cin/g, …]`` viewed as ``[g, Cout/g, Cin/g, …]``."""
    groups = int(node.attrs.get("group", 1))
    return w.reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])


def _input_range(node: gs.Node, channels: int) -> np.ndarray:
    """``max|W2|`` per input channel of an ``L2`` (its ``channels`` input channels)."""
    w = np.abs(np.asarray(node.inputs[1].values, np.float64))
    if node.op == "Conv":
        grouped = _conv_groups(node, w)
        return grouped.max(axis=(1, *range(3, grouped.ndim))).reshape(channels)
    axis = input_channel_axis(node)
    # After a Flatten, channel i is the block of K / C columns [i·K/C, (i+1)·K/C).
    return w.max(axis=1 - axis).reshape(channels, -1).max(axis=1)


def _scaled_input(node: gs.Node, scale: np.ndarray) -> np.ndarray:
    """An ``L2``'s weight with input channel ``i`` multiplied by ``s_i``."""
    w = np.asarray(node.inputs[1].values)
    if node.op == "Conv":
        grouped = _conv_groups(node, w)
        s = scale.reshape(grouped.shape[0], 1, grouped.shape[2], *([1] * (w.ndim - 2)))
        return (grouped * s).reshape(w.shape).astype(w.dtype)
    axis = input_channel_axis(node)
    s = np.repeat(scale, w.shape[axis] // scale.size)
    return (w * (s[:, None] if axis == 0 else s[None, :])).astype(w.dtype)


def find_pairs(model: Model) -> tuple[list[Pair], dict[str, int]]:
    """Every equalizable pair in graph order, and why other layer chains are not."""
    pairs, blocked = [], {}
    graph = model.graph
    for node in graph.nodes:
        if output_channel_axis(node) is None:
            continue
        tensor, through = node.outputs[0], []
        while True:
            readers = consumers(tensor)
            if not readers or is_graph_output(graph, tensor):
                break
            if all(_reads_channels(r, tensor) for r in readers):
                pair = Pair(node, through, readers)
                if all(_fits(r, pair.channels) for r in readers):
                    pairs.append(pair)
                break
            if len(readers) != 1:
                break
            op = readers[0].op
            if op not in HOMOGENEOUS or (op == "Flatten" and readers[0].attrs.get("axis", 1) != 1):
                if op in NOT_HOMOGENEOUS:
                    reason = (f"{op} between the layers (fuse it first)" if op ==
                              "BatchNormalization" else f"{op} is not positively homogeneous")
                    blocked[reason] = blocked.get(reason, 0) + 1
                break
            through.append(readers[0])
            tensor = readers[0].outputs[0]
    return pairs, blocked


def _fits(node: gs.Node, channels: int) -> bool:
    """Whether the ``L2``'s input channels are ``channels`` (a multiple of it after Flatten)."""
    w = np.asarray(node.inputs[1].values)
    if node.op == "Conv":
        return w.shape[1] * int(node.attrs.get("group", 1)) == channels
    size = w.shape[input_channel_axis(node)]
    return size % channels == 0


def balance(pair: Pair) -> np.ndarray:
    """``s_i = sqrt(r1_i / r2_i)``, 1 where either range is zero."""
    r1, r2 = pair.first_range(), pair.second_range()
    live = (r1 > 0) & (r2 > 0)
    return np.where(live, np.sqrt(np.where(live, r1, 1.0) / np.where(live, r2, 1.0)), 1.0)


@dataclass(frozen=True)
class Equalize(Pass):
    """Cross-layer equalization of Conv/Gemm pairs joined by ReLU-family ops (exact)."""

    name: ClassVar[str] = "equalize"
    exact: ClassVar[bool] = True

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Equalize every pair, sweeping until the scales settle."""
        pairs, blocked = find_pairs(model)
        stats = {"pairs": len(pairs), "sweeps": 0, "blocked": blocked}
        changed = False
        for _ in range(MAX_SWEEPS):
            moved = False
            for pair in pairs:
                scale = balance(pair)
                if np.abs(np.log(scale)).max(initial=0.0) >= TOLERANCE:
                    pair.apply(model, scale)
                    moved = True
            if not moved:
                break
            stats["sweeps"] += 1
            changed = True
        stats["depthwise"] = sum(int(p.first.attrs.get("group", 1)) > 1 for p in pairs)
        stats["converged"] = stats["sweeps"] < MAX_SWEEPS
        stats["max_range_ratio"] = _worst_ratio(pairs)
        return PassResult(changed, stats)


def _worst_ratio(pairs: list[Pair]) -> float:
    """Largest ``max / min`` of ``r1`` over the pairs' ``L1`` (1 = perfectly even channels)."""
    worst = 1.0
    for pair in pairs:
        r1 = pair.first_range()
        live = r1[r1 > 0]
        if live.size:
            worst = max(worst, float(live.max() / live.min()))
    return round(worst, 3) if math.isfinite(worst) else worst


#: Activations through which a positive floor can be moved into the next bias.
RELU_FAMILY = frozenset({"Relu", "LeakyRelu", "PRelu"})

#: Ops after the activation that commute with subtracting a per-channel constant.
SHIFT_EQUIVARIANT = frozenset({"MaxPool", "GlobalAveragePool", "GlobalMaxPool", "Flatten"})


def _bias(node: gs.Node, size: int) -> np.ndarray | None:
    """The layer's constant bias as ``[size]`` (None if it has none or it is not constant)."""
    if len(node.inputs) < 3 or not isinstance(node.inputs[2], gs.Constant):
        return None
    bias = np.asarray(node.inputs[2].values)
    return bias.reshape(-1) if bias.size == size else None


def _absorbable(pair: Pair) -> bool:
    """``L1`` → a ReLU-family op (→ pooling / Flatten) → ``L2``s without padding that can take
    a bias."""
    if not pair.through or pair.through[0].op not in RELU_FAMILY or any(
            n.op not in SHIFT_EQUIVARIANT for n in pair.through[1:]):
        return False
    if _bias(pair.first, pair.channels) is None:
        return False
    for node in pair.second:
        if node.op == "Conv":
            if any(node.attrs.get("pads", [0])) or node.attrs.get("auto_pad", "NOTSET") not in (
                    "NOTSET", "VALID"):
                return False
        elif (node.op != "Gemm" or float(node.attrs.get("beta", 1.0)) == 0.0
              or _bias(node, np.asarray(node.inputs[1].values).shape[
                  1 - input_channel_axis(node)]) is None):
            return False
    return True


@dataclass(frozen=True)
class AbsorbBias(Pass):
    """Move each ReLU input's positive floor from ``L1``'s bias into ``L2``'s (lossy).

    Attributes:
        batch_size: Samples per inference batch of the measurement.
    """

    name: ClassVar[str] = "absorb-bias"
    exact: ClassVar[bool] = False

    batch_size: int = 32

    def requires(self, model: Model, ctx: Context) -> None:
        """The floors are measured on the pipeline's data."""
        require_data(ctx, self.name)

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Measure every absorbable pair's pre-activation minimum, then move the floors."""
        pairs = [p for p in find_pairs(model)[0] if _absorbable(p)]
        stats = {"pairs": 0, "channels": 0}
        if not pairs:
            stats["reason"] = "no Conv/Gemm → Relu-family → unpadded Conv/Gemm with biases"
            return PassResult(False, stats)
        observed = channel_statistics(model, ctx, {p.first.outputs[0].name: 1 for p in pairs},
                                      batch_size=self.batch_size)
        for pair in pairs:
            floor = np.maximum(observed[pair.first.outputs[0].name].min, 0.0)
            if not floor.any():
                continue
            b1 = np.asarray(pair.first.inputs[2].values)
            set_constant(model, pair.first, 2,
                         (b1 - floor.reshape(b1.shape)).astype(b1.dtype))
            for node in pair.second:
                if len(node.inputs) < 3:  # a Conv without bias gets one
                    out = np.asarray(node.inputs[1].values).shape[0]
                    node.inputs.append(model.constant(f"{node.name}_bias",
                                                      np.zeros(out, np.float32)))
                b2 = np.asarray(node.inputs[2].values)
                w2 = np.asarray(node.inputs[1].values, np.float64)
                # After a Flatten, channel i is K / C consecutive Gemm inputs.
                per_input = floor if node.op == "Conv" else np.repeat(
                    floor, w2.shape[input_channel_axis(node)] // floor.size)
                shift = output_shift(node, w2, per_input)
                shift = shift / float(node.attrs.get("beta", 1.0))
                set_constant(model, node, 2, (b2 + shift.reshape(b2.shape)).astype(b2.dtype))
            stats["pairs"] += 1
            stats["channels"] += int((floor > 0).sum())
        return PassResult(stats["pairs"] > 0, stats)
