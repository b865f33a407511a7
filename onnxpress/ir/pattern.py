"""Declarative rewrite rules: pattern, check, rewrite — and one driver that applies them safely.

A rule describes a subgraph by building it with an `op` builder from variables:

    class ConvBatchNorm(Rule):
        def pattern(self, op, x, w):
            conv = op.Conv(x, w, more_inputs=True, label="conv")
            return op.BatchNormalization(conv, Const("gamma"), Const("beta"), Const("mean"),
                                         Const("var"), label="bn")
        def check(self, m):            # optional: a string rejects the match and says why
            ...
        def rewrite(self, m, b):       # m: bindings (m.x, m.gamma, m.conv); b: `Builder`
            return b.op("Conv", m.x, b.const(w), b.const(bias), attrs=m.conv.attrs)

Matching starts at a root node and walks backwards through producers. The parameters of
`pattern` after `op` are variables: each binds one tensor, and a variable used twice must bind
the same tensor (identity, never names). `Const(name)` binds a constant (an initializer or a
Constant node's value) as a numpy array; `Const(value=v)` also requires that value (scalars
broadcast). Operands of commutative ops are tried in both orders.

Safety is the driver's job, not each rule's: a match is rejected when a tensor produced by a
matched node other than the root is a graph output or is read outside the match — rewriting
would otherwise leave that reader with nothing (the bug class of OnnxSlim #160).

The driver `apply_rules` is deterministic: it sweeps a snapshot of the node list in order,
tries the rules indexed by root op in list order (first match wins), inserts the rewrite
before the root, moves the root's readers (and graph-output names) to the new tensors, removes
the matched nodes, tags the new nodes' metadata with ``onnxpress.rule``, and repeats sweeps
until nothing changes. `find` matches without rewriting;
`explain` reports the deepest partial match and why it failed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir import fidelity
from onnxpress.ir.edit import (
    insert_before,
    is_graph_output,
    is_interface,
    producer,
    remove,
    replace_uses,
)
from onnxpress.ir.model import Model
from onnxpress.passes.base import PassResult

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "And", "Or", "Xor", "Equal", "Sum", "Mean"})

#: Default version of non-standard domains the builder may introduce.
DOMAIN_VERSIONS = {"com.microsoft": 1}


# --------------------------------------------------------------------------------------------
# Pattern language
@dataclass(frozen=True)
class Var:
    """Binds any tensor; the same name must bind the same tensor everywhere in the pattern."""

    name: str


@dataclass(frozen=True)
class Const:
    """Binds a constant tensor's value (numpy array) under `name`, optionally requiring `value`.

    Args:
        name: Binding name (optional when only the value matters).
        value: Required value; scalars and arrays broadcast against the constant.
        rtol: Relative tolerance of the value comparison.
    """

    name: str | None = None
    value: Any = None
    rtol: float = 1e-6


@dataclass(frozen=True)
class OpPattern:
    """A node with an op type, input patterns, attribute constraints and an optional label."""

    op: str
    inputs: tuple
    attrs: tuple = ()
    label: str | None = None
    more_inputs: bool = False
    domain: str | None = None


class _OpBuilder:
    """`op.Conv(x, w, label=..., attrs=..., more_inputs=...)` builds an `OpPattern`."""

    def __getattr__(self, op: str) -> Callable[..., OpPattern]:
        def build(*inputs, label: str | None = None, attrs: dict | None = None,
                  more_inputs: bool = False, domain: str | None = None) -> OpPattern:
            return OpPattern(op, tuple(inputs), tuple((attrs or {}).items()), label,
                             more_inputs, domain)
        return build


_SCALAR_ATTRS = {
    "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
    "value_ints": np.int64,
}


def constant_node_value(node: gs.Node) -> np.ndarray | None:
    """The numeric value of a Constant node; None for other nodes and for the forms onnxpress
    leaves alone (strings, sparse tensors)."""
    if node.op != "Constant" or node.domain not in (None, "", "ai.onnx"):
        return None
    for key, value in node.attrs.items():
        if key == "value" and isinstance(value, gs.Constant):
            array = np.asarray(value.values)
            return array if array.dtype.kind in "biuf" else None
        if key in _SCALAR_ATTRS:
            return np.asarray(value, dtype=_SCALAR_ATTRS[key])
    return None


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None otherwise."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    return constant_node_value(node) if node is not None else None


# --------------------------------------------------------------------------------------------
# Matches
@dataclass
class Match:
    """A successful match: bindings by name, matched nodes, and the root.

    Attribute access gives bindings: a `Var` name gives the gs tensor, a `Const` name its numpy
    value, a label the gs.Node. `m.tensor(name)` gives a Const's tensor.
    """

    root: gs.Node
    nodes: list[gs.Node]
    bindings: dict[str, Any]
    tensors: dict[str, gs.Tensor] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["bindings"][name]
        except KeyError:
            raise AttributeError(f"pattern has no binding '{name}'") from None

    def tensor(self, name: str) -> gs.Tensor:
        """The tensor a `Const` or `Var` bound."""
        return self.tensors[name]


@dataclass
class _Trace:
    """The deepest failure seen while matching (for `explain`)."""

    depth: int = -1
    reason: str = ""

    def fail(self, depth: int, reason: str) -> None:
        if depth > self.depth:
            self.depth, self.reason = depth, reason


def _match_node(p: OpPattern, node: gs.Node, state: dict, trace: _Trace, depth: int
                ) -> Iterator[dict]:
    """Yield every binding state in which `node` matches `p` (pure: never edits the graph)."""
    if node.op != p.op or (p.domain or "") != (node.domain or ""):
        trace.fail(depth, f"node '{node.name}' is {node.op}, pattern wants {p.op}")
        return
    for key, want in p.attrs:
        have = node.attrs.get(key)
        if not (want(have) if callable(want) else _same(have, want)):
            trace.fail(depth, f"node '{node.name}' attribute {key}={have!r} does not match")
            return
    n = len(p.inputs)
    if len(node.inputs) < n or (len(node.inputs) > n and not p.more_inputs):
        trace.fail(depth, f"node '{node.name}' has {len(node.inputs)} inputs, pattern wants {n}")
        return
    orders = [tuple(range(n))]
    if p.op in COMMUTATIVE and n == 2:
        orders.append((1, 0))
    for order in orders:
        start = dict(state)
        start["__nodes__"] = [*state["__nodes__"], node]
        if p.label:
            start[p.label] = node
        yield from _match_inputs(p.inputs, [node.inputs[i] for i in order], start, trace,
                                 depth + 1)


def _match_inputs(patterns: Sequence, tensors: Sequence[gs.Tensor], state: dict, trace: _Trace,
                  depth: int) -> Iterator[dict]:
    if not patterns:
        yield state
        return
    for s in _match_tensor(patterns[0], tensors[0], state, trace, depth):
        yield from _match_inputs(patterns[1:], tensors[1:], s, trace, depth)


def _match_tensor(p: Any, tensor: gs.Tensor, state: dict, trace: _Trace, depth: int
                  ) -> Iterator[dict]:
    if isinstance(p, Var):
        bound = state["__tensors__"].get(p.name)
        if bound is None:
            yield _bind(state, p.name, tensor, tensor)
        elif bound is tensor:
            yield state
        else:
            trace.fail(depth, f"'{p.name}' would bind both '{bound.name}' and '{tensor.name}'")
        return
    if isinstance(p, Const):
        value = constant_value(tensor)
        if value is None:
            trace.fail(depth, f"tensor '{tensor.name}' is not a constant")
        elif p.value is not None and not _close(value, p.value, p.rtol):
            trace.fail(depth, f"constant '{tensor.name}' is not {p.value!r}")
        else:
            yield _bind(state, p.name, value, tensor) if p.name else state
        return
    node = producer(tensor)
    if node is None or node.outputs[0] is not tensor:
        trace.fail(depth, f"tensor '{tensor.name}' is not the first output of a {p.op} node")
        return
    if p.label and state.get(p.label) is node:
        yield state  # a labelled sub-pattern used twice (a DAG, e.g. LayerNorm's x - mean)
        return
    if any(n is node for n in state["__nodes__"]):
        trace.fail(depth, f"node '{node.name}' would be matched twice")
        return
    yield from _match_node(p, node, state, trace, depth)


def _bind(state: dict, name: str, value: Any, tensor: gs.Tensor) -> dict:
    new = dict(state)
    new[name] = value
    new["__tensors__"] = {**state["__tensors__"], name: tensor}
    return new


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, list | tuple):
        return have is not None and list(have) == list(want)
    return have == want


def _close(value: np.ndarray, want: Any, rtol: float) -> bool:
    try:
        return bool(np.allclose(value.astype(np.float64), np.asarray(want, dtype=np.float64),
                                rtol=rtol, atol=0.0))
    except ValueError:  # shapes do not broadcast
        return False


def _escapes(graph: gs.Graph, nodes: list[gs.Node], root: gs.Node) -> str | None:
    """Why removing the non-root `nodes` would break the graph, or None if it would not."""
    inside = {id(n) for n in nodes}
    for node in nodes:
        if node is root:
            continue
        for out in node.outputs:
            if is_graph_output(graph, out):
                return f"intermediate '{out.name}' is a graph output"
            outside = [c.name for c in out.outputs if id(c) not in inside]
            if outside:
                return f"intermediate '{out.name}' is also read by {outside}"
    return None


# --------------------------------------------------------------------------------------------
# Rules
class Rule:
    """A rewrite: `pattern(op, *vars)`, optional `check(m)`, and `rewrite(m, b)`.

    The rule's name (its class name) keys the per-rule counts in the pass stats.
    """

    def pattern(self, op: _OpBuilder, *variables: Var) -> OpPattern:
        """The subgraph to find, built from `op` and the variables."""
        raise NotImplementedError

    def check(self, m: Match) -> str | bool | None:
        """Return a string (the reason) to reject a structurally valid match."""
        return None

    def rewrite(self, m: Match, b: Builder) -> gs.Tensor | Sequence[gs.Tensor]:
        """Build the replacement with `b` and return the tensors replacing the root outputs."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The rule's name in stats and reports."""
        return type(self).__name__

    def compiled(self) -> OpPattern:
        """The rule's pattern, built once (variables named after `pattern`'s parameters)."""
        if "_compiled" not in self.__dict__:
            params = list(inspect.signature(self.pattern).parameters)[1:]
            self.__dict__["_compiled"] = self.pattern(_OpBuilder(), *(Var(p) for p in params))
        return self.__dict__["_compiled"]

    def match(self, graph: gs.Graph, node: gs.Node, trace: _Trace | None = None
              ) -> Match | None:
        """The first match of this rule rooted at `node` that is safe and passes `check`."""
        trace = trace if trace is not None else _Trace()
        initial = {"__nodes__": [], "__tensors__": {}}
        for state in _match_node(self.compiled(), node, initial, trace, 0):
            nodes = state["__nodes__"]
            reason = _escapes(graph, nodes, node)
            if reason is None:
                bindings = {k: v for k, v in state.items() if not k.startswith("__")}
                m = Match(node, nodes, bindings, dict(state["__tensors__"]))
                verdict = self.check(m)
                reason = verdict if isinstance(verdict, str) else (
                    "check() rejected the match" if verdict is False else None)
                if reason is None:
                    return m
            trace.fail(len(nodes) + 1, reason)
        return None


