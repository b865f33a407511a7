"""The constant weights of Conv / Gemm / MatMul and the axis each one is summed over.

Every weight pass (magnitude and 2:4 pruning, low-rank factorization) asks the same questions
of a node: is its weight (input 1) a constant float initializer, and along which axis of the
weight does the node sum — the *reduction axis*, the input channels:

    Conv    y[n,k,p] = Σ_c Σ_rs W[k,c,r,s]·x[n, g·C/g + c, p+rs]   W[K, C/g, kh, kw]   axis 1
    Gemm    y = A·B   (transB=0)                                     B[K, N]             axis 0
            y = A·Bᵀ  (transB=1)                                     B[N, K]             axis 1
    MatMul  y = x·B                                                  B[..., K, N]        axis -2

A grouped Conv sums over its own ``C/g`` input channels only, which is exactly axis 1 of its
weight, so the axis is the same whatever the group count.

A weight read by several nodes (tied or shared weights) is one `Weight` listing all of them:
changing it changes every reader, so a pass edits it once. It is skipped, with the reason,
when its readers disagree on the reduction axis or when some reader uses it as something
other than a weight of a selected op type (pruning it would change that reader too). Weights
a node computes at run time — a Constant node's output (run ``cleanup`` first), a
DequantizeLinear's output (prune before quantizing) — are skipped with the reason as well;
activation × activation MatMuls (attention) have no weight and are not mentioned.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import PassError
from onnxpress.ir.edit import consumers, producer
from onnxpress.ir.model import Model
from onnxpress.ir.select import matches as node_matches

#: The ops whose input 1 is a weight multiplied along a reduction axis.
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

#: Producers of a run-time weight, and what to do about it.
_COMPUTED = {
    "Constant": "is a Constant node's output, not an initializer: run 'cleanup' first",
    "DequantizeLinear": "is dequantized at run time: apply weight passes before quantizing",
}


def is_weighted(node: gs.Node, op_types: Sequence[str] = WEIGHTED_OPS) -> bool:
    """Whether `node` is an ONNX-domain op of `op_types` with a second input (its weight,
    constant or not)."""
    return (node.op in op_types and (node.domain or "") in ("", "ai.onnx")
            and len(node.inputs) > 1)


def reduction_axis(node: gs.Node, rank: int) -> int | None:
    """The axis of `node`'s weight (input 1, of rank `rank`) that the node sums over.

    None when `node` is not a weighted op or the rank does not fit it (a 1-D MatMul operand,
    a Conv weight without spatial axes).
    """
    if node.op == "Conv":
        return 1 if rank >= 3 else None
    if node.op == "Gemm":
        return (1 if node.attrs.get("transB", 0) else 0) if rank == 2 else None
    if node.op == "MatMul":
        return rank - 2 if rank >= 2 else None
    return None


@dataclass(frozen=True, eq=False)
class Weight:
    """A constant float weight and the nodes that multiply by it.

    Attributes:
        tensor: The initializer.
        nodes: Its readers, in graph order; each reads it as input 1 along `axis`.
        axis: The reduction axis of the weight (see the module docstring).
    """

    tensor: gs.Constant
    nodes: tuple[gs.Node, ...]
    axis: int

    @property
    def name(self) -> str:
        """The initializer's name (what users' patterns and reports refer to)."""
        return self.tensor.name

    @property
    def values(self) -> np.ndarray:
        """The weight's array."""
        return np.asarray(self.tensor.values)

    @property
    def reduction(self) -> int:
        """Length of the reduction axis: input channels per group, or K."""
        return int(self.values.shape[self.axis])


