"""2:4 semi-structured sparsity for TensorRT's sparse tensor cores, and its verifier.

TensorRT runs a layer on sparse tensor cores only if, for every output channel and every
kernel position, each run of four consecutive input channels holds at least two zeros
(TensorRT Developer Guide, "Structured Sparsity"; reference R-B8):

    count_nonzero(W[k, 4c:4c+4, r, s]) ≤ 2        Conv W[K, C/g, kh, kw], C/g % 4 == 0

and the same along the reduction (input-feature) axis of a fully connected weight: the last
axis of a Gemm(transB=1) weight ``[N, K]``, axis 0 of a Gemm(transB=0) or MatMul weight
``[K, N]`` (down the columns of ``B`` in ``y = x·B``). `onnxpress.passes.sparsity.weights`
gives that axis for each node.

`Sparsify2to4` moves the reduction axis last, views it as groups of four
``G = W'.reshape(..., C/4, 4)`` and keeps the two entries of largest ``|G|`` in each group
(the earlier one of equal magnitudes, so the result is deterministic), zeroing the other two
— NVIDIA ASP's ``m4n2_1d`` mask. A weight is sparsified only if it is a constant float
initializer whose reduction length is a multiple of 4; the others — depthwise and grouped
Conv with ``C/g`` not a multiple of 4, a stem Conv on 1 or 3 channels, a Gemm with 10
inputs — are left dense and listed in the stats with the reason. A weight shared by several
nodes is sparsified once.

Lossy: without recovery (retraining, or least-squares reconstruction) magnitude 2:4 pruning
of a trained network loses accuracy; TensorRT only uses sparse kernels where they are faster
(large batches, ``--sparsity=enable`` with ``--fp16`` / ``--int8``).

`check_2to4` mirrors TensorRT's own eligibility test on any model, including one quantized
after sparsification: a weight stored as integers behind a DequantizeLinear is zero exactly
where ``q == zero_point`` (the scale is positive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir.edit import producer
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import constant_value
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.sparsity.weights import Weight, find_weights, is_weighted, reduction_axis

#: Group length and how many entries of each group may be non-zero.
GROUP, KEEP = 4, 2


def mask_2to4(values: np.ndarray, axis: int) -> np.ndarray:
    """The 2:4 keep-mask of `values`: in each group of four along `axis`, the two entries of
    largest magnitude (the earlier of equal ones). ``values.shape[axis]`` must be a multiple
    of 4."""
    moved = np.moveaxis(np.abs(values), axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, GROUP)
    # A stable sort of -|w| ranks equal magnitudes by position: the earlier one is kept.
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :KEEP], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def is_2to4(values: np.ndarray, axis: int) -> bool:
    """TensorRT's test: the length along `axis` is a multiple of 4 and every group of four
    consecutive entries along it has at most two non-zeros."""
    if values.shape[axis] % GROUP:
        return False
    moved = np.moveaxis(values, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, GROUP)
    return bool((np.count_nonzero(groups, axis=-1) <= KEEP).all())


def check_2to4(model: Model) -> dict[str, bool]:
    """Whether each Conv / Gemm / MatMul weight of the main graph meets the 2:4 pattern.

    Weights are initializers, Constant-node outputs or DequantizeLinear of integer
    initializers; activation × activation MatMuls have none and are not listed. A weight
    whose reduction length is not a multiple of 4 is ``False`` (TensorRT cannot run it
    sparse); a shared weight is ``True`` only if the pattern holds along every reader's axis.

    Args:
        model: Any model; not modified.

    Returns:
        ``{initializer name: meets the pattern}``, in graph order. For a quantized weight the
        name is the integer initializer's.
    """
    result: dict[str, bool] = {}
    for node in model.graph.nodes:
        if not is_weighted(node):
            continue
        stored = _stored_weight(node.inputs[1])
        if stored is None:
            continue
        name, values = stored
        axis = reduction_axis(node, values.ndim)
        if axis is not None:
            result[name] = result.get(name, True) and is_2to4(values, axis)
    return result


def _stored_weight(tensor: gs.Tensor) -> tuple[str, np.ndarray] | None:
    """The name and values of the weight as stored, zero where the weight is zero; None if
    `tensor` is computed from activations."""
    value = constant_value(tensor)
    if value is not None:
        return tensor.name, value
    dq = producer(tensor)
    if dq is None or dq.op != "DequantizeLinear":
        return None
    q = constant_value(dq.inputs[0])
    if q is None or q.dtype.kind not in "iu":
        return None
    zero = constant_value(dq.inputs[2]) if len(dq.inputs) > 2 else None
    return dq.inputs[0].name, q.astype(np.int64) - _broadcast_zero(zero, dq, q.shape)


def _broadcast_zero(zero: np.ndarray | None, dq: gs.Node, shape: tuple[int, ...]
                    ) -> np.ndarray | int:
    """DequantizeLinear's zero point broadcast to the quantized tensor's shape: per tensor,
    per ``axis`` (1-D), or blocked (``block_size`` along ``axis``, same rank)."""
    if zero is None or zero.ndim == 0:
        return 0 if zero is None else zero.astype(np.int64)
    axis = int(dq.attrs.get("axis", 1)) % len(shape)
    zero = zero.astype(np.int64)
    block = int(dq.attrs.get("block_size", 0))
    if block:
        return np.repeat(zero, block, axis=axis).take(range(shape[axis]), axis=axis)
    return zero.reshape([-1 if i == axis else 1 for i in range(len(shape))])


def _reason(weight: Weight) -> str | None:
    """Why `weight` cannot be made 2:4, or None."""
    if weight.reduction % GROUP == 0:
        return None
    convs = [n for n in weight.nodes if n.op == "Conv"]
    if convs:
        group = int(convs[0].attrs.get("group", 1))
        if group == 1:
            return f"Conv has {weight.reduction} input channels, not a multiple of {GROUP}"
        kind = "depthwise" if weight.reduction == 1 else "grouped"
        return (f"{kind} Conv (group={group}) has {weight.reduction} input channels per "
                f"group, not a multiple of {GROUP}")
    return f"reduction length {weight.reduction} is not a multiple of {GROUP}"


@dataclass(frozen=True)
class Sparsify2to4(Pass):
    """Zero the two smallest of every four consecutive weights along the reduction axis of
    each Conv / Gemm / MatMul, the pattern TensorRT's sparse tensor cores run."""

    name: ClassVar[str] = "sparsify-2to4"
    exact: ClassVar[bool] = False

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Sparsify every eligible weight in place (same initializer, same name).

        Stats: ``sparsified`` (weights changed), ``already_2to4`` (weights that met the
        pattern already), ``sparsity`` (zeros / entries over the eligible weights) and
        ``skipped`` (``{weight: reason}``, dense ones included).
        """
        found, skipped = find_weights(model)
        eligible = []
        for weight in found:
            reason = _reason(weight)
            if reason is None:
                eligible.append(weight)
            else:
                skipped[weight.name] = reason
        changed = 0
        for weight in eligible:
            values = weight.values
            pruned = np.where(mask_2to4(values, weight.axis), values, np.zeros((), values.dtype))
            if np.array_equal(pruned, values):
                continue
            weight.tensor.values = pruned
            changed += 1
        entries = sum(w.values.size for w in eligible)
        stats = {"sparsified": changed, "already_2to4": len(eligible) - changed,
                 "sparsity": (float(sum(w.values.size - np.count_nonzero(w.values)
                                        for w in eligible)) / entries if entries else 0.0),
                 "skipped": skipped}
        if not eligible:
            stats["reason"] = "no Conv / Gemm / MatMul weight can be made 2:4 (see skipped)"
        return PassResult(changed > 0, stats)
