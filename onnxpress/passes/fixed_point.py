"""Run a list of passes round after round until a whole round changes nothing.

Composite passes (``cleanup``, ``fuse``) repeat their inner passes because each can enable
another: folding a constant exposes a no-op, a fusion leaves dead nodes, a cancelled Transpose
pair puts a BatchNormalization right after its Conv. A round in which no pass changed the model
is a fixed point: running the list again would change nothing either.

Analyses are dropped after every inner pass that changed the model, as the `PassManager` does
between top-level passes (the inner passes do not go through the manager).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any

from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult


def fixed_point(model: Model, ctx: Context, passes: Sequence[Pass], max_rounds: int
                ) -> PassResult:
    """Run `passes` in order, repeatedly, until a round changes nothing or `max_rounds` ran.

    Args:
        model: The model, changed in place.
        ctx: The pipeline's context, handed to every inner pass.
        passes: The inner passes, run in this order every round.
        max_rounds: Upper bound on the rounds (a safety net against rewrites that undo each
            other; the ``rounds`` stat shows when it was reached).

    Returns:
        Whether any round changed the model, and stats: ``rounds`` run and, under
        ``"<pass>.<key>"``, each inner pass's numeric stats summed over the rounds. A key the
        pass lists in its ``gauges`` describes the model rather than work done (``kept_nd``:
        MatMuls left unfused), and a non-numeric stat (a reason, "14 -> 17") is no count
        either: for those the last reported value is kept. Zero values are left out.
    """
    totals: dict[str, Any] = {}
    changed = False
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        round_changed = False
        for p in passes:
            result = p.run(model, ctx)
            if result.changed:
                round_changed = True
                model.invalidate()
            for key, value in result.stats.items():
                name = f"{p.name}.{key}"
                counter = isinstance(value, Real) and key not in p.gauges
                totals[name] = totals.get(name, 0) + value if counter else value
        changed |= round_changed
        if not round_changed:
            break
    return PassResult(changed, {"rounds": rounds, **{k: v for k, v in totals.items() if v}})
