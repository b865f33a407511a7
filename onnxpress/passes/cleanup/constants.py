"""Constant folding: compute at compile time what does not depend on the model's inputs.

Three rewrites, in this order:

1. ``Constant`` nodes become initializers. Paddle and TensorFlow exporters store every weight
   in a Constant node; quantizers and fusions that look only at initializers would otherwise
   skip those weights.
2. ``Shape`` / ``Size`` of a tensor whose shape is fully static (by ONNX shape inference)
   become int64 initializers, so shape arithmetic built on them folds too.
3. Every node whose inputs are all constant is evaluated — all at once, by one onnxruntime run
   of the sub-model made of those nodes — and the *frontier* (constant tensors read by a node
   that is not folded) is replaced by initializers. The nodes behind the frontier then have no
   readers and go to dead code.

Bounded: before anything is evaluated, the size of every tensor a folded node would produce
— interior ones included — is read from ONNX shape inference (which knows the shapes of
Expand, Tile, ConstantOfShape, Range… on constant inputs). A node whose output would exceed
`EVAL_LIMIT` bytes, or whose output size inference cannot tell, is not evaluated (stats
``too_large`` / ``unknown_size``), so a 193-byte model expanding to 5e9 elements costs
nothing instead of exhausting memory.

Never folded: QuantizeLinear / DequantizeLinear (folding DQ(int8 weight) would undo
quantization and quadruple the file), random ops, nodes with subgraphs, custom-domain ops, and
nodes producing graph outputs. A frontier tensor bigger than ``size_limit`` bytes that is also
bigger than the initializers it is computed from stays computed at run time (folding
ConstantOfShape / Expand / Tile must not inflate the file).

Exact: folded values are what onnxruntime computes at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxpress.ir import analyses, fidelity
from onnxpress.ir.edit import consumers, dead_code, is_graph_output, producer, remove, replace_uses
from onnxpress.ir.model import Model
from onnxpress.ir.ops import constant_node_value
from onnxpress.ir.scopes import iter_graphs, subgraphs
from onnxpress.passes.base import Context, Pass, PassResult

NEVER_FOLD = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "Shape", "Size",
    # Constant nodes left after step 1 hold forms we do not convert (strings, sparse).
    "Constant",
})


#: No folded node may produce more than this many bytes (its outputs' sizes are known from
#: shape inference before anything is evaluated).
EVAL_LIMIT = 1 << 26


@dataclass(frozen=True)
class FoldConstants(Pass):
    """Turn Constant nodes into initializers and evaluate input-independent subgraphs."""

    name: ClassVar[str] = "fold-constants"
    size_limit: int = 1 << 20

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Fold constants in place."""
        constant_nodes = sum(_constant_nodes_to_initializers(model, g)
                             for g in list(iter_graphs(model.graph)))
        shapes = _fold_shapes(model)
        folded, kept, unevaluated = _fold_subexpressions(model, self.size_limit)
        removed = dead_code(model.graph) if (constant_nodes or shapes or folded) else 0
        changed = bool(constant_nodes or shapes or folded)
        return PassResult(changed, {"constant_nodes": constant_nodes, "shapes": shapes,
                                    "folded_tensors": folded, "kept_large": kept,
                                    **unevaluated, "nodes_removed": removed})


def _constant_nodes_to_initializers(model: Model, graph: gs.Graph) -> int:
    """Replace Constant nodes of `graph` by initializers; return how many."""
    done = []
    for node in graph.nodes:
        if node.op != "Constant" or node.domain not in (None, "", "ai.onnx"):
            continue
        out = node.outputs[0]
        value = constant_node_value(node)
        if value is None or is_graph_output(graph, out):
            continue
        _replace_by_constant(model, graph, out, value)
        done.append(node)
    remove(graph, done)
    return len(done)


def _replace_by_constant(model: Model, graph: gs.Graph, tensor: gs.Tensor,
                         value: np.ndarray) -> None:
    """Readers of `tensor` read an initializer holding `value` instead; the initializer takes
    the tensor's name (names key calibration tables and users' exclusion lists)."""
    name = tensor.name
    tensor.name = model.fresh_name(name + "_unfolded")
    replace_uses(graph, tensor, gs.Constant(name, np.array(value, copy=True)))


def _fold_shapes(model: Model) -> int:
    """Replace shape queries that shape inference answers by initializers; return how many.

    ``Shape`` / ``Size`` of a fully static tensor, and ``Gather(Shape(x), i)`` with constant
    indices that pick only static axes of an otherwise dynamic shape (the batch-size
    arithmetic exporters emit).
    """
    model.analysis(analyses.shapes)
    done = []
    for node in model.graph.nodes:
        value = _shape_query(node)
        if value is None or is_graph_output(model.graph, node.outputs[0]):
            continue
        _replace_by_constant(model, model.graph, node.outputs[0], value)
        done.append(node)
    if done:
        model.invalidate()
    return len(done)


