"""`Model`: one onnx-graphsurgeon graph plus the model-level facts graphsurgeon drops.

graphsurgeon (gs) is the graph: `Variable.inputs` / `.outputs` are the producer / consumer
links and `Constant.values` the weights. gs forgets what sits outside the graph on export —
ir_version (it defaults to one newer than onnxruntime accepts), metadata_props, the model doc
string, the model version — so `Model` keeps those and writes them back in `to_onnx()`.

`Model` is also the name authority (`fresh_name`), seeded with every tensor and node name at
load, subgraphs included, so a name a pass invents never collides with an existing one; and it
caches analyses (`analysis(fn)`), dropped by `invalidate()` when a pass changes the graph.
"""

from __future__ import annotations

import gc
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxpress._version import __version__
from onnxpress.errors import ModelLoadError
from onnxpress.ir import external, fidelity
from onnxpress.ir.scopes import iter_graphs

if TYPE_CHECKING:
    from onnxpress.report import Report

T = TypeVar("T")

#: A new constant of at least this many bytes triggers a cycle collection (see `constant`).
LARGE = 1 << 24
#: metadata_props key under which `save` records the pipeline that produced the model.
PIPELINE_KEY = "onnxpress.pipeline"


class Model:
    """An ONNX model being compiled: a gs.Graph and the facts gs would lose.

    Attributes:
        graph: The main graph. Passes edit it in place through `onnxpress.ir.edit`.
        ir_version: IR version of the source file, kept on export so onnxruntime accepts it.
        opsets: Opset version per domain ("" is the default ONNX domain).
        metadata: metadata_props of the source model, in order.
        doc_string: The model's doc string.
        extra: Other ModelProto scalar fields kept verbatim (producer, domain, model_version).
        source: The file the model was loaded from, if any; `save` refuses to overwrite it.
        pipeline: Passes applied so far, as ``{"name": ..., "options": {...}}`` records; read
            back from the metadata of a model onnxpress wrote, so history accumulates.
        initializer_inputs: Initializers the source also listed as graph inputs.
        training_info: The source's training_info, written back while the tensors it names
            still exist (see `fidelity.valid_training_info`).
        source_files: Real paths of the files the model was read from (the .onnx and its
            external data); `save` never replaces them.
        report: The `Report` of the last `optimize` run, if the model came out of one.
    """

    def __init__(
        self,
        graph: gs.Graph,
        *,
        ir_version: int,
        opsets: dict[str, int],
        metadata: dict[str, str] | None = None,
        doc_string: str = "",
        extra: dict[str, Any] | None = None,
        source: Path | None = None,
    ) -> None:
        self.graph = graph
        self.ir_version = ir_version
        self.opsets = dict(opsets)
        self.metadata = dict(metadata or {})
        self.doc_string = doc_string
        self.extra = dict(extra or {})
        self.source = source
        self.pipeline: list[dict[str, Any]] = []
        self.initializer_inputs: list[str] = []
        self.training_info: list[onnx.TrainingInfoProto] = []
        self.source_files: frozenset[Path] = frozenset()
        self.report: Report | None = None
        self._analyses: dict[Callable[[Model], Any], Any] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()
        self._seed_names()

    # ----------------------------------------------------------------------------------------
    # Conversion
    @classmethod
    def from_onnx(cls, proto: onnx.ModelProto, *, source: Path | None = None) -> Model:
        """Import a ModelProto (which is not modified).

        Raises:
            ModelLoadError: the proto references external files; only `onnxpress.load`, given
                the model's path, may resolve them (against the model's folder).
        """
        if source is None and any(external.is_external(t) and external.source_of(t) is None
                                  for t in external.tensors(proto)):
            raise ModelLoadError("the model keeps tensors in external files, which can only "
                                 "be found beside a model file; load it by its path")
        with fidelity.interface_types_kept(proto.graph):
            graph = gs.import_onnx(proto)
        fidelity.keep_node_meta(proto.graph, graph)
        metadata = {p.key: p.value for p in proto.metadata_props}
        recorded = fidelity.recorded_pipeline(metadata.pop(PIPELINE_KEY, ""))
        model = cls(
            graph,
            ir_version=proto.ir_version,
            opsets={op.domain: op.version for op in proto.opset_import},
            metadata=metadata,
            doc_string=proto.doc_string,
            extra={
                "producer_name": proto.producer_name,
                "producer_version": proto.producer_version,
                "domain": proto.domain,
                "model_version": proto.model_version,
            },
            source=source,
        )
        model.pipeline = recorded
        model.initializer_inputs = fidelity.initializer_inputs(proto)
        model.training_info = [onnx.TrainingInfoProto.FromString(t.SerializeToString())
                               for t in proto.training_info]
        return model

    def to_onnx(self, *, weights: bool = True) -> onnx.ModelProto:
        """Export to a ModelProto with the source's ir_version, opsets and metadata.

        Args:
            weights: Include the bytes of every tensor (a self-contained proto for
                onnxruntime). False exports large tensors as stubs that stand for this model's
                values (`onnxpress.ir.external`): no copy of the weights is made, and the proto
                stays small whatever the model's size (shape inference, `save`, `copy`).
        """
        self.graph.ir_version = self.ir_version
        self.graph.opset = self.opsets.get("", self.graph.opset)
        opset_imports = [onnx.helper.make_opsetid(d, v) for d, v in sorted(self.opsets.items())]
        fidelity.encodable(self.graph)
        external.defer_arrays(self.graph)
        proto = gs.export_onnx(self.graph, do_type_check=False, opset_imports=opset_imports)
        # Intermediate shapes are annotations that rewrites (pruning, reshaping) can make stale,
        # and a stale value_info makes onnxruntime reject the model; runtimes re-infer them.
        del proto.graph.value_info[:]
        proto.ir_version = self.ir_version
        fidelity.restore_node_meta(proto.graph, self.graph)
        fidelity.hoist_captured_initializers(proto.graph)
        fidelity.relist_initializer_inputs(proto, self.initializer_inputs)
        proto.doc_string = self.doc_string
        for key, value in self.extra.items():
            setattr(proto, key, value)
        metadata = dict(self.metadata)
        if self.pipeline:
            metadata[PIPELINE_KEY] = json.dumps({"version": __version__, "passes": self.pipeline})
        onnx.helper.set_model_props(proto, metadata)
        proto.training_info.extend(fidelity.valid_training_info(self.training_info, proto))
        if weights:
            external.materialize(proto)
        return proto

    def copy(self) -> Model:
        """A deep copy: no node, tensor or weight array is shared with this model."""
        clone = Model.from_onnx(self.to_onnx(weights=False), source=self.source)
        external.reattach(clone.graph)
        clone.source_files = self.source_files
        return clone

    def adopt(self, other: Model) -> None:
        """Take over `other`'s graph and opsets (a pass that searched over trial copies
        keeps the winner); cached analyses are dropped and the name authority re-seeded."""
        self.graph, self.opsets = other.graph, dict(other.opsets)
        self.invalidate()
        self._seed_names()

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the model atomically; see `onnxpress.ir.io.save` for the options."""
        from onnxpress.ir.io import save

        return save(self, path, **kwargs)

    # ----------------------------------------------------------------------------------------
    # Names
    def _seed_names(self) -> None:
        for graph in iter_graphs(self.graph):
            self._names.update(n.name for n in graph.nodes if n.name)
            for node in graph.nodes:
                self._names.update(t.name for t in itertools.chain(node.inputs, node.outputs))
            self._names.update(t.name for t in itertools.chain(graph.inputs, graph.outputs))

    def fresh_name(self, hint: str) -> str:
        """A tensor or node name based on `hint` that is not used anywhere in the model."""
        name = hint
        while name in self._names or not name:
            name = f"{hint}_{next(self._counter)}"
        self._names.add(name)
        return name

    def variable(self, hint: str, dtype: Any = None, shape: Any = None) -> gs.Variable:
        """A new activation tensor with a fresh name."""
        return gs.Variable(self.fresh_name(hint), dtype=dtype, shape=shape)

    def constant(self, hint: str, values: np.ndarray) -> gs.Constant:
        """A new initializer with a fresh name (the array is copied, never shared)."""
        values = np.array(values, copy=True)
        if values.nbytes >= LARGE:
            # gs tensors sit in reference cycles (their link lists point back at them), so a
            # weight a rewrite replaced is freed only by the cycle collector; collecting when
            # a large one is made keeps at most the one being replaced alive.
            gc.collect()
        return gs.Constant(self.fresh_name(hint), values)

    def node(self, op: str, inputs: list, outputs: list, *, hint: str | None = None,
             attrs: dict | None = None, domain: str | None = None) -> gs.Node:
        """A new node with a fresh name (not yet inserted in any graph)."""
        return gs.Node(op, self.fresh_name(hint or op), attrs=dict(attrs or {}),
                       inputs=list(inputs), outputs=list(outputs), domain=domain)

    # ----------------------------------------------------------------------------------------
    # Analyses
    def analysis(self, fn: Callable[[Model], T]) -> T:
        """Compute `fn(self)` once and cache it until the model changes."""
        if fn not in self._analyses:
            self._analyses[fn] = fn(self)
        return self._analyses[fn]

    def invalidate(self, keep: frozenset = frozenset()) -> None:
        """Drop cached analyses except those in `keep` (a pass's `preserves`)."""
        self._analyses = {fn: value for fn, value in self._analyses.items() if fn in keep}

    # ----------------------------------------------------------------------------------------
    # Facts
    @property
    def opset(self) -> int:
        """Version of the default ONNX domain."""
        return self.opsets.get("", self.opsets.get("ai.onnx", 1))

    def constants(self) -> Iterator[gs.Constant]:
        """Every distinct initializer used by the main graph's nodes (not subgraphs)."""
        seen: set[int] = set()
        for node in self.graph.nodes:
            for tensor in node.inputs:
                if isinstance(tensor, gs.Constant) and id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield tensor

    @property
    def nbytes(self) -> int:
        """Bytes of the initializers (what dominates the file size); lazy values stay unread."""
        return sum(fidelity.nbytes(c) for c in self.constants())

    def __len__(self) -> int:
        """Number of nodes in the main graph."""
        return len(self.graph.nodes)

    def __repr__(self) -> str:
        return (f"Model({self.graph.name!r}, nodes={len(self)}, opset={self.opset}, "
                f"ir_version={self.ir_version})")
