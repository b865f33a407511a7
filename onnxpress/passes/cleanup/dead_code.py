"""Dead code elimination: drop what no graph output depends on.

A node is live if one of its outputs is a graph output or is read by a live node — where a
node with subgraphs reads every outer tensor its subgraphs capture. Everything else goes, in
the main graph and inside subgraphs. Initializers exist only as node inputs in gs, so one read
by no live node goes with its readers; an initializer also listed as a graph input (old
exporters do this to make weights overridable) is dropped from the inputs when nothing reads it.

Exact by construction: nothing removed can reach an output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from onnxpress.ir.edit import dead_code
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult


@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    """Remove nodes, initializers and initializer inputs that no output depends on."""

    name: ClassVar[str] = "eliminate-dead-code"

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Sweep the model in place."""
        initializers_before = sum(1 for _ in model.constants())
        nodes = dead_code(model.graph)
        unused_inputs = [t for t in model.graph.inputs
                         if isinstance(t, gs.Constant) and not t.outputs]
        model.graph.inputs[:] = [t for t in model.graph.inputs
                                 if not any(t is u for u in unused_inputs)]
        initializers = initializers_before - sum(1 for _ in model.constants())
        changed = bool(nodes or unused_inputs)
        return PassResult(changed, {"nodes": nodes, "initializers": initializers,
                                    "initializer_inputs": len(unused_inputs)})
