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
from onnxpress.passes.fixed_point import fixed_point


@dataclass(frozen=True)
class Cleanup(Pass):
    """Fold constants, remove no-ops and dead code until nothing changes."""

    name: ClassVar[str] = "cleanup"
    max_rounds: int = 8

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Repeat the three cleanup passes until a round changes nothing."""
        return fixed_point(model, ctx, (FoldConstants(), EliminateIdentity(),
                                        EliminateDeadCode()), self.max_rounds)
