"""Channel coupling: which channels of which layers must be removed together.

Removing output channel ``k`` of a Conv, Gemm or MatMul deletes one slice of every tensor
that carries that channel downstream. Every op that reads such a tensor must then lose the
matching slice of its own parameters, and every tensor added to it (a residual branch) must
lose the same slice too. This module finds those sets, the *groups* of DepGraph (Fang et al.,
CVPR 2023), on an ONNX graph. It changes nothing.

Channel spaces and layouts
--------------------------
Each Conv / ConvTranspose / Gemm / MatMul output opens a *channel space* of ``C`` channels.
The channel axis of every tensor downstream carries a *layout*: segments
``(space s_j, length C_j, stride r_j)`` laid end to end. Channel ``k`` of segment ``j`` holds
the positions

    o_j + k·r_j + t,   t = 0 … r_j − 1,   where o_j = Σ_{i<j} C_i·r_i

of that axis. Ops map the layouts of their inputs to the layouts of their outputs:

- identity, ``L_out = L_in``: BatchNormalization, unary elementwise ops (Relu, Clip,
  Sigmoid, …), MaxPool / AveragePool / GlobalAveragePool, Resize and Pad that leave the
  channel axis alone, and depthwise Conv (``group = C``, one filter per channel);
- Concat on the channel axis, ``L_out = L_1 ‖ L_2 ‖ …``: the offsets ``o_j`` shift by the
  widths before them (the offset mapping);
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
  the depthwise weight and bias together with ``group = |P|``, and the channel entry of
  Reshape shape and Resize sizes constants.

A group is *frozen* (never pruned) when any of its spaces reaches an op the analysis cannot
map, a graph output (the model's interface never changes shape), a graph input or another
fixed-width tensor, a grouped Conv (channels tied in blocks) or a layout mismatch. The
reason names the op and the node.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir import analyses
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
    """A depthwise Conv keeps one group per surviving channel."""

    def apply(self, model: Model, positions: np.ndarray) -> None:
        """Set ``group`` to the surviving channel count."""
        self.node.attrs["group"] = int(positions.size)


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
        channels: Channel count ``C`` shared by every space of the group.
        spaces: Ids of the unified channel spaces.
        producers: Layers whose output channels are the group (weights sliced on the output
            axis).
        consumers: ``(layer, [(offset, stride), …])``: layers whose input channels the group
            feeds, with the index map of each occurrence along their input axis (channel
            ``k`` is positions ``[offset + k·stride, offset + (k+1)·stride)``).
        through: Nodes the channels pass through that pruning rewrites (BN, depthwise Conv,
            per-channel constants, Reshape/Resize constants).
        frozen: Why the group must not be pruned, or None if it may.
    """

    channels: int
    spaces: tuple[int, ...]
    producers: list[gs.Node] = field(default_factory=list)
    consumers: list[tuple[gs.Node, list[tuple[int, int]]]] = field(default_factory=list)
    through: list[gs.Node] = field(default_factory=list)
    frozen: str | None = None

    @property
    def label(self) -> str:
        """The group's name in reports: its producers' node names."""
        return "+".join(node_label(p) for p in self.producers)

    def describe(self) -> str:
        """One line: width, producers, consumers with their index maps, status."""
        def maps(m: list[tuple[int, int]]) -> str:
            return ",".join(f"@{o}" + (f"×{s}" if s > 1 else "") for o, s in m)
        users = ", ".join(f"{node_label(n)} [{maps(m)}]" for n, m in self.consumers) or "none"
        via = ", ".join(dict.fromkeys(f"{n.op} {node_label(n)}" for n in self.through))
        status = f"frozen: {self.frozen}" if self.frozen else "prunable"
        return (f"{self.channels} ch — out of {self.label}; into {users}"
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


def analyze(model: Model) -> Coupling:
    """Propagate channel layouts through `model` and group the coupled channel spaces."""
    model.analysis(analyses.shapes)
    return _Propagation(model).run()


# --------------------------------------------------------------------------------------------
# Propagation
def _shape(tensor: gs.Tensor) -> tuple | None:
    if isinstance(tensor, gs.Constant):
        return tuple(tensor.values.shape)
    return tuple(tensor.shape) if tensor.shape is not None else None


def _constant(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer input, or None."""
    return tensor.values if isinstance(tensor, gs.Constant) else None


def _float_constant(tensor: gs.Tensor) -> np.ndarray | None:
    value = _constant(tensor)
    return value if value is not None and np.issubdtype(value.dtype, np.floating) else None


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

    def __init__(self, model: Model) -> None:
        self.model = model
        self.layouts: dict[int, Layout] = {}
        self.spaces = nx.Graph()
        self.edits: list[Edit] = []
        self.outputs: list[tuple[gs.Node, Layout]] = []
        self.handlers = {
            "Conv": self._conv, "ConvTranspose": self._conv_transpose, "Gemm": self._gemm,
            "MatMul": self._matmul, "BatchNormalization": self._batchnorm,
            "Concat": self._concat, "Flatten": self._flatten, "Reshape": self._reshape,
            "Resize": self._resize, "Pad": self._pad,
            **dict.fromkeys(UNARY, self._unary), **dict.fromkeys(ELEMENTWISE, self._elementwise),
            **dict.fromkeys(POOLS, self._pool),
        }

    # -- bookkeeping -----------------------------------------------------------------------
    def layout(self, tensor: gs.Tensor) -> Layout | None:
        return self.layouts.get(id(tensor))

    def freeze(self, layouts: Iterable[Layout | None], reason: str) -> None:
        for layout in layouts:
            for space in layout.spaces if layout is not None else ():
                self.spaces.nodes[space]["reasons"].append(reason)

    def new_space(self, length: int, producer: gs.Node | None = None,
                  reason: str | None = None) -> int:
        space = self.spaces.number_of_nodes()
        self.spaces.add_node(space, length=length, producer=producer,
                             reasons=[reason] if reason else [])
        return space

    def root(self, node: gs.Node, channels: int | None, axis: int, weight_axis: int,
             bias_axis: int | None, reason: str | None = None) -> None:
        """`node`'s output opens a new space; its weight (input 1, sliced on `weight_axis`)
        and bias (input 2, on `bias_axis`) are the producer edits.

        Without a known width and rank the output stays untracked, which freezes whatever
        it meets (an untracked tensor cannot be sliced).
        """
        out = node.outputs[0]
        shape = _shape(out)
        if shape is None:
            return
        axis %= len(shape)
        if channels is None:
            channels = shape[axis]
        if not isinstance(channels, int):
            return
        layout = Layout(axis, len(shape), (Segment(self.new_space(channels, node, reason),
                                                   channels),))
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
    def run(self) -> Coupling:
        view = analyses.nx_view(self.model)
        for index in nx.lexicographical_topological_sort(view):
            node = view.nodes[index]["node"]
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
            producers = [d["producer"] for d in data if d["producer"] is not None]
            if not producers:
                continue  # a fixed-width Concat input alone: nothing could prune it
            reasons = list(dict.fromkeys(r for d in data for r in d["reasons"]))
            group = ChannelGroup(channels=data[0]["length"], spaces=spaces,
                                 producers=producers, frozen="; ".join(reasons) or None)
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
        return 0 if len(node.inputs) > 2 and _constant(node.inputs[2]) is not None else None

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
        if weight.shape[1] == 1 and weight.shape[0] == group:
            # Depthwise: output channel c reads input channel c only, so channels pass through.
            if layout is not None:
                self.edits += [SliceInput(node, layout, "through", 1, 0),
                               SetGroup(node, layout, "through")]
                if self._bias_axis(node) is not None:
                    self.edits.append(SliceInput(node, layout, "through", 2, 0))
                self.outputs.append((node, layout))
                self.pass_through(node, layout)
            return None
        reason = f"{_where(node)} (group={group}) ties channels in blocks"
        self.freeze([layout], reason)
        return self.root(node, weight.shape[0], 1, 0, self._bias_axis(node), reason)

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
        bias = _constant(node.inputs[2]) if len(node.inputs) > 2 else None
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
        params = [_constant(t) for t in node.inputs[1:5]]
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

    def _elementwise(self, node: gs.Node) -> None:
        out_shape = _shape(node.outputs[0])
        carried = [lay for lay in (self.layout(t) for t in node.inputs) if lay is not None]
        layout = self.unify(node, carried)
        if layout is None:
            return
        rank = len(out_shape) if out_shape is not None else layout.rank
        layout = Layout(rank - (layout.rank - layout.axis), rank, layout.segments)
        for index, tensor in enumerate(node.inputs):
            if tensor.is_empty() or self.layout(tensor) is not None:
                continue
            shape = _shape(tensor)
            along = None if shape is None else len(shape) - (rank - layout.axis)
            size = 1 if along is not None and along < 0 else (
                shape[along] if along is not None else None)
            if size == 1:
                continue  # broadcast along the channel axis: the same for every channel
            if size == layout.width and _constant(tensor) is not None:
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
        for tensor, lay in zip(node.inputs, carried, strict=True):
            if lay is not None:
                segments += lay.segments
                continue
            shape = _shape(tensor)
            if shape is None or not isinstance(shape[axis], int):
                self.freeze(carried, f"{_where(node)}: width of input '{tensor.name}' unknown")
                return
            # A fixed-width input keeps all its channels: a frozen space of its own.
            segments.append(Segment(self.new_space(
                shape[axis], reason=f"{_where(node)}: input '{tensor.name}' has a fixed width"),
                shape[axis]))
        self.layouts[id(node.outputs[0])] = Layout(some.axis, some.rank, tuple(segments))

    def _flatten(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        shape = _shape(node.inputs[0])
        axis = int(node.attrs.get("axis", 1)) % max(layout.rank, 1)
        inner = _static(shape[layout.axis + 1:]) if shape is not None else None
        if axis != layout.axis or inner is None:
            self.freeze([layout], f"{_where(node)} does not flatten from the channel axis, or "
                                  "the dimensions after it are unknown")
            return
        self.layouts[id(node.outputs[0])] = layout.restrided(inner, 1, 2)

    def _reshape(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        target = _constant(node.inputs[1])
        before, after = _shape(node.inputs[0]), _shape(node.outputs[0])
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
            value = _constant(sizes)
            if value is not None and value[position] == layout.width:
                self.edits.append(SetEntry(node, layout, "through", 3, position))
                return self.pass_through(node, layout)
        elif not scales.is_empty():
            value = _constant(scales)
            if value is not None and value[position] == 1:
                return self.pass_through(node, layout)
        self.freeze([layout], f"{_where(node)} resizes the channel axis, or its scales/sizes "
                              "are not constant")
        return None

    def _pad(self, node: gs.Node) -> None:
        layout = self.layout(node.inputs[0])
        pads = (np.asarray(node.attrs["pads"]) if "pads" in node.attrs
                else _constant(node.inputs[1]) if len(node.inputs) > 1 else None)
        axes = (_constant(node.inputs[3]) if len(node.inputs) > 3 and not node.inputs[3].is_empty()
                else np.arange(layout.rank))
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
