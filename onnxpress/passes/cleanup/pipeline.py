"""`cleanup`: constant folding, identity elimination and dead code, to a fixed point.

Each of the three enables the others — folding turns a Reshape's shape into a constant that
makes it a recognizable no-op, removing a no-op exposes more foldable chains, and both leave
dead nodes — so they repeat until a whole round changes nothing (at most `max_rounds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.cleanup.constants import FoldConstants
from onnxpress.passes.cleanup.dead_code import EliminateDeadCode
from onnxpress.passes.cleanup.identity import EliminateIdentity


@dataclass(frozen=True)
class Cleanup(Pass):
    """Fold constants, remove no-ops and dead code until nothing changes."""

    name: ClassVar[str] = "cleanup"
    max_rounds: int = 8

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Repeat the three cleanup passes until a round changes nothing."""
        inner = (FoldConstants(), EliminateIdentity(), EliminateDeadCode())
        totals: dict[str, int] = {}
        changed = False
        for rounds in range(1, self.max_rounds + 1):
            round_changed = False
            for p in inner:
                result = p.run(model, ctx)
                if result.changed:
                    round_changed = True
                    model.invalidate()
                for key, value in result.stats.items():
                    totals[f"{p.name}.{key}"] = totals.get(f"{p.name}.{key}", 0) + value
            changed |= round_changed
            if not round_changed:
                break
        return PassResult(changed, {"rounds": rounds, **{k: v for k, v in totals.items() if v}})
