"""`PassManager`: runs passes and does the bookkeeping so passes don't.

For each pass: check its preconditions, time it, and — if it changed the model — drop the
analyses it did not preserve, verify the graph's structure (default) and, with
``verify="numeric"``, check that an exact pass kept the outputs within its tolerance
(onnxruntime on a few samples; the "after" outputs of one pass are the "before" of the next).
Every run is recorded in a `Report` (time, changed, stats, nodes and bytes before/after).
Errors name the pass and the passes that ran before it.

Instruments observe the run through ``before(pass, model, ctx)`` and
``after(pass, model, ctx, record)``: `DumpAfterEach` writes the model after each pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from onnxpress.errors import OnnxpressError, PassError, VerificationError
from onnxpress.ir.model import Model
from onnxpress.ir.verify import check_structure
from onnxpress.passes.base import Context, Pass

Verify = Literal["off", "structure", "numeric"]

#: Samples used for numeric verification.
NUMERIC_SAMPLES = 2


@dataclass(frozen=True)
class PassRecord:
    """One pass run, as the report shows it."""

    name: str
    options: dict[str, Any]
    changed: bool
    seconds: float
    stats: dict[str, Any]
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int


@dataclass
class Report:
    """The records of a pipeline run, in order."""

    records: list[PassRecord] = field(default_factory=list)

    def names(self) -> list[str]:
        """Names of the passes that ran, in order."""
        return [r.name for r in self.records]

    def __getitem__(self, name: str) -> PassRecord:
        """The last record of the pass called `name`."""
        for record in reversed(self.records):
            if record.name == name:
                return record
        raise KeyError(name)

    def table(self) -> str:
        """A Markdown table: one row per pass."""
        rows = ["| pass | changed | time (s) | nodes | bytes | stats |",
                "|---|---|---:|---|---|---|"]
        for r in self.records:
            stats = ", ".join(f"{k}={_fmt(v)}" for k, v in r.stats.items())
            rows.append(f"| {r.name} | {'yes' if r.changed else 'no'} | {r.seconds:.3f} | "
                        f"{r.nodes_before} → {r.nodes_after} | {r.bytes_before:,} → "
                        f"{r.bytes_after:,} | {stats} |")
        return "\n".join(rows)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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

    def run(self, model: Model, ctx: Context, report: Report | None = None) -> Report:
        """Run every pass on `model` in place and return the report."""
        report = report if report is not None else Report()
        numeric = _NumericCheck(ctx) if self.verify == "numeric" else None
        for p in self.passes:
            self.run_one(p, model, ctx, report, numeric)
        return report

    def run_one(self, p: Pass, model: Model, ctx: Context, report: Report,
                numeric: _NumericCheck | None = None) -> PassRecord:
        """Run a single pass with the manager's bookkeeping and append its record."""
        where = f"pass '{p.name}'" + (f" (after {', '.join(report.names())})"
                                      if report.records else "")
        for instrument in self.instruments:
            instrument.before(p, model, ctx)
        nodes_before, bytes_before = len(model), model.nbytes
        start = time.perf_counter()
        try:
            p.requires(model, ctx)
            if numeric is not None and p.exact:
                numeric.remember(model)
            result = p.run(model, ctx)
        except OnnxpressError as e:
            raise type(e)(f"{where}: {e}") from e
        except Exception as e:
            raise PassError(f"{where} failed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - start
        if result.changed:
            model.invalidate(keep=p.preserves)
            if self.verify != "off":
                check_structure(model, after=p.name)
            if numeric is not None and p.exact:
                numeric.check(model, p)
            elif numeric is not None:
                numeric.forget()
        record = PassRecord(p.name, p.options(), result.changed, seconds, dict(result.stats),
                            nodes_before, len(model), bytes_before, model.nbytes)
        report.records.append(record)
        model.pipeline.append({"name": p.name, "options": record.options})
        for instrument in self.instruments:
            instrument.after(p, model, ctx, record)
        return record


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
