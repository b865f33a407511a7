"""Nested graph scopes: If / Loop / Scan bodies held in node attributes.

Subgraphs read outer-scope tensors by name, so every whole-model walk (names, dead code,
verification, export fix-ups) must visit them; these two functions are the one way to do so.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_graphsurgeon as gs


def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """`graph` and every subgraph nested in its nodes' attributes (If/Loop/Scan bodies)."""
    stack = [graph]
    while stack:
        current = stack.pop()
        yield current
        for node in current.nodes:
            stack.extend(reversed(subgraphs(node)))


def subgraphs(node: gs.Node) -> list[gs.Graph]:
    """The graphs held in a node's attributes, in attribute order."""
    found: list[gs.Graph] = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(v for v in value if isinstance(v, gs.Graph))
    return found