class Builder:
    """Creates the nodes of a rewrite with fresh names; the driver inserts them."""

    def __init__(self, model: Model, hint: str) -> None:
        self.model = model
        self.hint = hint
        self.nodes: list[gs.Node] = []

    @property
    def opset(self) -> int:
        """The model's default-domain opset."""
        return self.model.opset

    def op(self, op: str, *inputs: gs.Tensor, attrs: dict | None = None,
           domain: str | None = None, outputs: int = 1) -> gs.Variable | list[gs.Variable]:
        """Add a node and return its output tensor (a list if `outputs` > 1)."""
        if domain and domain not in self.model.opsets:
            self.model.opsets[domain] = DOMAIN_VERSIONS.get(domain, 1)
        outs = [self.model.variable(f"{self.hint}/{op}_out") for _ in range(outputs)]
        self.nodes.append(self.model.node(op, list(inputs), outs, hint=f"{self.hint}/{op}",
                                          attrs=attrs, domain=domain))
        return outs[0] if outputs == 1 else outs

    def const(self, value: np.ndarray, hint: str = "const") -> gs.Constant:
        """A new initializer holding a copy of `value`."""
        return self.model.constant(f"{self.hint}/{hint}", value)


def _as_list(outputs: gs.Tensor | Sequence[gs.Tensor]) -> list[gs.Tensor]:
    return [outputs] if isinstance(outputs, gs.Tensor) else list(outputs)


