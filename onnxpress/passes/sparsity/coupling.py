"""Channel coupling: which channels of which layers must be removed together.

Removing output channel ``k`` of a Conv, Gemm or MatMul deletes one slice of every tensor
that carries that channel downstream. Every op that reads such a tensor must then lose the
matching slice of its own parameters, and every tensor added to it (a residual branch) must
lose the same slice too. This module finds those sets, the *groups* of DepGraph (Fang et al.,
CVPR 2023), on an ONNX graph. It changes nothing.

Channel spaces and layouts
--------------------------
Each Conv (``group = 1``) / ConvTranspose / Gemm / MatMul output opens a *channel space* of
``C`` channels (or several, one per part: see "Parts and blocks").
The channel axis of every tensor downstream carries a *layout*: segments
``(space s_j, length C_j, stride r_j)`` laid end to end. Channel ``k`` of segment ``j`` holds
the positions

    o_j + k·r_j + t,   t = 0 … r_j − 1,   where o_j = Σ_{i<j} C_i·r_i

of that axis. Ops map the layouts of their inputs to the layouts of their outputs:

- identity, ``L_out = L_in``: BatchNormalization, unary elementwise ops (Relu, Clip,
  Sigmoid, …), MaxPool / AveragePool / GlobalAveragePool, Resize and Pad that leave the
  channel axis alone, Split and Slice along another axis;
- axis moves, same segments: Transpose (the channel axis goes to ``perm⁻¹(axis)``), Squeeze /
  Unsqueeze of other axes, and reductions (ReduceMean, ReduceSum, …) over other axes
  (torch's ``x.mean((2, 3))``; without ``keepdims`` the axis moves down);
- LSTM reads its input's channels on the last axis of ``X [seq, batch, C]``: a consumer, its
  ``W`` sliced on axis 2; its hidden channels open no space (four gates deep in ``W``, ``R``,
  ``B``, recurrent), so what it outputs is never pruned;
- Concat on the channel axis, ``L_out = L_1 ‖ L_2 ‖ …``: the offsets ``o_j`` shift by the
  widths before them (the offset mapping);
- Split and Slice on the channel axis (the reverse offset mapping): an output that takes the
  positions ``[a, b)`` of the input axis carries the segments lying in ``[a, b)``, offsets
  shifted by ``−a``. A boundary falling inside a segment *cuts* its space (below);
- grouped Conv with ``group = g``, ``C_in = g·k_in``, ``C_out = g·k_out`` (depthwise:
  ``k_in = 1``, with a channel multiplier ``k_out > 1``): conv group ``j`` reads the inputs
  ``[j·k_in, (j+1)·k_in)`` and writes the outputs ``[j·k_out, (j+1)·k_out)``, so it is pruned
  by *whole groups* and the channels pass through: every input segment must hold whole
  conv groups per channel (``k_in | r_j``, else its space is *coarsened*, below) and the
  output carries the same spaces with strides ``r_j·k_out/k_in``; ``group`` shrinks;
- Flatten / Reshape ``[…, C, d_1 … d_m] → […, C·s, e_1 … e_n]`` with ``s = Πd / Πe`` an
  integer: every stride ``r_j ← r_j·s``. For Flatten after a ``C×H×W`` map this is the stride
  mapping ``c ↔ features [c·HW, (c+1)·HW)`` of the Gemm that follows;
- elementwise ops with several channel-carrying inputs (residual Add, Mul, Sub, …, and
  Concat on another axis) need identical indices on every input: their layouts must agree
  segment by segment, and each pair of spaces is *unified*.

Unifications are the edges of a "channel-space" graph (networkx); a group is one connected
component. Pruning chooses one kept set ``K ⊂ [0, C)`` per group and applies it to every space
in it; each parameter slice then keeps the positions ``P(K)`` that the layout of the tensor
it applies to assigns to ``K``:

- producers: output axis of the weight ``W[P, …]`` and the bias ``b[P]``;
- consumers: input axis of the weight, ``W[:, P, …]`` for Conv, rows or columns of the Gemm
  weight (with the stride mapping after Flatten), rows of a MatMul ``[K, N]`` weight;
- through the group: BatchNormalization parameters, per-channel constants of elementwise ops,
  the grouped (or depthwise) weight and bias on their output axis together with
  ``group = |P_in| / k_in``, the channel entry of Reshape shape and Resize sizes constants,
  the Split sizes ``|P ∩ [a_i, b_i)|`` and the Slice bounds ``|P ∩ [0, a)|``,
  ``|P ∩ [0, b)|``.

Parts and blocks
----------------
A space is not always a whole layer output. The channels of a layer (its *origin*) are cut
into *parts* where a Split or Slice boundary falls inside them: each part is a space of its
own, so a Split half feeding a residual Add (YOLO's C2f) is its own group, and a Slice's
output maps onto whole parts while the channels it leaves out (other parts of the same
producer) are not read through it. A part is also laid out in *blocks* of ``u`` channels
when a grouped Conv reads it (``u = k_in``): one channel of the space is then ``u``
consecutive channels of the layer (stride ``u`` at the producer), so whole conv groups are
removed. Cuts and blocks found on one space apply to every space unified with it. They are
learnt by sweeping the graph again until no new one turns up; a sweep that still lacks one
freezes what it could not map, so every sweep's result is safe. A cut inside a block (a
Slice at channel 2 of a group of 4 channels) cannot be honored: the layer's output then
stays one unrefined, frozen space, with both nodes named.

A group is *frozen* (never pruned) when any of its spaces reaches an op the analysis cannot
map, a graph output (the model's interface never changes shape), a graph input or another
fixed-width tensor, Split / Slice bounds that are not constant (or a Slice step ≠ 1 on the
channel axis), a grouped Conv whose groups straddle two spaces, a cut inside a block or a
layout mismatch. The reason names the op and the node.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir import analyses, ops
from onnxpress.ir.edit import consumers, dependencies
from onnxpress.ir.model import Model

#: Ops that apply one function per element: the output layout is the input's.
UNARY = frozenset({
    "Abs", "Cast", "Ceil", "Celu", "Clip", "Cos", "Dropout", "Elu", "Erf", "Exp", "Floor",
    "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log",
    "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin",
    "Softplus", "Softsign", "Sqrt", "Tanh", "ThresholdedRelu",
})

#: Broadcasting elementwise ops: channel-carrying inputs couple, constants are sliced.
ELEMENTWISE = frozenset({
    "Add", "And", "BitShift", "Div", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow", "PRelu", "Sub", "Sum",
    "Where", "Xor",
})

#: onnxruntime contrib ops (com.microsoft) that are elementwise: FastGelu and BiasGelu add a
#: per-channel bias, sliced like any per-channel constant.
CONTRIB_ELEMENTWISE = frozenset({"BiasGelu", "FastGelu", "Gelu", "QuickGelu"})

#: Ops that pool over the spatial axes of an NCHW tensor, channel by channel.
POOLS = frozenset({"AveragePool", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
                   "LpPool", "MaxPool"})

#: Reductions computed channel by channel when the channel axis is not reduced (torch's
#: ``x.mean((2, 3))`` is a ReduceMean over H, W: a GlobalAveragePool without the 1×1 dims).
REDUCES = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                     "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"})

#: Layers whose weights define channel spaces.
LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

#: Node metadata key recording, on a layer whose output channels were pruned, which channels
#: of the original (JSON list of indices) it keeps; `reconstruct` selects the teacher's.
KEPT_KEY = "onnxpress.kept_channels"


# --------------------------------------------------------------------------------------------
# Layouts
@dataclass(frozen=True)
class Segment:
    """A channel space laid along part of a tensor axis.

    Attributes:
        space: Id of the channel space.
        length: Its channel count ``C``.
        stride: Consecutive positions per channel (``H·W`` after Flatten, else 1).
    """

    space: int
    length: int
    stride: int = 1

    @property
    def width(self) -> int:
        """Positions the segment occupies."""
        return self.length * self.stride


@dataclass(frozen=True)
class Layout:
    """The channel axis of a tensor and the segments along it.

    Attributes:
        axis: The channel axis (non-negative).
        rank: The tensor's rank.
        segments: Channel spaces laid end to end along `axis`.
    """

    axis: int
    rank: int
    segments: tuple[Segment, ...]

    @property
    def width(self) -> int:
        """Size of the channel axis."""
        return sum(s.width for s in self.segments)

    @property
    def spaces(self) -> list[int]:
        """Spaces of the segments, in order (a space may repeat)."""
        return [s.space for s in self.segments]

    def index_maps(self, spaces: Iterable[int]) -> list[tuple[int, int]]:
        """``(offset, stride)`` of each segment of `spaces`: channel ``k`` is at positions
        ``[offset + k·stride, offset + (k+1)·stride)``."""
        wanted, maps, offset = set(spaces), [], 0
        for seg in self.segments:
            if seg.space in wanted:
                maps.append((offset, seg.stride))
            offset += seg.width
        return maps

    def positions(self, kept: Mapping[int, np.ndarray]) -> np.ndarray | None:
        """Positions along the axis that survive when space ``s`` keeps channels ``kept[s]``.

        Returns:
            Sorted positions, or None if no space of this layout loses a channel.
        """
        parts, offset, changed = [], 0, False
        for seg in self.segments:
            channels = kept.get(seg.space)
            changed |= channels is not None
            if channels is None:
                channels = np.arange(seg.length)
            parts.append(offset + (np.asarray(channels)[:, None] * seg.stride
                                   + np.arange(seg.stride)).reshape(-1))
            offset += seg.width
        return np.concatenate(parts).astype(np.int64) if changed else None

    def restrided(self, factor: int, axis: int, rank: int) -> Layout:
        """This layout with every stride multiplied by `factor` (Flatten/Reshape)."""
        return Layout(axis, rank, tuple(Segment(s.space, s.length, s.stride * factor)
                                        for s in self.segments))


# --------------------------------------------------------------------------------------------
# Edits: what pruning a group rewrites
@dataclass(frozen=True, eq=False)  # nodes compare by value: use identity
class Edit:
    """One parameter that pruning rewrites, given the kept positions of `layout`.

    Attributes:
        node: The node whose input or attribute changes.
        layout: Layout of the tensor whose surviving positions decide the edit.
        role: "producer" (output channels of a layer), "consumer" (input channels of a
            layer) or "through" (an op the channels pass through).
    """

    node: gs.Node
    layout: Layout
    role: str

    def apply(self, model: Model, positions: np.ndarray) -> None:
        """Rewrite the parameter for the surviving `positions` of `layout`."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class SliceInput(Edit):
    """Keep `positions` along `axis` of the constant ``node.inputs[index]``."""

    index: int = 1
    axis: int = 0

    def apply(self, model: Model, positions: np.ndarray) -> None:
        """Slice the constant (in place unless another node shares it)."""
        const = self.node.inputs[self.index]
        set_constant(model, self.node, self.index,
                      np.take(const.values, positions, axis=self.axis))


