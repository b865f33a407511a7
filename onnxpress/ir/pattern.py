"""Declarative rewrite rules: pattern, check, rewrite — and one driver that applies them safely.

A rule describes a subgraph by building it with an `op` builder from variables:

    class ConvBatchNorm(Rule):
        def pattern(self, op, x, w):
            conv = op.Conv(x, w, more_inputs=True, label="conv")
            return op.BatchNormalization(conv, Const("gamma"), Const("beta"), Const("mean"),
                                         Const("var"), label="bn")
        def check(self, m):            # optional: Reject("why", node) refuses the match
            ...
        def rewrite(self, m, b):       # m: bindings (m.x, m.gamma, m.conv); b: `Builder`
            return b.op("Conv", m.x, b.const(w), b.const(bias), attrs=m.conv.attrs)

Matching starts at a root node and walks backwards through producers. The parameters of
`pattern` after `op` are variables: each binds one tensor, and a variable used twice must bind
the same tensor (identity, never names). `Const(name)` binds a constant (an initializer or a
Constant node's value) as a numpy array; `Const(value=v)` also requires that value (scalars
broadcast). Operands of commutative ops are tried in both orders.

Alternation: ``Or("centre", sub=p1, add_neg=p2)`` matches the first alternative that fits
(backtracking into the next when the rest of the pattern fails) and records its name under
the tag: ``m.tags["centre"] == "sub"``. One rule then covers every export form of a
computation instead of one rule per combination.

Sub-pattern reuse: a pattern object (an ``op.X(...)`` or an `Or`) referenced twice must match
the same tensor both times — ``d = op.Sub(x, mean); op.Mul(d, d)`` is a DAG, the square of
*that* centred tensor, not of any equal-looking one. Reuse is keyed on the pattern object's
identity, so two separately built ``op.Sub(x, mean)`` are two nodes (tf's squared_difference
computes its own ``x - mean``).

`check` returns None to accept or a `Reject` (falsy, carrying the reason and the node it is
about) that `explain` shows. An exception raised in `check` or `rewrite` is re-raised as a
`RuleError` naming the rule and the root node.

Safety is the driver's job, not each rule's: a match is rejected when a tensor produced by a
matched node other than the root is a graph output or is read outside the match — rewriting
would otherwise leave that reader with nothing (the bug class of OnnxSlim #160).

The driver `apply_rules` is deterministic: it sweeps a snapshot of the node list in order,
tries the rules indexed by root op in list order (first match wins), inserts the rewrite
before the root, moves the root's readers (and graph-output names) to the new tensors, removes
the matched nodes, tags the new nodes' metadata with ``onnxpress.rule``, and repeats sweeps
until nothing changes. It returns the firings per rule as a plain dict (the passes wrap it in
their `PassResult`: the IR layer knows nothing of passes). `find` matches without rewriting;
`explain` reports, per rule, the deepest partial match and why it failed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import PassError
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
from onnxpress.ir.ops import constant_value, rank

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


class Or:
    """Alternative sub-patterns; the match records which one fitted under `tag`.

    ``Or("square", pow=op.Pow(d, Const(value=2.0)), mul=op.Mul(d, d))``: alternatives are
    tried in the order given and the first that lets the whole pattern match wins.

    Args:
        tag: Name under which `Match.tags` records the alternative that matched.
        **alternatives: Name → sub-pattern (`OpPattern`, `Var`, `Const` or another `Or`).
    """

    def __init__(self, tag: str, **alternatives: Any) -> None:
        """Build the alternation (at least two alternatives)."""
        if len(alternatives) < 2:
            raise ValueError(f"Or('{tag}') needs at least two alternatives")
        self.tag = tag
        self.alternatives = tuple(alternatives.items())

    def __repr__(self) -> str:
        """``Or(tag: a | b)``."""
        return f"Or({self.tag}: {' | '.join(name for name, _ in self.alternatives)})"


class _OpBuilder:
    """`op.Conv(x, w, label=..., attrs=..., more_inputs=...)` builds an `OpPattern`."""

    def __getattr__(self, op: str) -> Callable[..., OpPattern]:
        def build(*inputs, label: str | None = None, attrs: dict | None = None,
                  more_inputs: bool = False, domain: str | None = None) -> OpPattern:
            return OpPattern(op, tuple(inputs), tuple((attrs or {}).items()), label,
                             more_inputs, domain)
        return build


# --------------------------------------------------------------------------------------------
# Matches
@dataclass
class Match:
    """A successful match: bindings by name, matched nodes, and the root.

    Attribute access gives bindings: a `Var` name gives the gs tensor, a `Const` name its numpy
    value, a label the gs.Node. `m.tensor(name)` gives a Const's tensor; `m.tags` maps each
    `Or` tag to the name of the alternative that matched. A binding inside an alternative that
    did not match is absent (use ``m.bindings.get``).
    """

    root: gs.Node
    nodes: list[gs.Node]
    bindings: dict[str, Any]
    tensors: dict[str, gs.Tensor] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["bindings"][name]
        except KeyError:
            raise AttributeError(f"pattern has no binding '{name}'") from None

    def tensor(self, name: str) -> gs.Tensor:
        """The tensor a `Const` or `Var` bound."""
        return self.tensors[name]


@dataclass(frozen=True)
class Reject:
    """Why a rule refuses a structurally valid match: falsy, and shown by `explain`.

    Attributes:
        reason: What is wrong, in words a user can act on.
        node: The node the reason is about, if one (named in the message).
    """

    reason: str
    node: gs.Node | None = None

    def __bool__(self) -> bool:
        """Always false: ``if not (r := check()): return r`` propagates the refusal."""
        return False

    def __str__(self) -> str:
        """The reason, prefixed with the node it is about."""
        return f"{node_label(self.node)}: {self.reason}" if self.node is not None else self.reason


class RuleError(PassError):
    """A rule's `check` or `rewrite` raised: the message names the rule and the root node."""


