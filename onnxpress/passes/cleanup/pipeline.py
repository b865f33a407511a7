"""`cleanup`: constant folding, identity elimination and dead code, to a fixed point.

Each of the three enables the others — folding turns a Reshape's shape into a constant that
makes it a recognizable no-op, removing a no-op exposes more foldable chains, and both leave
dead nodes — so they repeat until a whole round changes nothing (at most `max_rounds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from onnxpress.passes.base import Pass
from onnxpress.passes.cleanup.constants import FoldConstants
from onnxpress.passes.cleanup.dead_code import EliminateDeadCode
from onnxpress.passes.cleanup.identity import EliminateIdentity
from onnxpress.passes.sequence import Composite


@dataclass(frozen=True)
class Cleanup(Composite):
    """Fold constants, remove no-ops and dead code until nothing changes."""

    name: ClassVar[str] = "cleanup"
    max_rounds: int = 8

    def children(self) -> tuple[Pass, ...]:
        """fold-constants, eliminate-identity, eliminate-dead-code."""
        return (FoldConstants(), EliminateIdentity(), EliminateDeadCode())
