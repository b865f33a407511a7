"""Multiply-accumulates of the Conv / ConvTranspose / Gemm / MatMul layers as channel groups
narrow, from static shapes.

A layer's cost is ``m · C_out · C_in`` multiply-accumulates per sample, ``m`` the output
positions times the kernel size (Conv: ``Π out_spatial · Π k`` with ``C_in`` the input
channels per conv group; ConvTranspose: ``Π in_spatial · Π k``; Gemm: 1; MatMul: the static
positions of its output but the last axis). A symbolic dimension counts as 1, a batch axis
never counts. When channel group ``g`` loses ``r_g`` of its channels, the layer loses
``a_g·r_g`` output channels and ``b_g·r_g`` input channels, where ``a_g`` and ``b_g`` are the
positions one channel of the group takes on its output and input axes (the strides of the
coupling's index maps: ``H·W`` after a Flatten, ``u`` for blocks, summed over occurrences):

    cost(r) = m · (C_out − Σ_g a_g r_g) · (C_in − Σ_g b_g r_g)

Grouped and depthwise Convs keep ``C_in`` (per conv group) and lose output channels only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.passes.sparsity.coupling import Coupling, SliceInput


@dataclass
class LayerCost:
    """One layer's multiply-accumulates and how the groups narrow it.

    Attributes:
        node: The layer.
        per: Multiply-accumulates per output channel per input channel.
        outputs, inputs: ``C_out`` and ``C_in`` (per conv group).
        out_per, in_per: Group index → positions one of its channels takes on the output /
            input axis.
    """

    node: gs.Node
    per: float
    outputs: int
    inputs: int
    out_per: dict[int, int] = field(default_factory=dict)
    in_per: dict[int, int] = field(default_factory=dict)

    def macs(self, removed: list[int]) -> float:
        """Multiply-accumulates with `removed[g]` channels gone from group g."""
        out = self.outputs - sum(a * removed[g] for g, a in self.out_per.items())
        into = self.inputs - sum(b * removed[g] for g, b in self.in_per.items())
        return self.per * max(out, 0) * max(into, 0)


def _positions(dims) -> int:
    return math.prod(d for d in dims if isinstance(d, int) and d > 0)


def _cost(node: gs.Node) -> LayerCost | None:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(weight, gs.Constant):
        return None
    shape, out = weight.values.shape, node.outputs[0].shape
    if node.op == "Conv" and out is not None:
        return LayerCost(node, _positions(out[2:]) * _positions(shape[2:]), shape[0], shape[1])
    if node.op == "ConvTranspose":
        into = node.inputs[0].shape
        group = int(node.attrs.get("group", 1))
        spatial = _positions(into[2:]) if into is not None else 1
        return LayerCost(node, spatial * _positions(shape[2:]) / group, shape[1] * group,
                         shape[0])
    if node.op == "Gemm" and len(shape) == 2:
        trans = int(node.attrs.get("transB", 0))
        return LayerCost(node, 1.0, shape[0 if trans else 1], shape[1 if trans else 0])
    if node.op == "MatMul" and len(shape) == 2:
        rows = _positions(out[1:-1]) if out is not None else 1
        return LayerCost(node, rows, shape[1], shape[0])
    return None


def layer_costs(coupling: Coupling, nodes: list[gs.Node]) -> list[LayerCost]:
    """The cost of every layer among `nodes`, with the coupling's groups mapped on it."""
    costs = {id(n): c for n in nodes if (c := _cost(n)) is not None}
    space_group = {s: i for i, g in enumerate(coupling.groups) for s in g.spaces}

    def add(per: dict[int, int], layout) -> None:
        for seg in layout.segments:
            g = space_group.get(seg.space)
            if g is not None:
                per[g] = per.get(g, 0) + seg.stride

    for node, layout in coupling.outputs:
        if id(node) in costs:
            add(costs[id(node)].out_per, layout)
    for edit in coupling.edits:
        if (edit.role == "consumer" and isinstance(edit, SliceInput) and edit.index == 1
                and id(edit.node) in costs):
            add(costs[id(edit.node)].in_per, edit.layout)
    return list(costs.values())


def total_macs(costs: list[LayerCost], removed: list[int]) -> float:
    """Multiply-accumulates of all layers with `removed[g]` channels gone from group g."""
    return float(np.sum([c.macs(removed) for c in costs]))


__all__ = ["LayerCost", "layer_costs", "total_macs"]
