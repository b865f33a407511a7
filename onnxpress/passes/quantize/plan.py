"""The quantization plan: which nodes become int8 units and which tensors get Q/DQ.

One function, `plan`, decides placement; `calibrate` measures the ranges of exactly the
tensors a plan names (`QuantPlan.tensors`) and `quantize-static` inserts the Q/DQ of the same
plan, so the two can never disagree about what is quantized. A plan needs no ranges: it is the
structure (units, activations, who reads the dequantized copy, which tensors share their
input's parameters); parameters are computed from the `CalibrationTable` when it is applied.

Placement, per node, from the target's op table (`onnxpress.targets.QRule`):

1. *Anchors* are the weighted ops (Conv, Gemm, MatMul with a constant float weight). Inside
   an attention / LayerNorm block (`targets.attention_blocks`) the rule's ``in_attention``
   says how they run: ``weights-only`` quantizes the activation input and the weight but not
   the output (onnxruntime's MatMulIntegerToFloat / QGemm), so the residual stream, masks and
   softmax logits stay float.
2. *Island ops* (Add, Mul, Concat, pools, Sigmoid, data movement) are quantized, on a target
   with ``int8_islands`` (cpu), only where int8 already flows: every activation input must
   carry a Q already — the output or an input of a unit planned before it (graph order is
   topological). onnxruntime fuses
   ``DQ → op → Q`` only when all inputs come from a DQ, so an Add fed by a float tensor would
   add a Q/DQ pair and run in float anyway — the Add×79 / Mul×53 left unfused on a Paddle
   detector. A float constant input (a bias Add, a scale Mul) keeps the op float for the same
   reason. Inside attention blocks they stay float (``in_attention="float"``).
3. The target may decline a node it gains nothing from (`QRule.skip`); the user's
   ``op_types`` / ``exclude`` narrow the choice; int64 shape arithmetic is never touched.

Activations: each activation input of a unit is wrapped once. A unit output read only by a
Relu is quantized after the Relu (onnxruntime drops it when the range clips at 0, which holds
for asymmetric ranges only). `Planned.readers` None means every reader reads the dequantized
copy (a unit output: onnxruntime fuses the unit only if every output edge goes to the Q);
otherwise only the listed quantized readers switch and float readers keep the exact tensor.
Data-movement outputs share their input's parameters (``share``), as they must to fuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.ir import analyses
from onnxpress.ir.edit import consumers, is_graph_output
from onnxpress.ir.model import Model
from onnxpress.ir.ops import is_float, optional_input
from onnxpress.ir.select import matches
from onnxpress.targets import QRule, Target, attention_blocks

#: Activations whose Q onnxruntime folds into the producing unit's output range.
ACTIVATION_FOLDS = frozenset({"Relu"})


@dataclass
class Unit:
    """One node to quantize.

    Attributes:
        node: The node.
        rule: Its target rule.
        weights_only: Inside an attention block: no output Q.
    """

    node: gs.Node
    rule: QRule
    weights_only: bool = False


@dataclass
class Planned:
    """One activation to wrap in Q/DQ.

    Attributes:
        tensor: The activation.
        readers: The quantized nodes that read the dequantized copy; None: every reader.
        share: The tensor whose parameters this one reuses (data movement), or None when it
            has a calibrated range of its own.
    """

    tensor: gs.Variable
    readers: list[gs.Node] | None = field(default_factory=list)
    share: gs.Variable | None = None


@dataclass
class QuantPlan:
    """Units and activations of a static quantization, in graph order.

    Attributes:
        units: The nodes to quantize.
        activations: The tensors to wrap, keyed by ``id`` of the tensor.
        declined: Node name → why the target or the placement rules kept it float.
    """

    units: list[Unit]
    activations: dict[int, Planned]
    declined: dict[str, str]

    def tensors(self) -> list[str]:
        """Names of the planned activations, in plan order: what calibration measures.

        Data-movement outputs are included although they reuse their input's parameters
        here: a narrower plan of the same model (``exclude``, ``op_types``, a fallback) only
        drops units, so every tensor it wraps is in this list, with a range of its own
        where it no longer shares one.
        """
        return [p.tensor.name for p in self.activations.values()]

    def names(self) -> list[str]:
        """Names of the quantized nodes."""
        return [u.node.name for u in self.units]

    def why_float(self) -> str:
        """``"3 inside an attention / LayerNorm block; 1 excluded"``: the declined table
        nodes counted by reason, most frequent first (for the report)."""
        counts: dict[str, int] = {}
        for reason in self.declined.values():
            counts[reason] = counts.get(reason, 0) + 1
        return "; ".join(f"{n} {reason}" for reason, n in
                         sorted(counts.items(), key=lambda item: -item[1]))


def plan(model: Model, target: Target, *, op_types: Sequence[str] | None = None,
         exclude: Sequence[str] = (), skip_unprofitable: bool = True,
         attention: bool = True) -> QuantPlan:
    """The static quantization plan of `model` for `target` (rules in the module doc).

    Args:
        model: The model; not modified (shape inference annotates element types).
        target: Its op table decides placement.
        op_types: Only these op types (None: the whole table).
        exclude: Node names, op types or glob patterns to keep float.
        skip_unprofitable: Let the target decline nodes it gains nothing from.
        attention: Apply the in-attention rules (False treats every node as outside).
    """
    rules = target.quantization
    model.analysis(analyses.shapes)  # element types: shape arithmetic on int64 stays
    graph = model.graph
    blocks = attention_blocks(graph) if attention else set()
    units: list[Unit] = []
    declined: dict[str, str] = {}
    int8: set[int] = set()  # tensors that will carry a Q: unit outputs planned so far
    for node in graph.nodes:
        rule = rules.get(node.op)
        if rule is None or (op_types is not None and node.op not in op_types):
            continue
        reason = _decline(node, rule, id(node) in blocks, int8 if target.int8_islands else None,
                          exclude, skip_unprofitable)
        if reason:
            declined[node.name] = reason
            continue
        unit = Unit(node, rule, weights_only=(id(node) in blocks
                                              and rule.in_attention == "weights-only"))
        units.append(unit)
        # Its inputs get a Q (a graph input read by a Conv, say): later readers may share it.
        int8.update(id(node.inputs[i]) for i in rule.inputs(node))
        if not unit.weights_only and rule.output != "never":
            int8.add(id(_after_activation(graph, node.outputs[0], target)))
    return QuantPlan(units, _activations(graph, units, target), declined)


def _decline(node: gs.Node, rule: QRule, in_block: bool, int8: set[int] | None,
             exclude: Sequence[str], skip_unprofitable: bool) -> str | None:
    """Why `node` stays float, or None to quantize it (`int8`: the tensors that carry a Q so
    far, on a target whose ops without weights fuse only between int8 units; else None)."""
    if matches(node, exclude):
        return "excluded"
    if in_block and rule.in_attention == "float":
        return "inside an attention / LayerNorm block"
    if rule.weight is not None and not float_constant(node, rule.weight):
        return "no constant float weight"
    inputs = rule.inputs(node)
    if not all(_float(node.inputs[i]) for i in inputs):
        return "non-float input"
    if rule.weight is None and not inputs:
        return "no activation input"
    if rule.weight is None and int8 is not None:
        if any(float_constant(node, i) for i in range(len(node.inputs))):
            return "float constant input (the unit would not fuse)"
        if not all(id(node.inputs[i]) in int8 for i in inputs):
            return "an input does not come from an int8 unit (it would not fuse)"
    if skip_unprofitable and rule.skip is not None:
        return rule.skip(node)
    return None


def _activations(graph: gs.Graph, units: list[Unit], target: Target) -> dict[int, Planned]:
    """Plan the Q/DQ of every unit's inputs and outputs (rules in the module doc)."""
    planned: dict[int, Planned] = {}
    chosen = {id(u.node) for u in units}

    def wrap(tensor: gs.Variable, reader: gs.Node | None, share: gs.Variable | None = None):
        entry = planned.setdefault(id(tensor), Planned(tensor, [], share))
        if reader is None:
            entry.readers = None
        elif entry.readers is not None:
            entry.readers.append(reader)

    for unit in units:
        node, rule = unit.node, unit.rule
        for i in rule.inputs(node):
            wrap(node.inputs[i], node)
        out = node.outputs[0]
        if unit.weights_only or rule.output == "never":
            continue
        if rule.output == "same-as-input":
            wrap(out, None, share=node.inputs[0])
            continue
        target_tensor = _after_activation(graph, out, target)
        if rule.output == "if-read" and not any(id(c) in chosen
                                                for c in consumers(target_tensor)):
            continue
        wrap(target_tensor, None)
    return planned


def _after_activation(graph: gs.Graph, out: gs.Variable, target: Target) -> gs.Variable:
    """The Relu output when `out` is read only by a Relu (the Q goes after it), else out."""
    readers = consumers(out)
    if (not target.symmetric_activations and len(readers) == 1
            and readers[0].op in ACTIVATION_FOLDS and not is_graph_output(graph, out)):
        return readers[0].outputs[0]
    return out


def _float(tensor: gs.Tensor) -> bool:
    """A float activation, or one whose type inference could not tell (after contrib ops)."""
    return tensor.dtype is None or is_float(tensor.dtype)


def float_constant(node: gs.Node, index: int) -> bool:
    """Whether input `index` of `node` is a float32/float64 initializer — the weights the Q/DQ
    primitive stores (its DequantizeLinear scales are float32, so an fp16 graph would get
    float32 where it reads fp16)."""
    t = optional_input(node, index)
    return isinstance(t, gs.Constant) and np.asarray(t.values).dtype in (np.float32, np.float64)
