"""Composition is a pass: `Sequence` runs passes in order, round after round, to a fixed point.

A composite pass (``cleanup``, ``fuse``, a user's ``Sequence([...])``) is a `Pass` whose
`run` hands each child to `Context.run` — the pipeline's one entry point — so children get
their preconditions checked, their analyses dropped, their structure (and numerics) verified,
their records nested under the composite's and instruments called, exactly as top-level
passes do (onnx-ir's PassManager and TVM's Sequential are passes in the same way).

Rounds repeat because each child can enable another: folding a constant exposes a no-op, a
fusion leaves dead nodes, a cancelled Transpose pair puts a BatchNormalization right after its
Conv. A round in which no child changed the model is a fixed point: running the list again
would change nothing either. `max_rounds` bounds the repetition (the ``rounds`` stat shows
when it was reached); ``max_rounds=1`` is a plain sequence.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import ClassVar

from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult, resolve


class Composite(Pass):
    """A pass made of passes, run through `Context.run` to a fixed point.

    Subclasses give `children()` and a `max_rounds` field. Exact when every child is.
    """

    composite: ClassVar[bool] = True
    max_rounds: int

    def children(self) -> Seq[Pass]:
        """The passes of one round, in order."""
        raise NotImplementedError(f"composite pass '{self.name}' does not list its children")

    @property
    def exact(self) -> bool:  # type: ignore[override]
        """Exact when every child is."""
        return all(child.exact for child in self.children())

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Run the children, round after round, until a round changes nothing."""
        children = self.children()
        changed = False
        rounds = 0
        while rounds < self.max_rounds:
            rounds += 1
            # Every child runs in every round (no short-circuit): the round is a fixed point
            # only if all of them found nothing to do.
            round_changed = [ctx.run(child, model).changed for child in children]
            changed |= any(round_changed)
            if not any(round_changed):
                break
        return PassResult(changed, {"rounds": rounds})


@dataclass(frozen=True)
class Sequence(Composite):
    """Run `passes` in order (registry names or pass objects), `max_rounds` times at most.

    Attributes:
        passes: The children, in order.
        max_rounds: 1 runs the list once; more repeat it until a round changes nothing.
    """

    name: ClassVar[str] = "sequence"
    passes: tuple[Pass | str, ...] = ()
    max_rounds: int = 1

    def children(self) -> list[Pass]:
        """The children as pass objects."""
        return [resolve(p) for p in self.passes]