@dataclass(frozen=True, eq=False)
class SetEntry(Edit):
    """Write the new channel width into entry `entry` of the 1-D constant input `index`
    (the channel dimension of a Reshape shape or a Resize sizes)."""

    index: int = 1
    entry: int = 0

    def apply(self, model: Model, positions: np.ndarray) -> None:
        """Replace the entry by ``len(positions)``."""
        values = np.array(self.node.inputs[self.index].values, copy=True)
        values[self.entry] = positions.size
        set_constant(model, self.node, self.index, values)


@dataclass(frozen=True, eq=False)
class SetGroup(Edit):
    """A grouped Conv keeps one group per `per_group` surviving input channels (`layout` is
    its input's; a depthwise Conv has ``per_group = 1``)."""

    per_group: int = 1

    def apply(self, model: Model, positions: np.ndarray) -> None:
        """Set ``group`` to ``|P_in| / k_in``."""
        self.node.attrs["group"] = int(positions.size // self.per_group)


@dataclass(frozen=True, eq=False)
class SetSplit(Edit):
    """A Split on the channel axis whose output ``i`` took positions ``[b_i, b_{i+1})`` of its
    input (`layout`) keeps ``|P ∩ [b_i, b_{i+1})|`` of them.

    Attributes:
        bounds: ``b_0 = 0 < b_1 < … < b_n`` = the input width, before pruning.
    """

    bounds: tuple[int, ...] = ()

    def apply(self, model: Model, positions: np.ndarray) -> None:
        """Rewrite the sizes: the ``split`` input (opset ≥ 13, added in place of an equal
        split or ``num_outputs``) or attribute (opset < 13)."""
        sizes = np.diff(_count_below(positions, self.bounds)).astype(np.int64)
        node = self.node
        if model.opset < 13:
            node.attrs["split"] = [int(n) for n in sizes]
        elif len(node.inputs) > 1 and not node.inputs[1].is_empty():
            set_constant(model, node, 1, sizes)
        else:
            node.attrs.pop("num_outputs", None)
            split = model.constant(f"{node_label(node)}_split", sizes)
            if len(node.inputs) > 1:
                node.inputs[1] = split
            else:
                node.inputs.append(split)


@dataclass(frozen=True, eq=False)
class SetSliceBounds(Edit):
    """A Slice that took positions ``[start, stop)`` (step 1) of its input's channel axis
    (`layout`) now takes ``[|P ∩ [0, start)|, |P ∩ [0, stop)|)``.

    Attributes:
        entry: Index of the channel axis in ``starts`` / ``ends`` / ``axes``.
        start, stop: The normalized bounds before pruning (``0 ≤ start < stop ≤ width``).
    """

    entry: int = 0
    start: int = 0
    stop: int = 0

    def apply(self, model: Model, positions: np.ndarray) -> None:
        """Write both bounds (inputs 1 and 2, or the attributes below opset 10)."""
        node = self.node
        bounds = _count_below(positions, (self.start, self.stop))
        if "starts" in node.attrs:
            for name, value in zip(("starts", "ends"), bounds, strict=True):
                values = list(node.attrs[name])
                values[self.entry] = int(value)
                node.attrs[name] = values
            return
        for index, value in zip((1, 2), bounds, strict=True):
            values = np.array(node.inputs[index].values, copy=True)
            values[self.entry] = value
            set_constant(model, node, index, values)


def _count_below(positions: np.ndarray, bounds: Sequence[int]) -> np.ndarray:
    """How many of `positions` lie below each bound."""
    return np.array([np.count_nonzero(positions < b) for b in bounds], np.int64)


def set_constant(model: Model, node: gs.Node, index: int, values: np.ndarray) -> None:
    """Give ``node.inputs[index]`` new values: in place (the initializer keeps its name) when
    `node` is its only reader, else as a new initializer for `node` alone."""
    const = node.inputs[index]
    if all(reader is node for reader in const.outputs):
        const.values = values
    else:
        node.inputs[index] = model.constant(const.name, values)


# --------------------------------------------------------------------------------------------
# Results
@dataclass
class ChannelGroup:
    """Channels that must be removed together.

    Attributes:
        channels: Channel count ``C`` shared by every space of the group (in blocks when
            ``unit > 1``: pruning keeps or removes whole channels of the space).
        spaces: Ids of the unified channel spaces.
        producers: Layers whose output channels are the group (weights sliced on the output
            axis). A layer whose output is cut into parts is listed once per part.
        consumers: ``(layer, [(offset, stride), …])``: layers whose input channels the group
            feeds, with the index map of each occurrence along their input axis (channel
            ``k`` is positions ``[offset + k·stride, offset + (k+1)·stride)``).
        through: Nodes the channels pass through that pruning rewrites (BN, grouped and
            depthwise Conv, per-channel constants, Reshape/Resize constants, Split, Slice).
        frozen: Why the group must not be pruned, or None if it may.
        unit: Layer channels per channel of the group (the block a grouped Conv prunes
            whole; the gcd over the producers), 1 for plain channels.
        ranges: Per producer, the channels ``(lo, hi)`` of its output this group is, or None
            for the whole output.
    """

    channels: int
    spaces: tuple[int, ...]
    producers: list[gs.Node] = field(default_factory=list)
    consumers: list[tuple[gs.Node, list[tuple[int, int]]]] = field(default_factory=list)
    through: list[gs.Node] = field(default_factory=list)
    frozen: str | None = None
    unit: int = 1
    ranges: list[tuple[int, int] | None] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The group's name in reports: its producers' node names (with the channel range
        when the group is part of a layer's output)."""
        ranges = self.ranges + [None] * (len(self.producers) - len(self.ranges))
        return "+".join(node_label(p) + (f"[{r[0]}:{r[1]}]" if r else "")
                        for p, r in zip(self.producers, ranges, strict=True))

    def describe(self) -> str:
        """One line: width, producers, consumers with their index maps, status."""
        def maps(m: list[tuple[int, int]]) -> str:
            return ",".join(f"@{o}" + (f"×{s}" if s > 1 else "") for o, s in m)
        users = ", ".join(f"{node_label(n)} [{maps(m)}]" for n, m in self.consumers) or "none"
        via = ", ".join(dict.fromkeys(f"{n.op} {node_label(n)}" for n in self.through))
        status = f"frozen: {self.frozen}" if self.frozen else "prunable"
        width = (f"{self.channels} ch" if self.unit == 1
                 else f"{self.channels} blocks of {self.unit} ch")
        return (f"{width} — out of {self.label}; into {users}"
                + (f"; through {via}" if via else "") + f" — {status}")


@dataclass
class Coupling:
    """The full analysis: groups and every edit pruning them implies.

    Attributes:
        groups: Channel groups, in the topological order of their first producer.
        edits: Every parameter rewrite, whatever group it belongs to.
        outputs: ``(layer, output layout)`` of every Conv/ConvTranspose/Gemm/MatMul whose
            output carries a layout (a pruned one is tagged with the channels it keeps).
    """

    groups: list[ChannelGroup]
    edits: list[Edit]
    outputs: list[tuple[gs.Node, Layout]]


def channel_groups(model: Model) -> list[ChannelGroup]:
    """Every channel group of `model` (prunable or frozen, with the reason).

    A plain analysis: cache it with ``model.analysis(channel_groups)``.
    """
    return analyze(model).groups


def describe_groups(model: Model) -> list[str]:
    """One line per channel group, for ``onnxpress inspect --prunable``."""
    return [f"group {i}: {g.describe()}" for i, g in enumerate(channel_groups(model))]


#: Sweeps before `analyze` settles for what it has (each sweep learns at least one cut or
#: block; a chain of Splits of Splits of one space needs one sweep per level).
MAX_SWEEPS = 32


def analyze(model: Model) -> Coupling:
    """Propagate channel layouts through `model` and group the coupled channel spaces,
    sweeping again while a sweep learns a new cut or block (see "Parts and blocks")."""
    model.analysis(analyses.shapes)
    view = analyses.nx_view(model)
    order = [view.nodes[i]["node"] for i in nx.lexicographical_topological_sort(view)]
    learnt = _Learnt()
    for _ in range(MAX_SWEEPS):
        sweep = _Propagation(model, learnt)
        coupling = sweep.run(order)
        if not learnt.update(sweep.spaces, sweep.requests):
            break
    return coupling


# --------------------------------------------------------------------------------------------
# Parts and blocks, learnt across sweeps
@dataclass
class _Learnt:
    """The cuts and blocks found so far, per *origin* (a layer, or a fixed-width Concat
    input ``(concat, index)``, by identity), in channels of that origin.

    Attributes:
        cuts: ``origin → {channel: {node: None}}``: a part starts at `channel` (the nodes
            whose bounds fall there, in order).
        blocks: ``origin → {(lo, hi): (u, {node: None})}``: channels ``[lo, hi)`` are pruned
            in blocks of ``u``, aligned on ``lo`` (for the grouped Convs named).
        conflicts: ``origin → reason``: a cut falls inside a block; the origin stays one
            unrefined space, frozen with the reason.
    """

    cuts: dict = field(default_factory=dict)
    blocks: dict = field(default_factory=dict)
    conflicts: dict = field(default_factory=dict)

    def parts(self, origin: object, channels: int, label: str
              ) -> tuple[list[tuple[int, int, int]], str | None]:
        """``(lo, hi, unit)`` of each part of `origin`'s `channels`, and why the origin is
        frozen if a cut falls inside a block."""
        if origin in self.conflicts:
            return [(0, channels, 1)], self.conflicts[origin]
        cuts = self.cuts.get(origin, {})
        bounds = sorted({0, channels, *(c for c in cuts if 0 < c < channels)})
        parts = []
        for lo, hi in itertools.pairwise(bounds):
            unit = 1
            for (a, b), (u, grouped) in self.blocks.get(origin, {}).items():
                if not (a < hi and lo < b):
                    continue
                for c in (lo, hi):
                    if a < c < b and (c - a) % u:
                        reason = (f"{_both(cuts[c], 'cuts')} {label} at channel {c}, inside "
                                  f"a block of {u} channels that {_both(grouped, 'prunes')} "
                                  "whole")
                        self.conflicts[origin] = reason
                        return [(0, channels, 1)], reason
                unit = math.lcm(unit, u)
            parts.append((lo, hi, unit))
        return parts, None

    def update(self, spaces: nx.Graph, requests: Iterable[tuple[int, str, int, str]]
               ) -> bool:
        """Apply a sweep's requests ``(space, "cut" | "block", value, node)`` to every space
        unified with the requesting one; True if a cut or block is new.

        A cut at channel ``c`` of a space whose part starts at ``lo`` of its origin with
        blocks of ``u`` cuts that origin at ``lo + c·u``; a block of ``f`` channels of the
        space makes the part's blocks ``u·f`` channels of its origin.
        """
        component = {s: c for c in nx.connected_components(spaces) for s in c}
        new = False
        for space, kind, value, where in requests:
            for other in sorted(component[space]):
                data = spaces.nodes[other]
                origin, lo, unit = data["origin"], data["lo"], data["unit"]
                if origin is None or origin in self.conflicts:
                    continue
                if kind == "cut":
                    nodes = self.cuts.setdefault(origin, {}).setdefault(lo + value * unit, {})
                    new |= not nodes
                    nodes[where] = None
                else:
                    span = (lo, lo + data["length"] * unit)
                    old, grouped = self.blocks.setdefault(origin, {}).get(span, (1, {}))
                    self.blocks[origin][span] = (math.lcm(old, unit * value),
                                                 {**grouped, where: None})
                    new |= self.blocks[origin][span][0] != old
        return new


def _both(nodes: Iterable[str], verb: str) -> str:
    """``"A cuts"`` or ``"A and B cut"``."""
    nodes = list(nodes)
    return f"{' and '.join(nodes)} {verb if len(nodes) == 1 else verb[:-1]}"


# --------------------------------------------------------------------------------------------
# Propagation
def _float_constant(tensor: gs.Tensor) -> np.ndarray | None:
    value = ops.constant_value(tensor)
    return value if value is not None and ops.is_float(value.dtype) else None


def _static(dims: Sequence) -> int | None:
    """Product of `dims` if all are known integers."""
    return math.prod(dims) if all(isinstance(d, int) and d >= 0 for d in dims) else None


def node_label(node: gs.Node) -> str:
    """A node's name, or ``op→first output`` for an unnamed node."""
    return node.name or f"{node.op}→{node.outputs[0].name if node.outputs else '?'}"


def _where(node: gs.Node) -> str:
    return f"{node.op} node '{node_label(node)}'"


class _Propagation:
    """One forward sweep assigning layouts to tensors, then grouping the spaces."""

    def __init__(self, model: Model, learnt: _Learnt) -> None:
        self.model = model
        self.learnt = learnt
        self.layouts: dict[int, Layout] = {}
        self.spaces = nx.Graph()
        self.edits: list[Edit] = []
        self.outputs: list[tuple[gs.Node, Layout]] = []
        #: ``(space, "cut" | "block", channel or factor, node)`` this sweep could not honor.
        self.requests: list[tuple[int, str, int, str]] = []
        self.handlers = {
            "Conv": self._conv, "ConvTranspose": self._conv_transpose, "Gemm": self._gemm,
            "MatMul": self._matmul, "BatchNormalization": self._batchnorm,
            "Concat": self._concat, "Flatten": self._flatten, "Reshape": self._reshape,
            "Resize": self._resize, "Pad": self._pad, "Split": self._split,
            "Slice": self._slice,
            **dict.fromkeys(UNARY, self._unary), **dict.fromkeys(ELEMENTWISE, self._elementwise),
            **dict.fromkeys(POOLS, self._pool), **dict.fromkeys(REDUCES, self._reduce),
            "LSTM": self._lstm, "Transpose": self._transpose, "Squeeze": self._squeeze,
            "Unsqueeze": self._unsqueeze,
        }

    # -- bookkeeping -----------------------------------------------------------------------
    def layout(self, tensor: gs.Tensor) -> Layout | None:
        return self.layouts.get(id(tensor))

    def freeze(self, layouts: Iterable[Layout | None], reason: str) -> None:
        for layout in layouts:
            for space in layout.spaces if layout is not None else ():
                self.spaces.nodes[space]["reasons"].append(reason)

    def new_space(self, length: int, producer: gs.Node | None = None,
                  reason: str | None = None, origin: object = None, lo: int = 0,
                  unit: int = 1, part: tuple[int, int] | None = None) -> int:
        space = self.spaces.number_of_nodes()
        self.spaces.add_node(space, length=length, producer=producer,
                             reasons=[reason] if reason else [], origin=origin, lo=lo,
                             unit=unit, part=part)
        return space

    def open(self, origin: object, channels: int, producer: gs.Node | None, label: str,
             reason: str | None) -> tuple[tuple[Segment, ...], str | None]:
        """The segments of a new tensor of `channels` channels: one space per part learnt so
        far, each channel of it a block of ``unit`` channels (stride ``unit``), and the
        reason they are frozen (`reason`, or a conflict between cuts and blocks)."""
        parts, conflict = self.learnt.parts(origin, channels, label)
        reason = "; ".join(r for r in (reason, conflict) if r) or None
        return tuple(
            Segment(self.new_space((hi - lo) // unit, producer, reason, origin, lo, unit,
                                   (lo, hi) if len(parts) > 1 else None),
                    (hi - lo) // unit, unit)
            for lo, hi, unit in parts), reason

    def request(self, space: int, kind: str, value: int, node: gs.Node) -> None:
        """Ask the next sweep for a cut at channel `value` of `space` ("cut") or for blocks
        of `value` of its channels ("block")."""
        self.requests.append((space, kind, value, _where(node)))

    def root(self, node: gs.Node, channels: int | None, axis: int, weight_axis: int,
             bias_axis: int | None, reason: str | None = None) -> None:
        """`node`'s output opens a new space; its weight (input 1, sliced on `weight_axis`)
        and bias (input 2, on `bias_axis`) are the producer edits.

        Without a known width and rank the output stays untracked, which freezes whatever
        it meets (an untracked tensor cannot be sliced).
        """
        out = node.outputs[0]
        shape = ops.static_dims(out)
        if shape is None:
            return
        axis %= len(shape)
        if channels is None:
            channels = shape[axis]
        if not isinstance(channels, int):
            return
        segments, reason = self.open(id(node), channels, node, f"'{node_label(node)}'", reason)
        layout = Layout(axis, len(shape), segments)
        self.layouts[id(out)] = layout
        if reason is None:  # a frozen space is never pruned: nothing to edit
            self.outputs.append((node, layout))
            self.edits.append(SliceInput(node, layout, "producer", 1, weight_axis))
            if bias_axis is not None:
                self.edits.append(SliceInput(node, layout, "producer", 2, bias_axis))

    def unify(self, node: gs.Node, layouts: Sequence[Layout]) -> Layout | None:
        """Require identical channel indices on all `layouts`; return the common layout."""
        first = layouts[0]
        shape_of = [(s.length, s.stride) for s in first.segments]
        tail = first.rank - first.axis
        if any(lay.rank - lay.axis != tail or [(s.length, s.stride) for s in lay.segments]
               != shape_of for lay in layouts[1:]):
            self.freeze(layouts, f"{_where(node)} joins tensors whose channel layouts differ")
            return None
        for lay in layouts[1:]:
            for a, b in zip(first.segments, lay.segments, strict=True):
                self.spaces.add_edge(a.space, b.space)
        rank = max(lay.rank for lay in layouts)
        return Layout(rank - tail, rank, first.segments)

    def pass_through(self, node: gs.Node, layout: Layout | None) -> None:
        """Every output of `node` carries `layout`."""
        if layout is not None:
            for out in node.outputs:
                if not out.is_empty():
                    self.layouts[id(out)] = layout

    # -- sweep -----------------------------------------------------------------------------
    def run(self, order: Iterable[gs.Node]) -> Coupling:
        """Visit the nodes in topological `order`, then group the spaces."""
        for node in order:
            carried = [self.layout(t) for t in dependencies(node)]
            handler = self.handler(node)
            if node.op in LAYERS and handler is not None:
                # Channels reaching a weight or bias input would change the layer's shape.
                self.freeze([self.layout(t) for t in node.inputs[1:]],
                            f"{_where(node)} reads channels as a weight or bias")
                handler(node)
            elif not any(carried):
                continue  # nothing channel-coupled flows through this node
            elif handler is None:
                self.freeze(carried, f"{_where(node)} cannot be mapped")
            else:
                handler(node)
        for out in self.model.graph.outputs:
            self.freeze([self.layout(out)], f"reaches graph output '{out.name}'")
        return Coupling(self.groups(), self.edits, self.outputs)

    def handler(self, node: gs.Node):
        """The transfer function of `node`'s op, or None if it has none."""
        domain = node.domain or ""
        if domain in ("", "ai.onnx"):
            return self.handlers.get(node.op)
        if domain == "com.microsoft" and node.op in CONTRIB_ELEMENTWISE:
            return self._elementwise
        return None

    def groups(self) -> list[ChannelGroup]:
        """Connected components of the space graph that contain a layer's output."""
        result: list[ChannelGroup] = []
        group_of: dict[int, ChannelGroup] = {}
        for component in sorted(nx.connected_components(self.spaces), key=min):
            spaces = tuple(sorted(component))
            data = [self.spaces.nodes[s] for s in spaces]
            made = [d for d in data if d["producer"] is not None]
            if not made:
                continue  # a fixed-width Concat input alone: nothing could prune it
            reasons = list(dict.fromkeys(r for d in data for r in d["reasons"]))
            group = ChannelGroup(channels=data[0]["length"], spaces=spaces,
                                 producers=[d["producer"] for d in made],
                                 frozen="; ".join(reasons) or None,
                                 unit=math.gcd(*(d["unit"] for d in made)),
                                 ranges=[d["part"] for d in made])
            result.append(group)
            group_of.update(dict.fromkeys(spaces, group))
        listed: set[tuple[int, int]] = set()
        for edit in self.edits:
            if edit.role == "producer":
                continue
            for group in {id(g): g for s in edit.layout.spaces
                          if (g := group_of.get(s)) is not None}.values():
                if (id(group), id(edit.node)) in listed:
                    continue
                listed.add((id(group), id(edit.node)))
                if edit.role == "consumer":
                    group.consumers.append((edit.node, edit.layout.index_maps(group.spaces)))
                else:
                    group.through.append(edit.node)
        return result

    # -- layers ----------------------------------------------------------------------------
    def _bias_axis(self, node: gs.Node) -> int | None:
        """0 if a Conv / ConvTranspose has a constant bias (input 2), else None."""
        bias = ops.optional_input(node, 2)
        return 0 if bias is not None and ops.constant_value(bias) is not None else None

    def _weightless(self, node: gs.Node, axis: int, reason: str) -> None:
        """A layer whose weight cannot be sliced: its inputs and its output are frozen."""
        reason = f"{_where(node)}: {reason}"
        self.freeze([self.layout(t) for t in node.inputs], reason)
        self.root(node, None, axis, 1, None, reason)

    def _conv(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        weight = _float_constant(node.inputs[1])
        group = int(node.attrs.get("group", 1))
        if weight is None:
            return self._weightless(node, 1, "the weight is not a float initializer")
        if layout is not None and layout.axis != 1:
            self.freeze([layout], f"{_where(node)} reads channels off axis 1")
            layout = None
        if group == 1:
            if layout is not None:
                self.edits.append(SliceInput(node, layout, "consumer", 1, 1))
            return self.root(node, weight.shape[0], 1, 0, self._bias_axis(node))
        # Whole groups go with the input's channels: an untracked (graph) input leaves the
        # output untracked too.
        if layout is not None:
            self._grouped(node, layout, weight.shape, group)
        return None

    def _grouped(self, node: gs.Node, layout: Layout, shape: tuple, group: int) -> None:
        """Conv with ``group = g``, weight ``[g·k_out, k_in, …]``, pruned by whole groups.

        Conv group ``j`` reads input positions ``[j·k_in, (j+1)·k_in)`` and writes output
        positions ``[j·k_out, (j+1)·k_out)``. A segment ``(s, C, r)`` of the input with
        ``k_in | r`` holds ``r/k_in`` whole conv groups per channel, so channel ``k`` of ``s``
        is the output positions ``[o·k_out/k_in + k·r', …+ r')``, ``r' = r·k_out/k_in``: the
        output carries the same spaces with those strides, the weight and bias keep the
        output positions ``P_out`` and ``group = |P_in| / k_in``. Depthwise is ``k_in = 1``
        (``k_out > 1``: a channel multiplier). A segment with ``k_in ∤ r`` asks for blocks of
        ``lcm(r, k_in)/r`` channels of its space (next sweep); one whose width is not a
        multiple of ``k_in`` shares a conv group with its neighbour: frozen.
        """
        k_in, k_out = shape[1], shape[0] // group
        if shape[0] % group or layout.width != group * k_in:
            self.freeze([layout], f"{_where(node)}: group={group} does not divide the "
                                  "channels")
            return
        segments, ready = [], True
        for seg in layout.segments:
            if seg.width % k_in:
                self.freeze([layout], f"{_where(node)} (group={group}) has a group of {k_in} "
                                      "input channels straddling two channel groups")
                return
            if seg.stride % k_in:
                self.request(seg.space, "block", math.lcm(seg.stride, k_in) // seg.stride,
                             node)
                ready = False
            segments.append(Segment(seg.space, seg.length, seg.stride // k_in * k_out))
        if not ready:
            self.freeze([layout], f"{_where(node)} (group={group}) prunes whole groups of "
                                  f"{k_in} channels, which the channels it reads cannot keep")
            return
        out = Layout(1, layout.rank, tuple(segments))
        self.edits += [SliceInput(node, out, "through", 1, 0),
                       SetGroup(node, layout, "through", k_in)]
        if self._bias_axis(node) is not None:
            self.edits.append(SliceInput(node, out, "through", 2, 0))
        self.outputs.append((node, out))
        self.pass_through(node, out)

    def _conv_transpose(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        weight = _float_constant(node.inputs[1])
        if weight is None or int(node.attrs.get("group", 1)) != 1:
            return self._weightless(node, 1, "grouped, or the weight is not a float "
                                             "initializer")
        if layout is not None and layout.axis == 1:
            self.edits.append(SliceInput(node, layout, "consumer", 1, 0))
        else:
            self.freeze([layout], f"{_where(node)} reads channels off axis 1")
        return self.root(node, weight.shape[1], 1, 1, self._bias_axis(node))

    def _gemm(self, node: gs.Node) -> None:
        layout, weight = self.layout(node.inputs[0]), _float_constant(node.inputs[1])
        trans_b = int(node.attrs.get("transB", 0))
        if weight is None or weight.ndim != 2 or int(node.attrs.get("transA", 0)):
            return self._weightless(node, 1, "transA, or B is not a 2-D float initializer")
        if layout is not None:
            self.edits.append(SliceInput(node, layout, "consumer", 1, 1 if trans_b else 0))
        channels, weight_axis = weight.shape[0 if trans_b else 1], 0 if trans_b else 1
        bias = ops.constant_value(node.inputs[2]) if len(node.inputs) > 2 else None
        if bias is None or bias.ndim == 0 or bias.shape[-1] == 1 and bias.size == 1:
            return self.root(node, channels, 1, weight_axis, None)
        if bias.shape[-1] == channels and bias.size == channels:
            return self.root(node, channels, 1, weight_axis, bias.ndim - 1)
        return self.root(node, channels, 1, weight_axis, None,
                         f"{_where(node)}: the bias C has shape {bias.shape}")

    def _matmul(self, node: gs.Node) -> None:
        layout, weight = self.layout(node.inputs[0]), _float_constant(node.inputs[1])
        if weight is None or weight.ndim != 2:
            return self._weightless(node, -1, "B is not a 2-D float initializer")
        if layout is not None:
            if layout.axis == layout.rank - 1:
                self.edits.append(SliceInput(node, layout, "consumer", 1, 0))
            else:
                self.freeze([layout], f"{_where(node)} reads channels off the last axis")
        return self.root(node, weight.shape[1], -1, 1, None)

    # -- channels pass through -------------------------------------------------------------
    def _batchnorm(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        params = [ops.constant_value(t) for t in node.inputs[1:5]]
        if (layout.axis != 1 or any(p is None or p.shape != (layout.width,) for p in params)
                or any(not t.is_empty() for t in node.outputs[1:])):
            self.freeze([layout], f"{_where(node)}: training mode, non-constant parameters "
                                  "or channels off axis 1")
            return
        self.edits += [SliceInput(node, layout, "through", i, 0) for i in range(1, 5)]
        self.layouts[id(node.outputs[0])] = layout

    def _unary(self, node: gs.Node) -> None:
        self.pass_through(node, self.layout(node.inputs[0]))

    def _pool(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        if layout.axis != 1 or any(not t.is_empty() and consumers(t) or self._is_output(t)
                                   for t in node.outputs[1:]):
            self.freeze([layout], f"{_where(node)}: channels off axis 1, or its indices are read")
            return
        self.layouts[id(node.outputs[0])] = layout

    def _reduce(self, node: gs.Node) -> None:
        """A reduction over axes other than the channel axis keeps the channels; without
        ``keepdims`` the channel axis moves down by the reduced axes before it."""
        layout = self.layout(node.inputs[0])
        if len(node.inputs) > 1 and not node.inputs[1].is_empty():
            axes = ops.constant_value(node.inputs[1])
        else:
            axes = node.attrs.get("axes")
        if axes is None or not len(np.ravel(axes)):
            reason = ("its axes are not constant" if len(node.inputs) > 1
                      and not node.inputs[1].is_empty() else "it reduces every axis")
            self.freeze([layout], f"{_where(node)}: {reason}")
            return
        axes = {int(a) % layout.rank for a in np.ravel(axes)}
        if layout.axis in axes:
            self.freeze([layout], f"{_where(node)} reduces the channel axis")
            return
        if int(node.attrs.get("keepdims", 1)):
            self.pass_through(node, layout)
            return
        axis = layout.axis - sum(1 for a in axes if a < layout.axis)
        self.pass_through(node, Layout(axis, layout.rank - len(axes), layout.segments))

    def _axes(self, node: gs.Node) -> list[int] | None:
        """The ``axes`` of a Squeeze / Unsqueeze (input 1 at opset ≥ 13, else attribute)."""
        if len(node.inputs) > 1 and not node.inputs[1].is_empty():
            value = ops.constant_value(node.inputs[1])
            return None if value is None else [int(a) for a in np.ravel(value)]
        axes = node.attrs.get("axes")
        return None if axes is None else [int(a) for a in axes]

    def _transpose(self, node: gs.Node) -> None:
        """The channel axis goes where the permutation puts it."""
        layout = self.layout(node.inputs[0])
        perm = [int(p) % layout.rank for p in node.attrs.get("perm",
                                                            range(layout.rank - 1, -1, -1))]
        self.pass_through(node, Layout(perm.index(layout.axis), layout.rank, layout.segments))

    def _squeeze(self, node: gs.Node) -> None:
        """Dropping axes of size 1 other than the channel axis shifts it down."""
        layout, shape = self.layout(node.inputs[0]), ops.static_dims(node.inputs[0])
        axes = self._axes(node)
        if axes is None and shape is not None and all(isinstance(d, int) for d in shape):
            axes = [i for i, d in enumerate(shape) if d == 1]
        if axes is None:
            self.freeze([layout], f"{_where(node)}: its axes are not constant")
            return
        axes = {a % layout.rank for a in axes}
        if layout.axis in axes:
            self.freeze([layout], f"{_where(node)} squeezes the channel axis")
            return
        self.pass_through(node, Layout(layout.axis - sum(a < layout.axis for a in axes),
                                       layout.rank - len(axes), layout.segments))

    def _unsqueeze(self, node: gs.Node) -> None:
        """New axes of size 1 before the channel axis shift it up."""
        layout = self.layout(node.inputs[0])
        axes = self._axes(node)
        if axes is None:
            self.freeze([layout], f"{_where(node)}: its axes are not constant")
            return
        rank = layout.rank + len(axes)
        inserted = {a % rank for a in axes}
        kept = [i for i in range(rank) if i not in inserted]  # old axis j lands at kept[j]
        self.pass_through(node, Layout(kept[layout.axis], rank, layout.segments))

    def _lstm(self, node: gs.Node) -> None:
        """LSTM input ``X [seq, batch, input]``: its channels are the last axis of ``W
        [dirs, 4·hidden, input]`` (a consumer edit). The hidden channels stay whole: they are
        packed four gates deep in ``W``, ``R`` and ``B`` and recur through ``R``."""
        layout = self.layout(node.inputs[0])
        weight = _float_constant(node.inputs[1])
        carried = [self.layout(t) for t in node.inputs[1:]]
        if any(carried):
            self.freeze(carried, f"{_where(node)} reads channels as a weight or state")
        if layout is None:
            return
        if weight is None or layout.axis != layout.rank - 1 or layout.rank != 3:
            self.freeze([layout], f"{_where(node)}: the input's channels are not its last "
                                  "axis, or W is not a float initializer")
            return
        self.edits.append(SliceInput(node, layout, "consumer", 1, 2))

    def _elementwise(self, node: gs.Node) -> None:
        out_shape = ops.static_dims(node.outputs[0])
        carried = [lay for lay in (self.layout(t) for t in node.inputs) if lay is not None]
        layout = self.unify(node, carried)
        if layout is None:
            return
        rank = len(out_shape) if out_shape is not None else layout.rank
        layout = Layout(rank - (layout.rank - layout.axis), rank, layout.segments)
        for index, tensor in enumerate(node.inputs):
            if tensor.is_empty() or self.layout(tensor) is not None:
                continue
            shape = ops.static_dims(tensor)
            along = None if shape is None else len(shape) - (rank - layout.axis)
            size = 1 if along is not None and along < 0 else (
                shape[along] if along is not None else None)
            if size == 1:
                continue  # broadcast along the channel axis: the same for every channel
            if size == layout.width and ops.constant_value(tensor) is not None:
                self.edits.append(SliceInput(node, layout, "through", index, along))
                continue
            what = (f"graph input '{tensor.name}'" if self._is_input(tensor)
                    else f"'{tensor.name}'")
            self.freeze([layout], f"{_where(node)} combines the channels with {what}, whose "
                                  "width cannot change")
            return
        self.pass_through(node, layout)

    def _concat(self, node: gs.Node) -> None:
        carried = [self.layout(t) for t in node.inputs]
        some = next(lay for lay in carried if lay is not None)
        axis = int(node.attrs.get("axis", 0)) % some.rank
        if any(lay is not None and (lay.axis, lay.rank) != (some.axis, some.rank)
               for lay in carried):
            self.freeze(carried, f"{_where(node)} joins tensors with channels on different axes")
            return
        if axis != some.axis:
            # Concat along another axis: every input must keep the same channels.
            if all(lay is not None for lay in carried):
                self.pass_through(node, self.unify(node, carried))
            else:
                self.freeze(carried, f"{_where(node)} joins channels with a fixed-width tensor")
            return
        segments: list[Segment] = []
        for index, (tensor, lay) in enumerate(zip(node.inputs, carried, strict=True)):
            if lay is not None:
                segments += lay.segments
                continue
            shape = ops.static_dims(tensor)
            if shape is None or not isinstance(shape[axis], int):
                self.freeze(carried, f"{_where(node)}: width of input '{tensor.name}' unknown")
                return
            # A fixed-width input keeps all its channels: a frozen space of its own.
            segments += self.open((id(node), index), shape[axis], None,
                                  f"input '{tensor.name}' of {_where(node)}",
                                  f"{_where(node)}: input '{tensor.name}' has a fixed width")[0]
        self.layouts[id(node.outputs[0])] = Layout(some.axis, some.rank, tuple(segments))

    def span(self, node: gs.Node, layout: Layout, start: int, stop: int) -> Layout | None:
        """The part of `layout` at positions ``[start, stop)``: its segments there, offsets
        shifted by ``−start`` (the reverse offset mapping).

        Both bounds must fall between segments. A bound inside a segment ``(s, C, r)`` at
        ``o + c·r`` asks for a cut of ``s`` at channel ``c`` (next sweep); one inside a
        channel's ``r`` positions (``r > 1``: after Flatten, or a block) cannot be mapped.
        Either way `layout` is frozen for this sweep and None returned.
        """
        segments, offset, ready = [], 0, True
        for seg in layout.segments:
            end = offset + seg.width
            for bound in (start, stop):
                if not offset < bound < end:
                    continue
                channel, within = divmod(bound - offset, seg.stride)
                if within:
                    self.freeze([layout], f"{_where(node)} cuts through a channel's "
                                          f"{seg.stride} positions (at {within})")
                else:
                    self.request(seg.space, "cut", channel, node)
                    self.freeze([layout], f"{_where(node)} cuts a channel group at its "
                                          f"channel {channel}, which cannot be divided there")
                ready = False
            if start <= offset and end <= stop:
                segments.append(seg)
            offset = end
        return Layout(layout.axis, layout.rank, tuple(segments)) if ready else None

    def _split(self, node: gs.Node) -> None:
        """Split on the channel axis: output ``i`` is positions ``[b_i, b_{i+1})`` of the input,
        ``b`` the running sums of the sizes (``split`` input at opset ≥ 13, attribute below,
        equal chunks of ``⌈C/n⌉`` with ``num_outputs`` or n equal parts without either)."""
        layout = self.layout(node.inputs[0])
        if int(node.attrs.get("axis", 0)) % layout.rank != layout.axis:
            self.pass_through(node, layout)
            return
        sizes = self._split_sizes(node, layout.width)
        if sizes is None:
            self.freeze([layout], f"{_where(node)}: the split sizes are not constant, or do "
                                  "not add up to the channels")
            return
        bounds = (0, *itertools.accumulate(sizes))
        parts = [self.span(node, layout, a, b) for a, b in itertools.pairwise(bounds)]
        if any(part is None for part in parts):
            return
        for out, part in zip(node.outputs, parts, strict=True):
            if not out.is_empty():
                self.layouts[id(out)] = part
        self.edits.append(SetSplit(node, layout, "through", bounds))

    def _split_sizes(self, node: gs.Node, width: int) -> list[int] | None:
        """The channels of each output, or None if not constant or not a partition."""
        n = len(node.outputs)
        if len(node.inputs) > 1 and not node.inputs[1].is_empty():
            value = ops.constant_value(node.inputs[1])
            sizes = None if value is None else [int(v) for v in np.ravel(value)]
        elif "split" in node.attrs:
            sizes = [int(v) for v in node.attrs["split"]]
        elif "num_outputs" in node.attrs:
            chunk = -(-width // int(node.attrs["num_outputs"]))
            sizes = [chunk] * (n - 1) + [width - chunk * (n - 1)]
        else:
            sizes = [width // n] * n
        if sizes is None or len(sizes) != n or min(sizes) <= 0 or sum(sizes) != width:
            return None
        return sizes

    def _slice(self, node: gs.Node) -> None:
        """Slice taking positions ``[start, stop)`` of the channel axis (step 1, constant
        bounds, normalized against the width: ``+C`` if negative, then clamped to
        ``[0, C]``) maps like one Split output; along other axes the channels pass through."""
        layout = self.layout(node.inputs[0])
        if "starts" in node.attrs:  # opset < 10
            starts, ends = node.attrs["starts"], node.attrs["ends"]
            axes = node.attrs.get("axes", range(len(starts)))
            steps = [1] * len(starts)
        else:
            inputs = list(node.inputs) + [gs.Variable.empty()] * (5 - len(node.inputs))
            starts, ends = ops.constant_value(inputs[1]), ops.constant_value(inputs[2])
            axes = (ops.constant_value(inputs[3]) if not inputs[3].is_empty()
                    else None if starts is None else range(len(starts)))
            steps = (ops.constant_value(inputs[4]) if not inputs[4].is_empty()
                     else None if starts is None else [1] * len(starts))
        if axes is None:
            self.freeze([layout], f"{_where(node)}: its axes or bounds are not constant")
            return
        axes = [int(a) % layout.rank for a in np.ravel(axes)]
        if layout.axis not in axes:
            self.pass_through(node, layout)
            return
        entry = axes.index(layout.axis)
        if starts is None or ends is None or steps is None:
            self.freeze([layout], f"{_where(node)}: its bounds on the channel axis are not "
                                  "constant")
            return
        if int(np.ravel(steps)[entry]) != 1:
            self.freeze([layout], f"{_where(node)} slices the channel axis with step "
                                  f"{int(np.ravel(steps)[entry])}")
            return
        width = layout.width
        start, stop = (int(np.ravel(v)[entry]) for v in (starts, ends))
        start, stop = (min(max(b + width if b < 0 else b, 0), width) for b in (start, stop))
        if stop <= start:
            self.freeze([layout], f"{_where(node)} takes no channel")
            return
        part = self.span(node, layout, start, stop)
        if part is not None:
            self.layouts[id(node.outputs[0])] = part
            self.edits.append(SetSliceBounds(node, layout, "through", entry, start, stop))

    def _flatten(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        shape = ops.static_dims(node.inputs[0])
        axis = int(node.attrs.get("axis", 1)) % max(layout.rank, 1)
        inner = _static(shape[layout.axis + 1:]) if shape is not None else None
        if axis != layout.axis or inner is None:
            self.freeze([layout], f"{_where(node)} does not flatten from the channel axis, or "
                                  "the dimensions after it are unknown")
            return
        self.layouts[id(node.outputs[0])] = layout.restrided(inner, 1, 2)

    def _reshape(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        target = ops.constant_value(node.inputs[1])
        before, after = ops.static_dims(node.inputs[0]), ops.static_dims(node.outputs[0])
        a = layout.axis
        if target is None or before is None or after is None or len(after) <= a:
            self.freeze([layout], f"{_where(node)}: the shape is not a constant or is unknown")
            return
        inner_in, inner_out = _static(before[a + 1:]), _static(after[a + 1:])
        # Channel c must become a contiguous block of s = inner_in / inner_out positions of
        # axis a: the dimensions before a stay, the ones after it merge or regroup s-fold.
        # With a <= 1 equal trailing products imply an equal (single) leading dimension.
        prefix_kept = list(before[:a]) == list(after[:a]) or (
            a <= 1 and _static(before[a:]) is not None
            and _static(before[a:]) == _static(after[a:]))
        if (not prefix_kept or inner_in is None or not inner_out or inner_in % inner_out
                or after[a] != layout.width * (inner_in // inner_out)):
            self.freeze([layout], f"{_where(node)} splits or moves the channel axis")
            return
        new = layout.restrided(inner_in // inner_out, a, len(after))
        if target[a] > 0:
            self.edits.append(SetEntry(node, new, "through", 1, a))
        self.layouts[id(node.outputs[0])] = new

    def _resize(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        inputs = list(node.inputs) + [gs.Variable.empty()] * (4 - len(node.inputs))
        scales, sizes = inputs[2], inputs[3]
        axes = node.attrs.get("axes")
        if axes is not None:
            if layout.axis not in [int(x) % layout.rank for x in axes]:
                return self.pass_through(node, layout)
            position = [int(x) % layout.rank for x in axes].index(layout.axis)
        else:
            position = layout.axis
        if not sizes.is_empty():
            value = ops.constant_value(sizes)
            if value is not None and value[position] == layout.width:
                self.edits.append(SetEntry(node, layout, "through", 3, position))
                return self.pass_through(node, layout)
        elif not scales.is_empty():
            value = ops.constant_value(scales)
            if value is not None and value[position] == 1:
                return self.pass_through(node, layout)
        self.freeze([layout], f"{_where(node)} resizes the channel axis, or its scales/sizes "
                              "are not constant")
        return None

    def _pad(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        pads = (np.asarray(node.attrs["pads"]) if "pads" in node.attrs
                else ops.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None)
        given = ops.optional_input(node, 3)
        axes = ops.constant_value(given) if given is not None else np.arange(layout.rank)
        if pads is None or axes is None:
            self.freeze([layout], f"{_where(node)}: pads are not constant")
            return
        axes = [int(x) % layout.rank for x in axes]
        if layout.axis in axes:
            i = axes.index(layout.axis)
            if pads[i] or pads[i + len(axes)]:
                self.freeze([layout], f"{_where(node)} pads the channel axis")
                return
        self.pass_through(node, layout)

    # -- interface -------------------------------------------------------------------------
    def _is_input(self, tensor: gs.Tensor) -> bool:
        return any(t is tensor for t in self.model.graph.inputs)

    def _is_output(self, tensor: gs.Tensor) -> bool:
        return any(t is tensor for t in self.model.graph.outputs)
