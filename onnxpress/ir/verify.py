"""Structural verification between passes, in O(nodes + edges).

The ONNX checker runs once, at `save`. Between passes the `PassManager` runs this cheaper check
after every pass that changed the model, so a broken rewrite is reported by the pass that made
it rather than by onnxruntime three passes later. Checked, in every (sub)graph:

- every node input is a graph input, a constant, produced earlier in the node list, or (in a
  subgraph) visible from an enclosing scope — so the list is sorted and nothing dangles;
- every graph output is produced, is an input or is a constant;
- no tensor has two producers and no two tensors share a name;
- the model's opset imports cover every domain a node uses.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxpress.errors import VerificationError
from onnxpress.ir.model import Model
from onnxpress.ir.scopes import subgraphs


def verify_structure(model: Model) -> list[str]:
    """Return the structural problems of `model` (empty when it is well formed)."""
    problems: list[str] = []
    names: dict[str, int] = {}
    _check_graph(model.graph, set(), problems, names)
    domains = {node.domain or "" for node in _all_nodes(model.graph)}
    for domain in sorted(domains):
        key = "" if domain == "ai.onnx" else domain
        if key not in model.opsets and domain not in model.opsets:
            problems.append(f"domain '{domain}' is used but not in the opset imports")
    return problems


def check_structure(model: Model, after: str = "") -> None:
    """Raise `VerificationError` listing the problems, if any; `after` names the pass."""
    problems = verify_structure(model)
    if problems:
        where = f" after pass '{after}'" if after else ""
        shown = "; ".join(problems[:5]) + (f"; … {len(problems) - 5} more" if len(problems) > 5
                                            else "")
        raise VerificationError(f"graph is malformed{where}: {shown}")


def _all_nodes(graph: gs.Graph):
    stack = [graph]
    while stack:
        current = stack.pop()
        for node in current.nodes:
            yield node
            stack.extend(subgraphs(node))


def _check_graph(graph: gs.Graph, outer: set[int], problems: list[str],
                 names: dict[str, int]) -> None:
    visible = set(outer) | {id(t) for t in graph.inputs}
    produced_by: dict[int, str] = {}

    def claim(tensor: gs.Tensor) -> None:
        owner = names.setdefault(tensor.name, id(tensor))
        if owner != id(tensor):
            problems.append(f"two different tensors are named '{tensor.name}'")

    for tensor in graph.inputs:
        claim(tensor)
    for node in graph.nodes:
        for tensor in node.inputs:
            if tensor.is_empty() or isinstance(tensor, gs.Constant):
                continue
            if id(tensor) not in visible:
                problems.append(f"node '{node.name}' ({node.op}) reads '{tensor.name}' before "
                                "it is produced, or it is produced nowhere")
        for body in subgraphs(node):
            _check_graph(body, visible, problems, names)
        for tensor in node.outputs:
            if tensor.is_empty():
                continue
            if id(tensor) in produced_by:
                problems.append(f"tensor '{tensor.name}' is produced by both "
                                f"'{produced_by[id(tensor)]}' and '{node.name}'")
            produced_by[id(tensor)] = node.name
            claim(tensor)
            visible.add(id(tensor))
    for tensor in graph.outputs:
        if id(tensor) not in visible and not isinstance(tensor, gs.Constant):
            problems.append(f"graph output '{tensor.name}' is not produced")