def node_label(node: gs.Node) -> str:
    """``Op 'name'``, or ``Op producing 'tensor'`` for an unnamed node."""
    if node.name:
        return f"{node.op} '{node.name}'"
    out = next((t.name for t in node.outputs if t.name), "?")
    return f"{node.op} producing '{out}'"


@dataclass
class _Trace:
    """The failure seen after the most nodes matched (for `explain`).

    Progress is counted in matched nodes, not in pattern depth: with alternation, a sibling
    alternative failing deep inside says less than the chosen one failing at its last operand.
    """

    progress: int = -1
    reason: str = ""

    def fail(self, progress: int, reason: str) -> None:
        if progress > self.progress:
            self.progress, self.reason = progress, reason

    def at(self, state: dict, reason: str) -> None:
        """A failure after the nodes matched in `state`."""
        self.fail(len(state["__nodes__"]), reason)


def _match_node(p: OpPattern, node: gs.Node, state: dict, trace: _Trace
                ) -> Iterator[dict]:
    """Yield every binding state in which `node` matches `p` (pure: never edits the graph)."""
    where = node_label(node)
    if node.op != p.op or (p.domain or "") != (node.domain or ""):
        trace.at(state, f"{where} is {node.op}, pattern wants {p.op}")
        return
    for key, want in p.attrs:
        have = node.attrs.get(key)
        if not (want(have) if callable(want) else _same(have, want)):
            trace.at(state, f"{where} attribute {key}={have!r} does not match")
            return
    n = len(p.inputs)
    if len(node.inputs) < n or (len(node.inputs) > n and not p.more_inputs):
        trace.at(state, f"{where} has {len(node.inputs)} inputs, pattern wants {n}")
        return
    orders = [tuple(range(n))]
    if p.op in COMMUTATIVE and n == 2:
        orders.append((1, 0))
    for order in orders:
        start = dict(state)
        start["__nodes__"] = [*state["__nodes__"], node]
        if p.label:
            start[p.label] = node
        yield from _match_inputs(p.inputs, [node.inputs[i] for i in order], start, trace)


def _match_inputs(patterns: Sequence, tensors: Sequence[gs.Tensor], state: dict, trace: _Trace
                  ) -> Iterator[dict]:
    if not patterns:
        yield state
        return
    for s in _match_tensor(patterns[0], tensors[0], state, trace):
        yield from _match_inputs(patterns[1:], tensors[1:], s, trace)


