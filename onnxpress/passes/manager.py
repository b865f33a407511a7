"""`PassManager`: runs passes and does the bookkeeping so passes don't.

`run_one` is the one entry point of every pass run, top-level or nested: check its
preconditions, time it, and — if it changed the model — drop the analyses it did not
preserve, verify the graph's structure (default) and, with ``verify="numeric"``, check that an
exact pass kept the outputs within its tolerance (onnxruntime on a few samples; the "after"
outputs of one pass are the "before" of the next). Every run is recorded as a `PassRecord`
(time, changed, stats, nodes and bytes before/after). A composite pass runs its children
through `Context.run`, which comes back here: their records nest in the composite's, each
child is verified on its own (so the composite itself needs no second check), and an error
names the innermost pass, the composite it ran in and the passes that ran before.

Instruments observe the run through ``before(pass, model, ctx)`` and
``after(pass, model, ctx, record)``: `DumpAfterEach` writes the model after each pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from onnxpress.errors import OnnxpressError, PassError, VerificationError
from onnxpress.ir.model import Model
from onnxpress.ir.verify import check_structure
from onnxpress.passes.base import Context, Pass
from onnxpress.report import PassRecord, Report

Verify = Literal["off", "structure", "numeric"]

#: Samples used for numeric verification.
NUMERIC_SAMPLES = 2


class Instrument(Protocol):
    """Hooks called around every pass."""

    def before(self, p: Pass, model: Model, ctx: Context) -> None:
        """Called before `p` runs."""

    def after(self, p: Pass, model: Model, ctx: Context, record: PassRecord) -> None:
        """Called after `p` ran (and was verified)."""


@dataclass
class DumpAfterEach:
    """Write the model to `folder/NN-<pass>.onnx` after each pass that changed it."""

    folder: Path
    _count: int = 0

    def before(self, p: Pass, model: Model, ctx: Context) -> None:
        """Nothing to do before a pass."""

    def after(self, p: Pass, model: Model, ctx: Context, record: PassRecord) -> None:
        """Dump the model if the pass changed it."""
        self._count += 1
        if record.changed:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            model.save(Path(self.folder) / f"{self._count:02d}-{p.name}.onnx")


class PassManager:
    """Runs a pass list over a model with verification, timing and a report."""

    def __init__(self, passes: Sequence[Pass], *, verify: Verify = "structure",
                 instruments: Sequence[Instrument] = ()) -> None:
        if verify not in ("off", "structure", "numeric"):
            raise PassError(f"verify must be 'off', 'structure' or 'numeric', not {verify!r}")
        self.passes = list(passes)
        self.verify = verify
        self.instruments = list(instruments)
        self.report = Report()
        self._numeric: _NumericCheck | None = None
        #: Names of the passes running now, outermost first, and the records of the
        #: children each has run so far.
        self._running: list[tuple[str, list[PassRecord]]] = []

    def run(self, model: Model, ctx: Context, report: Report | None = None) -> Report:
        """Run every pass on `model` in place and return the report."""
        self.report = report if report is not None else Report()
        self._numeric = _NumericCheck(ctx) if self.verify == "numeric" else None
        ctx.manager = self
        for p in self.passes:
            self.run_one(p, model, ctx)
        return self.report

    def run_one(self, p: Pass, model: Model, ctx: Context) -> PassRecord:
        """Run one pass with the manager's bookkeeping and record it — at the top level, or
        under the pass running now when a composite calls it (through `Context.run`)."""
        siblings = self._running[-1][1] if self._running else self.report.records
        for instrument in self.instruments:
            instrument.before(p, model, ctx)
        nodes_before, bytes_before = len(model), model.nbytes
        numeric = self._numeric if p.exact and not p.composite else None
        children: list[PassRecord] = []
        self._running.append((p.name, children))
        start = time.perf_counter()
        try:
            p.requires(model, ctx)
            if numeric is not None:
                numeric.remember(model)
            result = p.run(model, ctx)
        except OnnxpressError as e:
            if getattr(e, "pass_name", None):  # a nested pass already said where it failed
                raise
            raise self._attributed(type(e)(f"{self._where(p)}: {e}"), p) from e
        except Exception as e:
            raise self._attributed(
                PassError(f"{self._where(p)} failed: {type(e).__name__}: {e}"), p) from e
        finally:
            self._running.pop()
        seconds = time.perf_counter() - start
        verified = ""
        if result.changed and not p.composite:  # a composite's children were verified each
            model.invalidate(keep=p.preserves)
            if self.verify != "off":
                check_structure(model, after=p.name)
                verified = "structure"
            if numeric is not None:
                numeric.check(model, p)
                verified = "numeric"
        if result.changed and not p.exact and self._numeric is not None:
            self._numeric.forget()
        record = PassRecord(p.name, p.options(), result.changed, seconds, dict(result.stats),
                            nodes_before, len(model), bytes_before, model.nbytes,
                            tuple(children), verified)
        siblings.append(record)
        if not self._running:
            model.pipeline.append({"name": p.name, "options": record.options})
        for instrument in self.instruments:
            instrument.after(p, model, ctx, record)
        return record

    @property
    def depth(self) -> int:
        """How many passes are running now: 0 in the hooks of a top-level pass, 1 in those of a
        pass a top-level composite runs, and so on."""
        return len(self._running)

    def _where(self, p: Pass) -> str:
        """``pass 'fuse-batchnorm' in 'fuse' (after cleanup)``: the pass, the composites it
        runs in, and the top-level passes that ran before."""
        inside = "".join(f" in '{name}'" for name, _ in reversed(self._running[:-1]))
        before = self.report.names()
        return f"pass '{p.name}'{inside}" + (f" (after {', '.join(before)})" if before else "")

    @staticmethod
    def _attributed(error: OnnxpressError, p: Pass) -> OnnxpressError:
        error.pass_name = p.name
        return error


class _NumericCheck:
    """Compares a model's outputs before and after an exact pass on a few fixed samples."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.feeds: list[dict[str, np.ndarray]] | None = None
        self.expected: list[list[np.ndarray]] | None = None

    def _outputs(self, model: Model) -> list[list[np.ndarray]]:
        from onnxpress.runtime.data import DataSource, batch_size_for
        from onnxpress.runtime.session import session

        if self.feeds is None:
            source = self.ctx.data if self.ctx.data is not None else DataSource.random(model)
            self.feeds = source.take(NUMERIC_SAMPLES, batch_size_for(model, source, 1))
        # Exactness is a property of the graph, not the provider: check on the CPU, which is
        # always there (a tensorrt pipeline can be compiled on a machine without a GPU).
        sess = session(model, "cpu", optimize=False)
        return [sess.run(None, feeds) for feeds in self.feeds]

    def remember(self, model: Model) -> None:
        """Record the outputs before the pass (unless the previous exact pass left them)."""
        if self.expected is None:
            self.expected = self._outputs(model)

    def check(self, model: Model, p: Pass) -> None:
        """Raise `VerificationError` if the outputs moved beyond `p`'s tolerance."""
        actual = self._outputs(model)
        for sample, (want, got) in enumerate(zip(self.expected, actual, strict=True)):
            for index, (w, g) in enumerate(zip(want, got, strict=True)):
                if w.shape != g.shape or not np.allclose(g, w, rtol=p.rtol, atol=p.atol,
                                                         equal_nan=True):
                    err = (float(np.max(np.abs(g.astype(np.float64) - w)))
                           if w.shape == g.shape else f"shape {g.shape} != {w.shape}")
                    raise VerificationError(
                        f"exact pass '{p.name}' changed output #{index} on sample {sample} "
                        f"(max abs error {err}, rtol={p.rtol}, atol={p.atol})")
        self.expected = actual

    def forget(self) -> None:
        """Outputs changed on purpose (a lossy pass): measure again before the next one."""
        self.expected = None
