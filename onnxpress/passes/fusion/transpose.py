"""Compose consecutive Transposes into one, and fold Transposes of constants.

``Transpose(x, p)`` moves input axis ``p[i]`` to output axis ``i``. Two in a row compose:

    Transpose(Transpose(x, p1), p2) = Transpose(x, q),   q[i] = p1[p2[i]]

A missing ``perm`` means the reversed axes. When ``q`` is the identity, the readers of the
outer Transpose read ``x`` itself and both nodes go. If the outer output is a graph output,
the rule driver gives ``x`` the output's name. That is impossible when ``x`` is part of the
interface itself (a graph input, another graph output or an initializer), whose name must
stay. A graph output then needs a node to produce it under its own name. The rewrite emits
the composed Transpose with the identity ``perm`` (one node instead of two) rather than an
Identity. Cleanup's identity elimination keeps that node for the same reason.

``Transpose(C)`` of a constant ``C`` (an initializer or a Constant node's value) becomes a new
initializer holding ``C`` transposed, which also covers exporters' transposed MatMul weights.
If ``C`` has other readers, they keep reading the untouched original. The file then stores both
layouts, but each reader sees exactly the values it saw before. When ``C`` had no other
reader, the original is dropped on export, since gs keeps initializers only as node inputs.
At a graph output the new initializer takes the output's name (ONNX allows an initializer as
a graph output); when nodes also read that output, an ``Identity`` of the new initializer
produces it instead (an initializer already read may not be renamed). Inside ``fuse``,
cleanup's constant folding already does this everywhere else; the rule makes
``fuse-transposes`` complete on its own.

Exact: transposes only move elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir import analyses, ops
from onnxpress.ir.edit import is_graph_output
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import Builder, Const, Match, Reject, Rule, apply_rules
from onnxpress.passes.base import Context, Pass, PassResult


def _perm(node: gs.Node, rank: int) -> list[int]:
    """The node's permutation, the reversed axes when ``perm`` is absent."""
    perm = node.attrs.get("perm")
    return list(perm) if perm is not None else list(reversed(range(rank)))


class TransposeTranspose(Rule):
    """Transpose(Transpose(x, p1), p2) becomes Transpose(x, p1∘p2), or x for the identity."""

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, label="inner"), label="outer")

    def check(self, m: Match) -> Reject | None:
        """Reject only when no perm is given and the rank is unknown."""
        return None if _rank(m) is not None else Reject(
            "no perm given and the rank of x is unknown", m.outer)

    def rewrite(self, m: Match, b: Builder) -> gs.Tensor:
        rank = _rank(m)
        inner, outer = _perm(m.inner, rank), _perm(m.outer, rank)
        composed = [inner[axis] for axis in outer]
        if composed == list(range(rank)) and not _renames_interface(b.model.graph, m):
            return m.x
        return b.op("Transpose", m.x, attrs={"perm": composed})


def _rank(m: Match) -> int | None:
    for node in (m.inner, m.outer):
        if node.attrs.get("perm") is not None:
            return len(node.attrs["perm"])
    return ops.rank(m.x)


def _renames_interface(graph: gs.Graph, m: Match) -> bool:
    """Whether bypassing to ``x`` would rename an interface tensor.

    That is, the outer Transpose produces a graph output (whose name ``x`` would take) and
    ``x`` is itself a graph input, graph output or initializer, whose name must stay.
    """
    x = m.x
    return is_graph_output(graph, m.outer.outputs[0]) and (
        isinstance(x, gs.Constant) or is_graph_output(graph, x)
        or any(t is x for t in graph.inputs))


class ConstantTranspose(Rule):
    """Transpose(C) of a constant becomes a new initializer holding C transposed."""

    def pattern(self, op):
        return op.Transpose(Const("value"), label="transpose")

    def rewrite(self, m: Match, b: Builder) -> gs.Tensor:
        perm = m.transpose.attrs.get("perm")  # None reverses the axes, as in ONNX
        value = b.const(np.transpose(m.value, perm), "transposed")
        out = m.transpose.outputs[0]
        if is_graph_output(b.model.graph, out) and out.outputs:
            # The driver re-points the readers first, after which the new initializer is in
            # use and may not take the output's name: an Identity produces the output.
            return b.op("Identity", value)
        return value


@dataclass(frozen=True)
class FuseTransposes(Pass):
    """Merge Transpose chains and fold Transposes of constants."""

    name: ClassVar[str] = "fuse-transposes"

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Apply both rules to the main graph."""
        model.analysis(analyses.shapes)
        counts = apply_rules(model, [TransposeTranspose(), ConstantTranspose()])
        return PassResult(any(counts.values()), counts)
