"""Graph editing on onnx-graphsurgeon with onnx_ir's guarantees.

gs keeps producer/consumer links (`Variable.inputs` / `.outputs`) in sync as node input and
output lists change, but it has no safe removal, no use replacement, a recursive name-based
toposort, and `cleanup()` that forgets tensors captured by subgraphs. These free functions fill
the gap. Passes use them instead of editing link lists by hand, and never use names as
identity.

Subgraphs (If / Loop / Scan bodies) read outer-scope tensors by name without listing them as
inputs of the enclosing node. `captures(node)` returns those tensors; every dependency-based
algorithm here (toposort, dead code) treats them as inputs of the enclosing node.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import onnx_graphsurgeon as gs

from onnxpress.errors import VerificationError
from onnxpress.ir.scopes import subgraphs


class CycleError(VerificationError):
    """The graph has a cycle, so it has no topological order."""


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that produces `tensor`, or None for inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """The nodes that read `tensor` (subgraph nodes capturing it included), without repeats."""
    seen: set[int] = set()
    result = []
    for node in tensor.outputs:
        if id(node) not in seen:
            seen.add(id(node))
            result.append(node)
    return result


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Whether `tensor` is one of `graph`'s outputs (by identity)."""
    return any(out is tensor for out in graph.outputs)


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor, *,
                 graph_outputs: bool = False) -> None:
    """Make every reader of `old` read `new` instead.

    Args:
        graph: The graph whose outputs may contain `old`.
        old: The tensor to retire.
        new: Its replacement.
        graph_outputs: If `old` is a graph output, replace it there too and give `new` its
            name (and dtype/shape), so the model's interface does not change. Without this,
            replacing a graph output raises.
    """
    if old is new:
        return
    if is_graph_output(graph, old) and not graph_outputs:
        raise VerificationError(
            f"tensor '{old.name}' is a graph output; pass graph_outputs=True to replace it")
    for node in consumers(old):
        # gs's synchronized lists support item (not slice) assignment.
        for i, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[i] = new
    if is_graph_output(graph, old):
        _take_over_output(graph, old, new)


