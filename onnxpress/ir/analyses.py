"""Analyses: plain functions of a `Model`, cached with `model.analysis(fn)`.

A pass that changes the model drops every cached analysis it does not declare in
`preserves`, so a stale shape never outlives the rewrite that invalidated it.
"""

from __future__ import annotations

import networkx as nx
import onnx
import onnx_graphsurgeon as gs

from onnxpress.ir.edit import dependencies, producer
from onnxpress.ir.model import Model


def shapes(model: Model) -> dict[str, tuple[onnx.TensorProto.DataType, tuple | None]]:
    """Run ONNX shape inference and annotate the graph's Variables with dtype and shape.

    Returns:
        Tensor name → (ONNX element type, shape) for every value shape inference typed;
        symbolic dimensions are kept as strings, unknown ones as None.
    """
    proto = model.to_onnx(weights=False)  # shapes need no weights' bytes
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    found: dict[str, tuple] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        ttype = info.type.tensor_type
        if not info.type.HasField("tensor_type"):
            continue
        shape = None
        if ttype.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                          for d in ttype.shape.dim)
        found[info.name] = (ttype.elem_type, shape)
    interface = {id(t) for t in [*model.graph.inputs, *model.graph.outputs]}
    for node in model.graph.nodes:
        for tensor in node.outputs:
            if isinstance(tensor, gs.Variable) and id(tensor) not in interface:
                # Forget annotations from before earlier rewrites; inference says what holds now.
                tensor.dtype, tensor.shape = None, None
            if isinstance(tensor, gs.Variable) and tensor.name in found:
                elem_type, shape = found[tensor.name]
                if elem_type:
                    tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
                if shape is not None:
                    tensor.shape = list(shape)
    return found


def nx_view(model: Model) -> nx.DiGraph:
    """A networkx DiGraph of the main graph's data dependencies, subgraph captures included.

    gs nodes are unhashable (they compare by value), so graph nodes are the positions in
    `model.graph.nodes`; each carries the gs.Node as its ``node`` attribute and each edge the
    tensor it carries as ``tensor``.
    """
    view = nx.DiGraph()
    position = {id(n): i for i, n in enumerate(model.graph.nodes)}
    for i, node in enumerate(model.graph.nodes):
        view.add_node(i, node=node)
    for i, node in enumerate(model.graph.nodes):
        for tensor in dependencies(node):
            src = producer(tensor)
            if src is not None and id(src) in position:
                view.add_edge(position[id(src)], i, tensor=tensor)
    return view