def find_weights(model: Model, op_types: Sequence[str] = WEIGHTED_OPS
                 ) -> tuple[list[Weight], dict[str, str]]:
    """The weights of the main graph's `op_types` nodes, and those that cannot be edited.

    Args:
        model: The model; not modified.
        op_types: A subset of `WEIGHTED_OPS`.

    Returns:
        The editable weights in graph order, one per initializer, and ``{name: reason}`` for
        the weights skipped (run-time, non-float, 1-D, shared with another use).
    """
    readers: dict[int, list[gs.Node]] = {}
    tensors: dict[int, gs.Tensor] = {}
    skipped: dict[str, str] = {}
    for node in model.graph.nodes:
        if not is_weighted(node, op_types):
            continue
        tensor = node.inputs[1]
        if not isinstance(tensor, gs.Constant):
            source = producer(tensor)
            if source is not None and source.op in _COMPUTED:
                skipped[tensor.name] = f"{node.op} weight {_COMPUTED[source.op]}"
            continue
        tensors.setdefault(id(tensor), tensor)
        readers.setdefault(id(tensor), []).append(node)
    found = []
    for key, tensor in tensors.items():
        weight, reason = _weight(tensor, readers[key], op_types)
        if weight is None:
            skipped[tensor.name] = reason
        else:
            found.append(weight)
    return found, skipped


def _weight(tensor: gs.Constant, nodes: list[gs.Node], op_types: Sequence[str]
            ) -> tuple[Weight | None, str]:
    """`tensor` as a `Weight` of `nodes`, or None and why it cannot be edited."""
    values = np.asarray(tensor.values)
    if values.dtype not in FLOAT_DTYPES:
        return None, f"{values.dtype} weight, not float"
    if values.ndim < 2:
        return None, f"{values.ndim}-D tensor"
    axes = {reduction_axis(n, values.ndim) for n in nodes}
    if None in axes:
        return None, f"rank-{values.ndim} weight does not fit {nodes[0].op}"
    if len(axes) > 1:
        return None, ("shared by nodes that sum over different axes "
                      f"({', '.join(f'{n.name} ({n.op})' for n in nodes)})")
    selected = {id(n) for n in nodes}
    for reader in consumers(tensor):
        other_use = [i for i, t in enumerate(reader.inputs) if t is tensor and i != 1]
        if id(reader) not in selected or other_use:
            return None, (f"also read by '{reader.name}' ({reader.op}), which editing it "
                          f"would change{'' if reader.op in op_types else ' (not in op_types)'}")
    return Weight(tensor, tuple(nodes), axes.pop()), ""


def matches(weight: Weight, pattern: str) -> bool:
    """Whether `pattern` names `weight`: a glob on the weight's name or a reader's node name,
    or a reader's op type."""
    return fnmatch.fnmatchcase(weight.name, pattern) or any(
        node_matches(n, [pattern]) for n in weight.nodes)


def select(weights: Sequence[Weight], *, include: Sequence[str] = (),
           exclude: Sequence[str] = (), owner: str) -> list[Weight]:
    """The weights some `include` pattern names (all when `include` is empty) and no
    `exclude` pattern names (see `matches`).

    Args:
        weights: The candidates (from `find_weights`).
        include: Patterns choosing the weights to edit.
        exclude: Patterns of weights to leave alone.
        owner: The pass, for messages.

    Raises:
        PassError: an `include` pattern names no candidate (a typo would otherwise edit
            nothing, silently). An `exclude` pattern naming none only warns: leaving
            alone what is not there is harmless.
    """
    for option, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if any(matches(w, pattern) for w in weights):
                continue
            message = (f"{owner}: {option} pattern '{pattern}' names no eligible weight "
                       f"(tried the weight, node and op names of {len(weights)} weights"
                       f"{', e.g. ' + repr(weights[0].nodes[0].name) if weights else ''})")
            if option == "include":
                raise PassError(message)
            warnings.warn(message, stacklevel=3)
    return [w for w in weights
            if (not include or any(matches(w, p) for p in include))
            and not any(matches(w, p) for p in exclude)]


def as_patterns(value: Sequence[str] | str, option: str, owner: str) -> tuple[str, ...]:
    """An option's pattern list as a tuple; one bare string is refused, since iterating it
    would give single characters."""
    if isinstance(value, str):
        raise PassError(f"{owner}: {option} must be a list of names or patterns, not one "
                        f"string; write {option}=({value!r},)")
    return tuple(value)