def is_interface(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Whether `tensor`'s name is part of the model's interface or storage: a graph input, a
    graph output or an initializer already read by some node — renaming it would change what
    users feed or read (a new initializer nobody reads yet may take any name)."""
    return ((isinstance(tensor, gs.Constant) and bool(tensor.outputs))
            or is_graph_output(graph, tensor) or any(t is tensor for t in graph.inputs))


def _take_over_output(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """`new` replaces the graph output `old`, taking its name, dtype and shape."""
    if is_interface(graph, new):
        raise VerificationError(
            f"cannot make '{new.name}' the graph output '{old.name}': it is itself an input, "
            "output or initializer whose name must not change")
    name = old.name
    old.name = f"{name}__replaced"
    new.name = name
    if isinstance(new, gs.Variable) and isinstance(old, gs.Variable):
        new.dtype = old.dtype if old.dtype is not None else new.dtype
        new.shape = old.shape if old.shape is not None else new.shape
    graph.outputs[:] = [new if t is old else t for t in graph.outputs]


def remove(graph: gs.Graph, nodes: Iterable[gs.Node], *, safe: bool = True) -> int:
    """Remove `nodes` from `graph` in one pass over the node list; return how many.

    Their inputs are disconnected (so producers see one consumer fewer) and their outputs
    lose their producer.

    Raises:
        VerificationError: with `safe`, if an output of a removed node is a graph output or is
            still read by a node that is not removed.
    """
    doomed = {id(n): n for n in nodes}
    if not doomed:
        return 0
    if safe:
        for node in doomed.values():
            for out in node.outputs:
                if is_graph_output(graph, out):
                    raise VerificationError(
                        f"cannot remove node '{node.name}': its output '{out.name}' is a graph "
                        "output")
                users = [c.name for c in out.outputs if id(c) not in doomed]
                if users:
                    raise VerificationError(
                        f"cannot remove node '{node.name}': its output '{out.name}' is still "
                        f"read by {users}")
    before = len(graph.nodes)
    graph.nodes[:] = [n for n in graph.nodes if id(n) not in doomed]
    for node in doomed.values():
        node.inputs.clear()
        node.outputs.clear()
    return before - len(graph.nodes)


def insert_before(graph: gs.Graph, anchor: gs.Node, new_nodes: Sequence[gs.Node]) -> None:
    """Insert `new_nodes`, in order, just before `anchor` (keeps a sorted list sorted when the
    new nodes read only tensors available at `anchor`)."""
    index = _index(graph, anchor)
    graph.nodes[index:index] = list(new_nodes)


def insert_after(graph: gs.Graph, anchor: gs.Node, new_nodes: Sequence[gs.Node]) -> None:
    """Insert `new_nodes`, in order, just after `anchor`."""
    index = _index(graph, anchor)
    graph.nodes[index + 1:index + 1] = list(new_nodes)


def _index(graph: gs.Graph, anchor: gs.Node) -> int:
    for i, node in enumerate(graph.nodes):
        if node is anchor:
            return i
    raise VerificationError(f"node '{anchor.name}' is not in graph '{graph.name}'")


def captures(node: gs.Node) -> list[gs.Tensor]:
    """Outer-scope tensors read by `node`'s subgraphs (recursively), in first-use order."""
    found: dict[int, gs.Tensor] = {}
    for body in subgraphs(node):
        local = {id(t) for t in body.inputs}
        for inner in body.nodes:
            local.update(id(t) for t in inner.outputs)
        for inner in body.nodes:
            for tensor in [*inner.inputs, *captures(inner)]:
                if id(tensor) not in local and not tensor.is_empty():
                    found.setdefault(id(tensor), tensor)
        for out in body.outputs:
            if id(out) not in local:
                found.setdefault(id(out), out)
    return list(found.values())


def dependencies(node: gs.Node) -> list[gs.Tensor]:
    """Every tensor `node` needs before it can run: its inputs and its subgraphs' captures."""
    return [t for t in node.inputs if not t.is_empty()] + captures(node)


def toposort(graph: gs.Graph) -> None:
    """Sort `graph.nodes` topologically, in place, keeping the current order where it is valid.

    Kahn's algorithm over object identity with a heap keyed by current position, so a sorted
    graph is unchanged and the result is deterministic. Iterative: deep chains do not recurse.

    Raises:
        CycleError: naming (up to 10 of) the nodes on or behind a cycle.
    """
    nodes = list(graph.nodes)
    position = {id(n): i for i, n in enumerate(nodes)}
    waiting_on = [0] * len(nodes)
    dependents: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for tensor in dependencies(node):
            src = producer(tensor)
            j = position.get(id(src)) if src is not None else None
            if j is not None and j != i:
                dependents[j].append(i)
                waiting_on[i] += 1
    ready = [i for i, count in enumerate(waiting_on) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for k in dependents[i]:
            waiting_on[k] -= 1
            if waiting_on[k] == 0:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):
        stuck = [nodes[i].name for i, count in enumerate(waiting_on) if count > 0]
        raise CycleError(f"graph '{graph.name}' has a cycle through {stuck[:10]}")
    graph.nodes[:] = order


def live_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Nodes of `graph` that contribute to its outputs, in list order."""
    owner = {id(out): node for node in graph.nodes for out in node.outputs}
    live: set[int] = set()
    stack = [owner[id(t)] for t in graph.outputs if id(t) in owner]
    while stack:
        node = stack.pop()
        if id(node) in live:
            continue
        live.add(id(node))
        stack.extend(owner[id(t)] for t in dependencies(node) if id(t) in owner)
    return [n for n in graph.nodes if id(n) in live]


def dead_code(graph: gs.Graph) -> int:
    """Remove nodes that do not contribute to the outputs, in `graph` and its subgraphs.

    Initializers live only as node inputs in gs, so an initializer read by no live node
    disappears with its readers. Returns the number of nodes removed.
    """
    live = live_nodes(graph)
    removed = len(graph.nodes) - len(live)
    if removed:
        keep = {id(n) for n in live}
        dead = [n for n in graph.nodes if id(n) not in keep]
        remove(graph, dead, safe=False)
    for node in graph.nodes:
        for body in subgraphs(node):
            removed += dead_code(body)
    return removed
