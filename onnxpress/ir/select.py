"""Selecting nodes by the user's patterns: one rule for every pass's ``include`` / ``exclude``.

A pattern names a node when it equals the node's op type (``"Gemm"``) or matches its name as
a shell glob (``"/head/*"``, ``"/block1/conv1/Conv"``); `fnmatch.fnmatchcase`, so matching is
case-sensitive on every platform. A selection keeps what some ``include`` pattern names (all
nodes when there is none) and no ``exclude`` pattern names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import onnx_graphsurgeon as gs


def matches(node: gs.Node, patterns: Sequence[str]) -> bool:
    """Whether some pattern is `node`'s op type or a glob matching its name."""
    return any(node.op == p or fnmatch.fnmatchcase(node.name, p) for p in patterns)


def selected(node: gs.Node, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> bool:
    """Whether `node` is chosen: named by `include` (or `include` is empty), not by `exclude`."""
    return (not include or matches(node, include)) and not matches(node, exclude)
