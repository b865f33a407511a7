"""`Report` and `PassRecord`: what a pipeline run did, pass by pass, nested.

A record holds one pass run: its options, whether it changed the model, its time and stats,
and the model's node count and bytes before and after. A composite pass (`cleanup`, `fuse`,
a search such as `mixed-precision`) runs its children through the same entry point as any
top-level pass, so its record holds theirs as ``children``: the report is a tree whose roots
are the passes the user asked for. It is a leaf module so that the IR (`Model.report`) can
name it without importing the pass layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from numbers import Real
from typing import Any


@dataclass(frozen=True)
class PassRecord:
    """One pass run, as the report shows it; `children` are the runs it made itself."""

    name: str
    options: dict[str, Any]
    changed: bool
    seconds: float
    stats: dict[str, Any]
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int
    children: tuple[PassRecord, ...] = ()
    #: The checks run after the pass: "numeric" (outputs compared with onnxruntime; implies
    #: structure), "structure", or "" (nothing changed, verification off, or a composite
    #: whose children were each checked).
    verified: str = ""

    def walk(self) -> Iterator[tuple[int, PassRecord]]:
        """This record and every descendant, depth first, with its depth (0 for this one)."""
        yield 0, self
        for child in self.children:
            for depth, record in child.walk():
                yield depth + 1, record

    def descendants(self, name: str) -> list[PassRecord]:
        """The nested runs of the pass called `name`, in order."""
        return [r for depth, r in self.walk() if depth and r.name == name]

    def totals(self) -> dict[str, float]:
        """Numeric stats of every nested run summed as ``"<pass>.<key>"`` (zeros left out).

        A sum is the right summary for counts of work done (folds, rewrites); a stat that
        describes the model instead (``kept_nd``) is read from the last run
        (``descendants(name)[-1]``).
        """
        sums: dict[str, float] = {}
        for depth, record in self.walk():
            for key, value in record.stats.items():
                if depth and isinstance(value, Real) and not isinstance(value, bool):
                    name = f"{record.name}.{key}"
                    sums[name] = sums.get(name, 0) + value
        return {k: v for k, v in sums.items() if v}


@dataclass
class Report:
    """The records of a pipeline run, in order (nested runs inside their parents)."""

    records: list[PassRecord] = field(default_factory=list)

    def names(self) -> list[str]:
        """Names of the top-level passes that ran, in order."""
        return [r.name for r in self.records]

    def walk(self) -> Iterator[tuple[int, PassRecord]]:
        """Every record, nested ones included, depth first, with its nesting depth."""
        for record in self.records:
            yield from record.walk()

    def __getitem__(self, name: str) -> PassRecord:
        """The last top-level record of the pass called `name` (else the last nested one)."""
        for record in reversed(self.records):
            if record.name == name:
                return record
        for _, record in reversed(list(self.walk())):
            if record.name == name:
                return record
        raise KeyError(name)

    def table(self) -> str:
        """A Markdown table: one row per top-level pass run, and below it, indented, each
        nested run that changed the model (the ones that found nothing to do are left out)."""
        rows = ["| pass | changed | time (s) | nodes | bytes | stats |",
                "|---|---|---:|---|---|---|"]
        for depth, r in self.walk():
            if depth and not r.changed:
                continue
            stats = ", ".join(f"{k}={_fmt(v)}" for k, v in r.stats.items())
            name = "· " * depth + r.name
            rows.append(f"| {name} | {'yes' if r.changed else 'no'} | {r.seconds:.3f} | "
                        f"{r.nodes_before} → {r.nodes_after} | {r.bytes_before:,} → "
                        f"{r.bytes_after:,} | {stats} |")
        return "\n".join(rows)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