def _match_tensor(p: Any, tensor: gs.Tensor, state: dict, trace: _Trace
                  ) -> Iterator[dict]:
    if isinstance(p, Var):
        bound = state["__tensors__"].get(p.name)
        if bound is None:
            yield _bind(state, p.name, tensor, tensor)
        elif bound is tensor:
            yield state
        else:
            trace.at(state, f"'{p.name}' would bind both '{bound.name}' and '{tensor.name}'")
        return
    if isinstance(p, Const):
        value = constant_value(tensor)
        if value is None:
            trace.at(state, f"tensor '{tensor.name}' is not a constant")
        elif p.value is not None and not _close(value, p.value, p.rtol):
            trace.at(state, f"constant '{tensor.name}' is not {p.value!r}")
        else:
            yield _bind(state, p.name, value, tensor) if p.name else state
        return
    seen = state["__seen__"].get(id(p))
    if seen is not None:  # the same sub-pattern object again: a DAG, it must be that tensor
        if seen is tensor:
            yield state
        else:
            trace.at(state, f"'{tensor.name}' is not '{seen.name}', which the same "
                            f"sub-pattern {_describe(p)} matched at its other use")
        return
    for s in (_match_or if isinstance(p, Or) else _match_op)(p, tensor, state, trace):
        yield {**s, "__seen__": {**s["__seen__"], id(p): tensor}}


def _match_or(p: Or, tensor: gs.Tensor, state: dict, trace: _Trace
              ) -> Iterator[dict]:
    for name, alternative in p.alternatives:
        for s in _match_tensor(alternative, tensor, state, trace):
            yield {**s, "__tags__": {**s["__tags__"], p.tag: name}}


def _match_op(p: OpPattern, tensor: gs.Tensor, state: dict, trace: _Trace
              ) -> Iterator[dict]:
    node = producer(tensor)
    if node is None or node.outputs[0] is not tensor:
        trace.at(state, f"tensor '{tensor.name}' is not the first output of a {p.op} node")
        return
    if any(n is node for n in state["__nodes__"]):
        trace.at(state, f"{node_label(node)} would be matched twice")
        return
    yield from _match_node(p, node, state, trace)


def _root_ops(p: Any) -> tuple[str, ...]:
    if isinstance(p, OpPattern):
        return (p.op,)
    if isinstance(p, Or):
        return tuple(dict.fromkeys(op for _, a in p.alternatives for op in _root_ops(a)))
    raise ValueError(f"a rule's pattern must be rooted at an op, not {p!r}")


def _describe(p: Any) -> str:
    return repr(p) if isinstance(p, Or) else f"op.{p.op}"


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

    def check(self, m: Match) -> Reject | None:
        """None accepts a structurally valid match; a `Reject` refuses it and says why."""
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

    def root_ops(self) -> tuple[str, ...]:
        """The op types a match can be rooted at (several when the root is an `Or`)."""
        return _root_ops(self.compiled())

    def match(self, graph: gs.Graph, node: gs.Node, trace: _Trace | None = None
              ) -> Match | None:
        """The first match of this rule rooted at `node` that is safe and passes `check`.

        Raises:
            RuleError: `check` raised, or returned something other than None or a `Reject`.
        """
        trace = trace if trace is not None else _Trace()
        initial = {"__nodes__": [], "__tensors__": {}, "__tags__": {}, "__seen__": {}}
        if not node.outputs:
            return None
        for state in _match_tensor(self.compiled(), node.outputs[0], initial, trace):
            nodes = state["__nodes__"]
            reason = _escapes(graph, nodes, node)
            if reason is None:
                bindings = {k: v for k, v in state.items() if not k.startswith("__")}
                m = Match(node, nodes, bindings, dict(state["__tensors__"]),
                          dict(state["__tags__"]))
                verdict = self._attributed("check", node, self.check, m)
                if verdict is None:
                    return m
                if not isinstance(verdict, Reject):
                    raise RuleError(f"rule {self.name} at {node_label(node)}: check() returned "
                                    f"{verdict!r}; return None to accept or Reject(reason)")
                reason = str(verdict)
            trace.fail(len(nodes) + 1, reason)
        return None

    def _attributed(self, what: str, node: gs.Node, call: Callable, *args: Any) -> Any:
        """`call(*args)`, with any exception re-raised naming this rule and the root node."""
        try:
            return call(*args)
        except RuleError:
            raise
        except Exception as e:
            raise RuleError(f"rule {self.name} at {node_label(node)}: {what}() raised "
                            f"{type(e).__name__}: {e}") from e


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