def apply_rules(model: Model, rules: Sequence[Rule], *, max_sweeps: int = 16) -> PassResult:
    """Apply `rules` to the main graph until none matches; return counts per rule as stats."""
    graph = model.graph
    by_op: dict[str, list[Rule]] = {}
    for rule in rules:
        by_op.setdefault(rule.compiled().op, []).append(rule)
    counts = {rule.name: 0 for rule in rules}
    if len(counts) != len(rules):
        raise ValueError("apply_rules: two rules share a name, so their counts would merge; "
                         "override Rule.name")
    for _ in range(max_sweeps):
        fired = False
        removed: set[int] = set()
        for node in list(graph.nodes):
            if id(node) in removed:
                continue
            for rule in by_op.get(node.op, ()):
                m = rule.match(graph, node)
                if m is None or not _replace(model, m, rule):
                    continue
                removed.update(id(n) for n in m.nodes)
                counts[rule.name] += 1
                fired = True
                break
        if not fired:
            break
    return PassResult(any(counts.values()), counts)


def _replace(model: Model, m: Match, rule: Rule) -> bool:
    """Apply `rule`'s rewrite of `m`; False (graph untouched) if it would rename a tensor that
    is part of the model's interface, e.g. a rewrite returning a graph input for an output."""
    graph = model.graph
    builder = Builder(model, m.root.name or rule.name)
    new_outputs = _as_list(rule.rewrite(m, builder))
    old_outputs = [t for t in m.root.outputs if not t.is_empty()]
    if len(new_outputs) < len(old_outputs):
        raise ValueError(f"rule {rule.name} returned {len(new_outputs)} tensors for "
                         f"{len(old_outputs)} root outputs")
    if any(is_graph_output(graph, old) and is_interface(graph, new)
           for old, new in zip(old_outputs, new_outputs, strict=True)):
        for node in builder.nodes:  # never inserted: just let go of the tensors they read
            node.inputs.clear()
            node.outputs.clear()
        return False
    for node in builder.nodes:
        fidelity.tag(node, "onnxpress.rule", rule.name)  # which rewrite made it, as in Netron
    insert_before(graph, m.root, builder.nodes)
    made = {id(t) for node in builder.nodes for t in node.outputs}
    for old, new in zip(old_outputs, new_outputs, strict=True):
        if isinstance(new, gs.Variable) and isinstance(old, gs.Variable):
            new.dtype = new.dtype if new.dtype is not None else old.dtype
            new.shape = new.shape if new.shape is not None else old.shape
        if id(new) in made and not is_graph_output(graph, old):
            # The replacement computes the same tensor: it keeps the name, which calibration
            # tables, teachers (reconstruct) and users' exclusion lists refer to.
            name = old.name
            old.name = model.fresh_name(f"{name}_unfused")
            new.name = name
        replace_uses(graph, old, new, graph_outputs=True)
    remove(graph, m.nodes, safe=True)
    return True


def find(model: Model, rule: Rule) -> list[Match]:
    """Every match of `rule` in the main graph, without rewriting (first match per root)."""
    root_op = rule.compiled().op
    return [m for node in model.graph.nodes if node.op == root_op
            for m in [rule.match(model.graph, node)] if m is not None]


def explain(model: Model, rule: Rule) -> str:
    """Why `rule` does not fire: the deepest partial match over all candidate roots."""
    root_op = rule.compiled().op
    best, where = _Trace(), None
    for node in model.graph.nodes:
        if node.op != root_op:
            continue
        trace = _Trace()
        if rule.match(model.graph, node, trace) is not None:
            return f"{rule.name} matches at node '{node.name}'"
        if trace.depth > best.depth:
            best, where = trace, node
    if where is None:
        return f"{rule.name}: no {root_op} node in the graph"
    label = where.name or f"producing {where.outputs[0].name}"
    return (f"{rule.name}: deepest partial match rooted at '{label}' "
            f"(depth {best.depth}): {best.reason}")
