"""What onnx-graphsurgeon loses between a ModelProto and a gs.Graph, kept and restored.

gs's importer and exporter are faithful for nodes, tensors and attributes, but drop or distort
four things a user's model may rely on:

- node ``doc_string`` and ``metadata_props`` (gs nodes have no such fields). They are kept on
  the gs node objects (`NODE_META`) and written back in node order — nodes export in
  ``graph.nodes`` order, so the i-th exported node is the i-th gs node;
- initializers that are also graph inputs (overridable defaults; required for IR < 4): gs
  drops them from the inputs, so their names are remembered and re-listed on export;
- 4-bit initializers: once read, gs holds them unpacked and would export one byte per value
  (`repack_subbyte_constants`);
- an outer-scope initializer read only inside If / Loop bodies is written into *every* body
  that reads it, duplicating weights on each save; subgraph initializers are hoisted into the
  main graph (one copy), where every body sees them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxpress.ir.scopes import iter_graphs, subgraphs

#: Attribute of a gs.Node holding ``(doc_string, {key: value})`` from the source model, or
#: written by onnxpress (e.g. ``onnxpress.rule`` on nodes made by a rewrite rule).
NODE_META = "_onnxpress_meta"


def _graph_pairs(proto_graph: onnx.GraphProto, graph: gs.Graph
                 ) -> Iterator[tuple[onnx.NodeProto, gs.Node]]:
    """(NodeProto, gs.Node) pairs in node order, subgraphs included."""
    for proto_node, node in zip(proto_graph.node, graph.nodes, strict=True):
        yield proto_node, node
        bodies = [a.g for a in proto_node.attribute if a.type == onnx.AttributeProto.GRAPH]
        bodies += [g for a in proto_node.attribute if a.type == onnx.AttributeProto.GRAPHS
                   for g in a.graphs]
        for body_proto, body in zip(bodies, subgraphs(node), strict=False):
            yield from _graph_pairs(body_proto, body)


def keep_node_meta(proto_graph: onnx.GraphProto, graph: gs.Graph) -> None:
    """Copy node doc strings and metadata_props from the proto onto the gs nodes."""
    for proto_node, node in _graph_pairs(proto_graph, graph):
        if proto_node.doc_string or proto_node.metadata_props:
            setattr(node, NODE_META, (proto_node.doc_string,
                                      {p.key: p.value for p in proto_node.metadata_props}))


def tag(node: gs.Node, key: str, value: str) -> None:
    """Record `key: value` in the node's metadata_props (kept on export)."""
    doc, meta = getattr(node, NODE_META, ("", {}))
    setattr(node, NODE_META, (doc, {**meta, key: value}))


def restore_node_meta(proto_graph: onnx.GraphProto, graph: gs.Graph) -> None:
    """Write the kept doc strings and metadata_props onto the exported nodes."""
    for proto_node, node in _graph_pairs(proto_graph, graph):
        doc, meta = getattr(node, NODE_META, ("", {}))
        proto_node.doc_string = doc
        del proto_node.metadata_props[:]
        for key, value in meta.items():
            proto_node.metadata_props.add(key=key, value=value)


def initializer_inputs(proto: onnx.ModelProto) -> list[str]:
    """Names of the graph inputs that are also initializers (overridable defaults)."""
    initializers = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name in initializers]


def relist_initializer_inputs(proto: onnx.ModelProto, names: list[str]) -> None:
    """List `names` (or, for IR < 4, every initializer) among the graph inputs again."""
    graph = proto.graph
    wanted = ([i.name for i in graph.initializer] if proto.ir_version < 4 else names)
    present = {i.name for i in graph.input}
    by_name = {i.name: i for i in graph.initializer}
    for name in wanted:
        if name in by_name and name not in present:
            init = by_name[name]
            graph.input.append(onnx.helper.make_tensor_value_info(name, init.data_type,
                                                                  list(init.dims)))


def hoist_captured_initializers(graph: onnx.GraphProto) -> None:
    """Move initializers that gs wrote into subgraphs to the main graph, one copy each.

    Main-graph initializers are visible in every body, so this never changes meaning. Copies
    of an initializer the main graph already holds are dropped; a name is left alone when its
    copies differ (two bodies' own constants sharing a name) or the main graph uses it for
    something else.
    """
    copies: dict[str, list[tuple[onnx.GraphProto, onnx.TensorProto]]] = {}
    for body in _bodies(graph):
        for init in body.initializer:
            copies.setdefault(init.name, []).append((body, init))
    outer = {i.name: i.SerializeToString() for i in graph.initializer}
    taken = {i.name for i in graph.input} | {name for node in graph.node for name in node.output}
    for name, found in copies.items():
        contents = {init.SerializeToString() for _, init in found}
        if len(contents) != 1 or name in taken:
            continue
        if name in outer and outer[name] not in contents:
            continue
        if name not in outer:
            graph.initializer.append(found[0][1])
        for body, init in found:
            body.initializer.remove(init)


def _bodies(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for attr in node.attribute:
            inner = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(
                attr.graphs if attr.type == onnx.AttributeProto.GRAPHS else [])
            for body in inner:
                yield body
                yield from _bodies(body)


#: Element types numpy holds one per byte (ml_dtypes) but ONNX packs two per byte.
_PACKED_TYPES = frozenset({"int4", "uint4", "float4_e2m1fn"})


def repack_subbyte_constants(graph: gs.Graph) -> None:
    """Hand gs 4-bit constants as packed TensorProtos again, so they export correctly.

    graphsurgeon imports an int4 / uint4 initializer lazily, but once anything reads
    ``Constant.values`` it holds an unpacked ml_dtypes array, which its exporter writes one
    byte per value — a tensor the checker rejects. ``numpy_helper.from_array`` packs it.
    """
    for g in iter_graphs(graph):
        for node in g.nodes:
            for tensor in node.inputs:
                if (isinstance(tensor, gs.Constant) and isinstance(tensor._values, np.ndarray)
                        and tensor._values.dtype.name in _PACKED_TYPES):
                    tensor._values = LazyValues(
                        onnx.numpy_helper.from_array(tensor._values, tensor.name))
