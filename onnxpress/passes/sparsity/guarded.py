"""Guarded channel pruning: prune, refit, measure against FP32; prune less until it holds.

1. The last ``samples`` samples of the data are held back (`runtime.guard.holdout`); pruning's
   sensitivities and the refit see only the others (all of them when the data is too short to
   split or is an iterable, which the stats say).
2. `prune-channels` then `reconstruct` run (through `Context.run`, so their records nest here)
   on a copy, which is measured against the FP32 model (the teacher) on the held-back
   samples: per output the mean cosine, and top-1 agreement for class-like outputs.
3. Within the budget (``cosine ≥ min_cosine``, ``agreement ≥ 1 − max_drop``): the copy is the
   result. Otherwise the pruning is made gentler — ``target ← 1 − (1 − target)/2`` (or
   ``ratio ← ratio/2``) — and tried again, at most ``attempts`` times. When none holds, a
   `GuardError` gives every attempt's numbers: a collapsed model is never the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from onnxpress.errors import GuardError, PreconditionError
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.sparsity.channels import PruneChannels
from onnxpress.passes.sparsity.reconstruct import Reconstruct
from onnxpress.runtime.data import DataSource
from onnxpress.runtime.guard import Budget, Reference, holdout


def gentler(prune: PruneChannels) -> PruneChannels:
    """`prune` removing half as much: half the MACs removed, or half the ratio."""
    if prune.target is not None:
        return replace(prune, target=1 - (1 - prune.target) / 2)
    return replace(prune, ratio=(0.3 if prune.ratio is None else prune.ratio) / 2)


def fitting_part(data: DataSource, held: int) -> tuple[DataSource, bool]:
    """The samples of `data` before the held-back ones, and whether they were split off (an
    array source at least twice as long as `held`); else all of `data`."""
    if data.arrays is None or len(data) < 2 * held:
        return data, False
    end = len(data) - held
    return DataSource.from_arrays({k: v[:end] for k, v in data.arrays.items()},
                                  origin=f"{data.origin}[:{end}]"), True


@dataclass(frozen=True)
class PruneGuarded(Pass):
    """prune-channels + reconstruct within an accuracy budget against FP32, pruning less
    until the budget holds, or a `GuardError` with the numbers.

    Attributes:
        prune: The pruning to try first.
        reconstruct: The refit after each pruning.
        min_cosine: Required mean per-sample cosine of every judged output to FP32.
        max_drop: Largest top-1 disagreement with FP32 of a class-like output (1 − agreement).
        samples: Held-back samples of ctx.data the budget is measured on (the last ones).
        outputs: Names of the judged outputs (None: all).
        attempts: Prunings tried, each gentler than the last.
    """

    name: ClassVar[str] = "prune-guarded"
    exact: ClassVar[bool] = False

    prune: PruneChannels = field(default_factory=lambda: PruneChannels(target=0.6))
    reconstruct: Reconstruct = field(default_factory=Reconstruct)
    min_cosine: float = 0.99
    max_drop: float = 0.01
    samples: int = 64
    outputs: tuple[str, ...] | None = None
    attempts: int = 3

    def requires(self, model: Model, ctx: Context) -> None:
        """Needs data to measure on and the teacher to measure against."""
        if ctx.data is None:
            raise PreconditionError("prune-guarded measures outputs on data: pass data=... / "
                                    "--data FILE")
        if not 0 < self.min_cosine <= 1 or not 0 <= self.max_drop < 1:
            raise PreconditionError(f"prune-guarded: min_cosine must be in (0, 1] and "
                                    f"max_drop in [0, 1), not {self.min_cosine}, "
                                    f"{self.max_drop}")
        if self.attempts < 1:
            raise PreconditionError(f"prune-guarded: attempts must be ≥ 1, not {self.attempts}")
        self.reconstruct.requires(model, ctx)

    @property
    def budget(self) -> Budget:
        """The accuracy budget."""
        return Budget(self.min_cosine, 1 - self.max_drop, self.outputs)

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Try prunings from the stated one to gentler ones; keep the first within budget."""
        fp32 = ctx.teacher()
        reference = Reference(fp32, holdout(fp32, ctx.data, self.samples), self.outputs)
        data, split = fitting_part(ctx.data, self.samples)
        fit = replace(ctx, data=data)
        prune, tried = self.prune, []
        for _ in range(self.attempts):
            trial = model.copy()
            record = fit.run(prune, trial)
            if not record.changed:
                return PassResult(False, {"reason": record.stats.get("reason", "nothing "
                                                                     "to prune")})
            fit.run(self.reconstruct, trial)
            measured = reference.measure(trial)
            asked = (f"target={prune.target:.3g}" if prune.target is not None
                     else f"ratio={prune.ratio:.3g}")
            tried.append(f"{asked}: {measured.summary()}")
            if measured.meets(self.budget):
                model.adopt(trial)
                return PassResult(True, {"pruning": asked, "measured": measured.summary(),
                                         "samples": measured.samples, "attempts": tried,
                                         "held_back_split": split,
                                         "macs_ratio": record.stats.get("macs_ratio")})
            prune = gentler(prune)
        raise GuardError(
            f"channel pruning misses the accuracy budget (cosine ≥ {self.min_cosine}, top-1 "
            f"agreement ≥ {1 - self.max_drop:.3g}) on {self.samples} held-back samples at "
            f"every pruning tried: {'; '.join(tried)}. Prune less (a target closer to 1), "
            "exclude the sensitive layers, or lower the budget")


__all__ = ["PruneGuarded", "fitting_part", "gentler"]
