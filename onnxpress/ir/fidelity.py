"""What onnx-graphsurgeon loses between a ModelProto and a gs.Graph, kept and restored.

gs's importer and exporter are faithful for nodes, tensors and attributes, but drop or distort
three things a user's model may rely on:

- node ``doc_string`` and ``metadata_props`` (gs nodes have no such fields). They are kept on
  the gs node objects (`NODE_META`) and written back in node order — nodes export in
  ``graph.nodes`` order, so the i-th exported node is the i-th gs node;
- initializers that are also graph inputs (overridable defaults; required for IR < 4): gs
  drops them from the inputs, so their names are remembered and re-listed on export;
- an outer-scope initializer read only inside If / Loop bodies is written into *every* body
  that reads it, duplicating weights on each save; subgraph initializers are hoisted into the
  main graph (one copy), where every body sees them;
- a ``value_info`` entry for a graph input or output overwrites the interface's declared type
  on import, so one without a shape (pre-quantized exports write those) made the output
  shapeless and the saved model invalid; such entries are hidden from the importer;
- sparse tensors (``sparse_initializer``, Constant ``sparse_value``) are densified on load with
  their values' dtype, as onnxruntime does when it loads them; gs would mis-type them;
- values gs cannot re-encode once a pass has read them (strings, 4-bit integers: gs writes
  them as raw bytes, which ONNX forbids for strings and packs for int4) are handed back to
  gs as onnx-encoded tensors before export (`encodable`);
- ``training_info`` (gs has no place for it) is kept on the `Model` and written back while every
  tensor it names still exists.

The model's own history (``onnxpress.pipeline`` in metadata_props) is validated here too: it
comes from the input file, so any third-party model can carry a malformed one.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxpress.errors import ModelLoadError
from onnxpress.ir.scopes import subgraphs

#: A sparse tensor may expand to at most this many times its stored bytes (and 64 MiB at
#: least) when densified: a few bytes declaring 2^40 zeros must not exhaust memory.
SPARSE_EXPANSION = 1000

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


# --------------------------------------------------------------------------------------------
# Interface types, sparse tensors, training_info, recorded pipeline
@contextlib.contextmanager
def interface_types_kept(graph: onnx.GraphProto) -> Iterator[None]:
    """Hide value_info entries of graph inputs and outputs (all scopes) while gs imports.

    The interface declares the type; a value_info for the same tensor is redundant and, when
    it lacks the shape, gs lets it overwrite the declared one. The proto is restored after.
    """
    saved = []
    for g in [graph, *_bodies(graph)]:
        interface = {v.name for v in [*g.input, *g.output]}
        if any(v.name in interface for v in g.value_info):
            kept = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in g.value_info]
            saved.append((g, kept))
            del g.value_info[:]
            g.value_info.extend(v for v in kept if v.name not in interface)
    try:
        yield
    finally:
        for g, kept in saved:
            del g.value_info[:]
            g.value_info.extend(kept)


def densify_sparse(proto: onnx.ModelProto, what: str) -> None:
    """Replace sparse initializers and Constant ``sparse_value``s by dense tensors, in place.

    Raises:
        ModelLoadError: the sparse tensor is malformed or would expand beyond
            `SPARSE_EXPANSION` times its size.
    """
    for graph in [proto.graph, *_bodies(proto.graph)]:
        for sparse in graph.sparse_initializer:
            graph.initializer.append(_dense(sparse, what))
        del graph.sparse_initializer[:]
        for node in graph.node:
            for attr in node.attribute:
                if attr.name == "sparse_value" and attr.HasField("sparse_tensor"):
                    dense = _dense(attr.sparse_tensor, what)
                    attr.Clear()
                    attr.CopyFrom(onnx.helper.make_attribute("value", dense))


def _dense(sparse: onnx.SparseTensorProto, what: str) -> onnx.TensorProto:
    name = sparse.values.name
    where = f"{what}: sparse tensor '{name}'"
    try:
        values = onnx.numpy_helper.to_array(sparse.values).reshape(-1)
        indices = onnx.numpy_helper.to_array(sparse.indices).astype(np.int64)
    except (ValueError, TypeError, IndexError) as e:
        raise ModelLoadError(f"{where}: cannot be read ({e})") from None
    dims = [int(d) for d in sparse.dims]
    size = int(np.prod(dims, dtype=object)) if dims else 1
    limit = max(64 << 20, SPARSE_EXPANSION * (values.nbytes + indices.nbytes))
    if any(d < 0 for d in dims) or size * values.dtype.itemsize > limit:
        raise ModelLoadError(f"{where}: declares dims {dims} ({size:,} elements), too large to "
                             "densify; onnxpress refuses such memory bombs")
    if indices.ndim == 2 and dims:
        if indices.shape != (values.size, len(dims)):
            raise ModelLoadError(f"{where}: indices of shape {indices.shape} do not fit dims "
                                 f"{dims} and {values.size} values")
        if ((indices < 0) | (indices >= np.array(dims))).any():
            raise ModelLoadError(f"{where}: an index is outside dims {dims}")
        linear = np.ravel_multi_index(tuple(indices.T), dims) if values.size else indices[:, 0]
    else:
        linear = indices.reshape(-1)
    if linear.size != values.size or ((linear < 0) | (linear >= size)).any():
        raise ModelLoadError(f"{where}: {linear.size} indices for {values.size} values, or an "
                             f"index outside {size} elements")
    dense = np.zeros(size, values.dtype)
    dense[linear] = values
    tensor = onnx.numpy_helper.from_array(dense.reshape(dims), name)
    tensor.data_type = sparse.values.data_type  # float16/bfloat16 keep their ONNX type
    return tensor


def valid_training_info(infos: list[onnx.TrainingInfoProto], proto: onnx.ModelProto
                        ) -> list[onnx.TrainingInfoProto]:
    """The training_info entries whose bindings still name tensors of `proto`'s main graph.

    Passes rename and remove tensors; a training algorithm updating a weight that a fusion
    folded away would be invalid. Such entries are dropped with a warning naming the tensors.
    """
    graph = proto.graph
    names = ({i.name for i in graph.initializer} | {i.name for i in graph.input}
             | {o for n in graph.node for o in n.output})
    kept = []
    for info in infos:
        bound = [b.key for b in [*info.initialization_binding, *info.update_binding]]
        missing = sorted(set(bound) - names)
        if missing:
            warnings.warn(f"training_info dropped: it updates {missing}, which the passes "
                          "removed or renamed", stacklevel=3)
        else:
            kept.append(info)
    return kept


def recorded_pipeline(text: str) -> list[dict[str, Any]]:
    """The pass records of an ``onnxpress.pipeline`` value ("" for none).

    Raises:
        ModelLoadError: the value is not what `save` writes: a JSON object whose "passes" is
            a list of ``{"name": str, "options": {...}}``.
    """
    if not text:
        return []
    try:
        recorded = json.loads(text)
    except ValueError as e:
        recorded = e
    passes = recorded.get("passes", []) if isinstance(recorded, dict) else None
    if not isinstance(passes, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str)
            and isinstance(p.get("options", {}), dict) for p in passes):
        raise ModelLoadError("metadata 'onnxpress.pipeline' is not a pipeline record onnxpress "
                             "wrote (expected a JSON object with a list of passes); remove "
                             "that metadata_props key")
    return [{"name": p["name"], "options": dict(p.get("options", {}))} for p in passes]


#: Element types gs's exporter writes wrongly from a numpy array (strings, packed 4-bit).
_REENCODE = frozenset({"O", "S", "U", "int4", "uint4", "float4_e2m1fn"})


def encodable(graph: gs.Graph) -> None:
    """Give gs onnx-encoded tensors for loaded values it cannot encode itself (every scope).

    Values are unchanged: the TensorProto is onnx's own encoding of the same array, and gs
    exports such a tensor as it is (reading `.values` again decodes it).
    """
    from onnxpress.ir.scopes import iter_graphs

    for g in iter_graphs(graph):
        tensors = [t for n in g.nodes for t in n.inputs]
        tensors += [v for n in g.nodes for v in n.attrs.values() if isinstance(v, gs.Constant)]
        for t in tensors + list(g.outputs):
            if isinstance(t, gs.Constant) and isinstance(t._values, np.ndarray) and (
                    t._values.dtype.kind in "OSU" or t._values.dtype.name in _REENCODE):
                t._values = gs.ir.tensor.LazyValues(
                    onnx.numpy_helper.from_array(t._values, t.name))


def nbytes(constant: gs.Constant) -> int:
    """Bytes of a constant's values, without loading values that are still lazy."""
    values = constant._values
    return int(values.nbytes)