def apply_rules(model: Model, rules: Sequence[Rule], *, max_sweeps: int = 16) -> dict[str, int]:
    """Apply `rules` to the main graph until none matches.

    Returns:
        How many times each rule fired, by rule name, in `rules` order (zeros included).

    Raises:
        RuleError: Rules still fired in sweep `max_sweeps`: a rewrite that produces what
            its own (or another rule's) pattern matches again would loop forever, and
            stopping silently would leave the graph half rewritten.
    """
    graph = model.graph
    by_op: dict[str, list[Rule]] = {}
    for rule in rules:
        for op in rule.root_ops():
            by_op.setdefault(op, []).append(rule)
    counts = {rule.name: 0 for rule in rules}
    if len(counts) != len(rules):
        raise ValueError("apply_rules: two rules share a name, so their counts would merge; "
                         "override Rule.name")
    for _ in range(max_sweeps):
        fired: list[str] = []
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
                fired.append(rule.name)
                break
        if not fired:
            return counts
    raise RuleError(f"rules did not settle in {max_sweeps} sweeps: "
                    f"{', '.join(dict.fromkeys(fired))} still fired in the last one; does a "
                    "rewrite produce what a pattern matches again?")


def _replace(model: Model, m: Match, rule: Rule) -> bool:
    """Apply `rule`'s rewrite of `m`; False (graph untouched) if it would rename a tensor that
    is part of the model's interface, e.g. a rewrite returning a graph input for an output."""
    graph = model.graph
    builder = Builder(model, m.root.name or rule.name)
    new_outputs = _as_list(rule._attributed("rewrite", m.root, rule.rewrite, m, builder))
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
    root_ops = rule.root_ops()
    return [m for node in model.graph.nodes if node.op in root_ops
            for m in [rule.match(model.graph, node)] if m is not None]


def explain(model: Model, rules: Rule | Sequence[Rule]) -> str:
    """Why each of `rules` does or does not fire: the deepest partial match over all roots.

    One line per rule, naming the root node and the failing condition.
    """
    return "\n".join(_explain_one(model, rule) for rule in (
        [rules] if isinstance(rules, Rule) else rules))


def _explain_one(model: Model, rule: Rule) -> str:
    root_ops = rule.root_ops()
    best, where = _Trace(), None
    for node in model.graph.nodes:
        if node.op not in root_ops:
            continue
        trace = _Trace()
        if rule.match(model.graph, node, trace) is not None:
            return f"{rule.name} matches at {node_label(node)}"
        if trace.progress > best.progress:
            best, where = trace, node
    if where is None:
        return f"{rule.name}: no {' or '.join(root_ops)} node in the graph"
    return (f"{rule.name}: deepest partial match rooted at {node_label(where)} "
            f"({best.progress} nodes matched): {best.reason}")


# --------------------------------------------------------------------------------------------
# Helpers the decomposed-op fusions share
def single_values(m: Match, x: gs.Tensor, skip: Sequence[gs.Tensor] = ()) -> Reject | None:
    """Why some constant operand of the matched nodes is not a lone value broadcast over `x`.

    Rules compare constants by value with broadcasting, so ``[0.5, 0.5]`` or a ``[1, 1, 1]``
    shaped 0.5 would match too; but a fused elementwise op maps `x` to a tensor of `x`'s
    shape, which is only what the decomposed graph computed when every constant is a single
    value of rank at most `x`'s (a higher rank would have broadcast the output up). An unknown
    rank is taken as 1: rank-0 activations do not occur in practice. Tensors in `skip` (a
    per-channel scale the rule checks itself) are not looked at.
    """
    limit = rank(x) or 1
    for node in m.nodes:
        for tensor in node.inputs:
            if any(tensor is t for t in skip):
                continue
            value = constant_value(tensor)
            if value is None:
                continue
            if value.size != 1:
                return Reject(f"constant '{tensor.name}' holds {value.size} values, not one",
                              node)
            if value.ndim > limit:
                return Reject(f"constant '{tensor.name}' has rank {value.ndim}, above the rank "
                              f"of '{x.name}'", node)
    return None


def candidates(model: Model, rules: Sequence[Rule]) -> int:
    """How many nodes some rule would rewrite at, found without rewriting.

    A pass that cannot rewrite (its op needs a newer opset) reports this next to its reason.
    """
    return len({id(m.root) for rule in rules for m in find(model, rule)})


def summarize(counts: dict[str, int], fusing: Sequence[Rule]) -> dict[str, int]:
    """Rule counts as the fusion passes report them.

    Returns:
        ``fused``, the firings of the `fusing` rules (those that create the fused op), then
        the count of every rule that fired (zero counts of a large rule set are noise).
    """
    fired = {name: n for name, n in counts.items() if n}
    return {"fused": sum(fired.get(rule.name, 0) for rule in fusing), **fired}