def _shape_query(node: gs.Node) -> np.ndarray | None:
    """The value of a Shape / Size / Gather-of-Shape node if the static shape determines it."""
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0:
        source, indices = producer(node.inputs[0]), node.inputs[1]
        if source is None or source.op != "Shape" or not isinstance(indices, gs.Constant):
            return None
        dims = _dims(source)
        picked = np.asarray(indices.values)
        if dims is None or not picked.size:
            return None
        values = [dims[int(i)] for i in picked.reshape(-1)]
        if not all(_known(d) for d in values):
            return None
        return np.array(values, dtype=np.int64).reshape(picked.shape)
    if node.op in ("Shape", "Size"):
        dims = _dims(node) if node.op == "Shape" else node.inputs[0].shape
        if dims is None or not all(_known(d) for d in dims):
            return None
        return (np.array(dims, dtype=np.int64) if node.op == "Shape"
                else np.array(int(np.prod(dims)), dtype=np.int64))
    return None


def _dims(shape_node: gs.Node) -> list | None:
    """The dims a Shape node returns (its start/end attributes applied), static or not."""
    shape = shape_node.inputs[0].shape
    if shape is None:
        return None
    start, end = shape_node.attrs.get("start", 0), shape_node.attrs.get("end", len(shape))
    return list(shape)[slice(start, end)]


def _known(d) -> bool:
    return isinstance(d, int) and d >= 0


def _foldable(node: gs.Node, graph: gs.Graph, constant: set[int]) -> bool:
    return (node.op not in NEVER_FOLD and node.domain in (None, "", "ai.onnx")
            and not subgraphs(node)
            and all(t.is_empty() or id(t) in constant for t in node.inputs)
            and not any(is_graph_output(graph, t) for t in node.outputs))


def _output_bytes(node: gs.Node) -> int | None:
    """Bytes of everything `node` outputs, from the annotated shapes; None if unknown."""
    total = 0
    for out in node.outputs:
        if out.is_empty():
            continue
        shape, dtype = out.shape, out.dtype
        if shape is None or dtype is None or not all(_known(d) for d in shape):
            return None
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            itemsize = 8  # a type numpy lacks: assume the widest
        total += int(np.prod(shape, dtype=object)) * itemsize
    return total


def _fold_subexpressions(model: Model, size_limit: int) -> tuple[int, int, dict[str, int]]:
    """Evaluate all-constant nodes of the main graph.

    Returns:
        (frontier tensors folded, kept because large, ``{"too_large": n, "unknown_size": n}``
        for the nodes not evaluated because an output exceeds `EVAL_LIMIT` bytes or has an
        unknown size; a key appears only when its count is not zero).
    """
    graph = model.graph
    model.analysis(analyses.shapes)
    unevaluated: dict[str, int] = {}
    user_inputs = {id(t) for t in graph.inputs}
    constant: set[int] = set()
    sources: dict[int, int] = {}  # tensor → bytes of the initializers it is computed from
    folded_nodes: list[gs.Node] = []
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and id(t) not in user_inputs:
                constant.add(id(t))
                sources.setdefault(id(t), fidelity.nbytes(t))
        if _foldable(node, graph, constant):
            size = _output_bytes(node)
            if size is None or size > EVAL_LIMIT:
                key = "unknown_size" if size is None else "too_large"
                unevaluated[key] = unevaluated.get(key, 0) + 1
                continue
            weight = sum(sources.get(id(t), 0) for t in node.inputs)
            for out in node.outputs:
                constant.add(id(out))
                sources[id(out)] = weight
            folded_nodes.append(node)
    inside = {id(n) for n in folded_nodes}
    frontier = [out for n in folded_nodes for out in n.outputs
                if not out.is_empty() and any(id(c) not in inside for c in consumers(out))]
    if not frontier:
        return 0, 0, unevaluated
    values = _evaluate(model, folded_nodes, frontier)
    folded = kept = 0
    for tensor, value in zip(frontier, values, strict=True):
        if value.nbytes > size_limit and value.nbytes > sources[id(tensor)]:
            kept += 1
            continue
        _replace_by_constant(model, graph, tensor, value)
        folded += 1
    return folded, kept, unevaluated


def _evaluate(model: Model, nodes: list[gs.Node], outputs: list[gs.Tensor]) -> list[np.ndarray]:
    """Run `nodes` (which read only constants) in onnxruntime and return `outputs`' values."""
    from onnxpress.runtime.session import session

    proto_nodes = [gs.exporters.onnx_exporter.OnnxExporter.export_node(n) for n in nodes]
    initializers, seen = [], set()
    for node in nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and t.name not in seen:
                seen.add(t.name)
                initializers.append(onnx.numpy_helper.from_array(np.asarray(t.values), t.name))
    graph = onnx.helper.make_graph(
        proto_nodes, "fold", [], [onnx.helper.make_empty_tensor_value_info(t.name)
                                  for t in outputs], initializers)
    proto = onnx.helper.make_model(graph, ir_version=model.ir_version, opset_imports=[
        onnx.helper.make_opsetid(d, v) for d, v in model.opsets.items()])
    return session(proto.SerializeToString(), "cpu", optimize=False).run(
        [t.name for t in outputs], {})
