"""Remove nodes that compute the identity function.

For a no-op node ``y = op(x, ...)``, every reader of ``y`` reads ``x`` instead:

- ``Identity``; inference ``Dropout`` (no ``training_mode``, or a constant false one, and the
  mask output unused);
- ``Reshape`` to the shape ``x`` already has, ``Transpose`` with ``perm = (0, 1, …)``,
  ``Cast`` to ``x``'s own type, ``Pad`` with all-zero pads, ``Slice`` that keeps every element
  (shapes from ONNX shape inference; a dynamic axis counts as kept only when the target
  copies it with 0 or it is the single -1);
- ``Unsqueeze(Squeeze(x, a), a)`` and ``Squeeze(Unsqueeze(x, a), a)``: the outer node is
  removed (the inner one goes to dead code if nothing else reads it). Squeeze without axes
  removes every size-1 axis, which Unsqueeze cannot know, so it must have explicit axes.

When ``y`` is a graph output, ``x`` takes its name — unless ``x`` is a graph input, another
graph output or an initializer, whose names are part of the interface; then the node stays.

Exact: each removed node returns its input unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxpress.ir import analyses, ops
from onnxpress.ir.edit import dead_code, is_graph_output, is_interface, producer, replace_uses
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult

INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class EliminateIdentity(Pass):
    """Remove Identity, inference Dropout and no-op Reshape/Transpose/Cast/Pad/Slice and
    Squeeze/Unsqueeze pairs."""

    name: ClassVar[str] = "eliminate-identity"

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Bypass every no-op node of the main graph."""
        model.analysis(analyses.shapes)
        graph = model.graph
        counts: dict[str, int] = {}
        for node in list(graph.nodes):
            source = _passthrough(node, model.opset)
            if source is None or not _can_bypass(graph, node, source):
                continue
            replace_uses(graph, node.outputs[0], source, graph_outputs=True)
            counts[node.op] = counts.get(node.op, 0) + 1
        if counts:
            dead_code(graph)
        return PassResult(bool(counts), counts)


def _can_bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor) -> bool:
    """Whether readers of the node's output may read `source` instead: there are readers left
    to move (a Dropout kept alive only for its mask has none after the first run), and the
    model's interface keeps its names."""
    out = node.outputs[0]
    if not is_graph_output(graph, out):
        return bool(out.outputs)
    return not is_interface(graph, source)


def _passthrough(node: gs.Node, opset: int) -> gs.Tensor | None:
    """The tensor `node` returns unchanged, or None if it is not a no-op."""
    if node.domain not in (None, "", "ai.onnx") or not node.inputs:
        return None
    if node.op in _NO_OP:
        return node.inputs[0] if _NO_OP[node.op](node, node.inputs[0], opset) else None
    if node.op in _INVERSE:
        return _undone(node)
    return None


def _const(node: gs.Node, index: int, attr: str | None = None) -> np.ndarray | None:
    """The constant operand (input `index`, else attribute `attr`); None if absent or computed
    at run time (then the node is not known to be a no-op)."""
    try:
        return ops.operand(node, index, attr)
    except ops.DynamicOperand:
        return None


def _identity(node, x, opset) -> bool:
    return True


def _dropout(node, x, opset) -> bool:
    if ops.optional_input(node, 2) is None:
        return True
    training = _const(node, 2)
    return training is not None and not bool(training)


def _reshape(node, x, opset) -> bool:
    """No-op when every target entry keeps its axis: 0 (copy, unless allowzero), the same
    static size, or a single -1 while every other axis is kept."""
    shape, target = x.shape, _const(node, 1, "shape")
    if shape is None or target is None or len(target) != len(shape):
        return False
    copy_zero = not node.attrs.get("allowzero", 0)
    kept = [(t == 0 and copy_zero) or (isinstance(d, int) and t == d)
            for d, t in zip(shape, target.tolist(), strict=True)]
    return all(kept) or (kept.count(False) == 1 and target.tolist()[kept.index(False)] == -1)


def _transpose(node, x, opset) -> bool:
    perm = node.attrs.get("perm")
    return perm is not None and list(perm) == list(range(len(perm)))


def _cast(node, x, opset) -> bool:
    dtype = ops.dtype(x)
    return dtype is not None and np.dtype(dtype) == onnx.helper.tensor_dtype_to_np_dtype(
        node.attrs["to"])


def _pad(node, x, opset) -> bool:
    try:
        pads = ops.pad_operands(node).pads
    except ops.DynamicOperand:
        return False
    # opset >= 18 `axes` input only restricts where the zeros apply.
    return pads.size > 0 and not np.any(pads != 0)


def _slice(node, x, opset) -> bool:
    shape = ops.static_shape(x)
    try:
        operands = ops.slice_operands(node)
    except ops.DynamicOperand:
        return False  # known only at run time
    if operands is None:
        return False
    for start, end, axis, step in zip(*operands, strict=True):
        if start != 0 or step != 1:
            return False
        if end < INT64_MAX // 2:
            if shape is None or end < shape[int(axis)]:
                return False
    return True


def _axes(node: gs.Node, rank: int | None) -> list[int] | None:
    """Sorted, non-negative axes; None when absent, computed, or negative of unknown rank."""
    try:
        found = ops.axes(node, rank)
    except ops.DynamicOperand:
        return None
    if found is None or any(a < 0 for a in found):
        return None
    return sorted(found)


def _undone(outer: gs.Node) -> gs.Tensor | None:
    """For ``outer(inner(x, a), a)`` with inner the inverse of outer, return x."""
    inner = producer(outer.inputs[0])
    if inner is None or inner.op != _INVERSE[outer.op] or inner.domain not in (None, "",
                                                                               "ai.onnx"):
        return None
    # Axes are counted in the rank of the tensor that has them: the input of an outer
    # Unsqueeze's inner Squeeze, or the intermediate between Unsqueeze and an outer Squeeze.
    rank = ops.rank(inner.inputs[0]) if outer.op == "Unsqueeze" else ops.rank(outer.inputs[0])
    inner_axes, outer_axes = _axes(inner, rank), _axes(outer, rank)
    if inner_axes is None or inner_axes != outer_axes:
        return None
    return inner.inputs[0]


_NO_OP = {
    "Identity": _identity, "Dropout": _dropout, "Reshape": _reshape, "Transpose": _transpose,
    "Cast": _cast, "Pad": _pad, "Slice": _slice,
}
_INVERSE = {"Unsqueeze": "Squeeze", "Squeeze": "Unsqueeze"}
