"""The ``onnxpress`` command: inspect, optimize, bench, compare and demo from a shell.

Each subcommand is a thin layer over the library (`load`, `optimize`, `benchmark`,
`compare`), so the CLI and the API cannot drift apart. Tables go to stdout and progress bars
to stderr, so stdout stays parseable when redirected. Every error a user can cause (a missing
or broken file, an unknown pass, data that does not fit) ends the command with exit status 2
and one line on stderr, ``onnxpress: error: …``; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import tempfile
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table

from onnxpress import demo
from onnxpress._version import __version__
from onnxpress.api import optimize
from onnxpress.errors import DataError, GuardError, OnnxpressError, SaveError
from onnxpress.ir import fidelity
from onnxpress.ir.io import check_destination, external_files, load
from onnxpress.ir.model import Model
from onnxpress.ir.scopes import iter_graphs
from onnxpress.passes.base import Context, Pass, resolve
from onnxpress.passes.calibrate import Calibrate
from onnxpress.passes.calibrate.calibrate import METHODS
from onnxpress.passes.quantize.sensitivity import MixedPrecision
from onnxpress.passes.sparsity.coupling import describe_groups
from onnxpress.recipes import RECIPE_TARGETS, RECIPES
from onnxpress.report import PassRecord, Report
from onnxpress.runtime.bench import benchmark
from onnxpress.runtime.compare import compare
from onnxpress.runtime.data import DataSource, as_data_source
from onnxpress.targets import TARGETS

#: Exit status of every error the user can cause (argparse uses 2 for usage errors too).
EXIT_ERROR = 2
#: Stats too long for a table cell, printed on their own lines below the report.
LONG_STATS = frozenset({"onnxruntime", "float_units", "measured", "kept_float"})
#: Random samples `compare` uses when no --data is given.
RANDOM_SAMPLES = 16


class _UsageError(Exception):
    """A command-line usage error, reported like any other user error."""


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises `_UsageError` instead of printing usage and exiting.

    This lets `main` print one line and return a status; subparsers inherit the class.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise `_UsageError` with argparse's message."""
        raise _UsageError(message)


class _Ui:
    """Where output goes: tables on stdout, progress bars (rich) on stderr.

    Calling the object is the progress protocol of `Context.progress`, `benchmark` and
    `compare`: ``ui(description, total)`` adds a bar and returns ``advance(n=1)``; a bar with a
    known total disappears when it is full.
    """

    def __init__(self) -> None:
        # No markup: tensor names and shapes such as "[batch, 1, 8, 8]" are printed verbatim.
        self.out = Console(file=sys.stdout, markup=False, highlight=False)
        self.err = Console(file=sys.stderr, markup=False, highlight=False)
        # Bars only on a terminal: redirected stderr gets errors and notes, not bar frames.
        self._bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(), console=self.err,
                              transient=True, disable=not self.err.is_terminal)

    def __enter__(self) -> _Ui:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def __call__(self, description: str, total: int | None = None) -> Callable[[int], None]:
        task = self._bars.add_task(description, total=total)
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            if total is not None and done >= total:
                self._bars.remove_task(task)
            else:
                self._bars.advance(task, n)

        return advance


class _PassProgress:
    """A PassManager instrument that shows which pass of the pipeline is running."""

    def __init__(self, ui: _Ui, total: int) -> None:
        self._advance = ui("optimize", total)

    def before(self, p: Pass, model: Model, ctx: Context) -> None:
        """Nothing to show before a pass; rich's spinner shows that work is under way."""

    def after(self, p: Pass, model: Model, ctx: Context, record: PassRecord) -> None:
        """Count a top-level pass as done (the passes a composite runs are part of it)."""
        if ctx.manager is None or ctx.manager.depth == 0:
            self._advance(1)


# --------------------------------------------------------------------------------------------
# Formatting
def _size(n: int) -> str:
    """Bytes in a human unit (KiB = 1024 B)."""
    if n < 1024:
        return f"{n:,} B"
    value, unit = n / 1024, 0
    while value >= 1024 and unit < 2:
        value, unit = value / 1024, unit + 1
    return f"{value:,.1f} {('KiB', 'MiB', 'GiB')[unit]}"


def _dtype(dtype: object) -> str:
    """A tensor dtype's numpy name, "?" when unknown."""
    if dtype is None:
        return "?"
    try:
        return np.dtype(dtype).name
    except TypeError:  # gs keeps types numpy lacks (bfloat16) as ONNX codes
        return (onnx.TensorProto.DataType.Name(dtype).lower() if isinstance(dtype, int)
                and dtype in onnx.TensorProto.DataType.values() else str(dtype))


def _shape(shape: Sequence | None) -> str:
    """``[batch, 1, 8, 8]``: dynamic dimensions by name, unknown ones as "?"."""
    if shape is None:
        return "?"
    dims = [d if isinstance(d, str) else str(d) if isinstance(d, int) and d >= 0 else "?"
            for d in shape]
    return "[" + ", ".join(dims) + "]"


def _report_table(report: Report) -> Table:
    """The optimize report: one row per pass run, and the nested runs that changed the model
    indented under their composite (as `Report.table`)."""
    table = Table("pass", "changed", "time (s)", "nodes", "bytes", "stats",
                  title="passes")
    for depth, r in report.walk():
        if depth and not r.changed:
            continue
        stats = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r.stats.items() if k not in LONG_STATS)
        table.add_row("· " * depth + r.name, "yes" if r.changed else "no", f"{r.seconds:.3f}",
                      f"{r.nodes_before} → {r.nodes_after}",
                      f"{_size(r.bytes_before)} → {_size(r.bytes_after)}", stats)
    return table


def _change(before: int, after: int) -> str:
    """``"147.2 KiB → 98.0 KiB (-33.4%)"``."""
    percent = f" ({(after - before) / before:+.1%})" if before else ""
    return f"{_size(before)} → {_size(after)}{percent}"


# --------------------------------------------------------------------------------------------
# Subcommands
def _inspect(args: argparse.Namespace, ui: _Ui) -> None:
    model = load(args.model)
    graphs = list(iter_graphs(model.graph))
    all_nodes = [n for g in graphs for n in g.nodes]
    nodes = f"{len(model)}" + (f" (+{len(all_nodes) - len(model)} in subgraphs)"
                               if len(all_nodes) > len(model) else "")
    facts = Table.grid(padding=(0, 2))
    for key, value in [
        ("file", f"{args.model} ({_size(Path(args.model).stat().st_size)})"),
        ("ir_version", str(model.ir_version)),
        ("opsets", ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(model.opsets.items()))),
        ("producer", " ".join(filter(None, [model.extra.get("producer_name"),
                                            model.extra.get("producer_version")])) or "?"),
        ("nodes", nodes),
    ]:
        facts.add_row(key, value)
    ui.out.print(facts)

    interface = Table("", "name", "dtype", "shape", title="inputs and outputs")
    for kind, tensors in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for t in tensors:
            # Old exporters list initializers as inputs too; they need not be fed.
            interface.add_row(f"{kind} (initializer)" if isinstance(t, gs.Constant) else kind,
                              t.name, _dtype(t.dtype), _shape(t.shape))
    ui.out.print(interface)

    ops = Counter(f"{n.domain}.{n.op}" if n.domain not in (None, "", "ai.onnx") else n.op
                  for n in all_nodes)
    histogram = Table("op", "count", title="ops (subgraphs included)")
    for op, count in sorted(ops.items(), key=lambda item: (-item[1], item[0])):
        histogram.add_row(op, str(count))
    ui.out.print(histogram)

    by_dtype: dict[str, list[int]] = {}
    for constant in model.constants():
        values = constant._values  # LazyValues or an array: unread weights stay unread
        entry = by_dtype.setdefault(_dtype(values.dtype), [0, 0, 0])
        entry[0] += 1
        entry[1] += int(np.prod(values.shape, dtype=np.int64))
        entry[2] += fidelity.nbytes(constant)
    params = Table("dtype", "tensors", "parameters", "bytes",
                   title="parameters (initializers of the main graph)")
    for name, (tensors, size, nbytes) in sorted(by_dtype.items()):
        params.add_row(name, str(tensors), f"{size:,}", _size(nbytes))
    totals = [sum(v[i] for v in by_dtype.values()) for i in range(3)]
    params.add_row("total", str(totals[0]), f"{totals[1]:,}", _size(totals[2]), style="bold")
    ui.out.print(params)
    if args.prunable:
        ui.out.print("channel groups (prune-channels):")
        for line in describe_groups(model):
            ui.out.print(f"  {line}")


def _optimize(args: argparse.Namespace, ui: _Ui) -> None:
    source, out = Path(args.model), Path(args.output)
    if out.resolve() == source.resolve() and not args.overwrite:
        raise SaveError(f"{out}: this is the input model; write elsewhere or pass --overwrite")
    passes = ([p.strip() for p in args.passes.split(",") if p.strip()] if args.passes
              else RECIPES[args.recipe])
    if not passes:
        raise _UsageError("--passes: give at least one pass name (see onnxpress.passes)")
    passes = [_guard_options(_calibration_options(resolve(p), args), args) for p in passes]
    _check_writes(source, out, args, passes)
    target = args.target or RECIPE_TARGETS.get(args.recipe if not args.passes else "", "cpu")
    model = optimize(source, passes, data=args.data, target=target, verify=args.verify,
                     instruments=[_PassProgress(ui, len(passes))], progress=ui,
                     calibration=args.calibration_table)
    size_before = source.stat().st_size  # before saving: OUT may be MODEL (--overwrite)
    model.save(out, overwrite=args.overwrite)
    ui.out.print(_report_table(model.report))
    for record in model.report.records:
        for key in sorted(LONG_STATS & record.stats.keys()):
            ui.out.print(f"{record.name}: {key}: {record.stats[key]}")
    ui.out.print(f"wrote {out}: {_change(size_before, out.stat().st_size)}")


def _check_writes(source: Path, out: Path, args: argparse.Namespace,
                  passes: Sequence[Pass]) -> None:
    """Refuse, before any work, a write over a file the run reads or writes elsewhere.

    The output, and every calibration table a calibrate pass will save, must not be the input
    model (except the output with --overwrite), a file the input reads (its external data),
    the data given with --data, another file of this run, a folder or a device.
    """
    reads = [(f, "a file the input model reads (its external data)")
             for f in external_files(source)]
    if args.data:
        data = Path(args.data)
        files = sorted(data.glob("*.npy")) if data.is_dir() else [data]
        reads += [(f, "the data given with --data") for f in files]
    if args.calibration_table:
        reads.append((Path(args.calibration_table), "the table given with --calibration-table"))
    tables = [Path(p.save) for p in passes if isinstance(p, Calibrate) and p.save is not None]
    written: list[tuple[Path, str]] = [(out, "the output model (-o)")]
    for table in tables:
        check_destination(table, [(source, "the input model"), *reads, *written])
        written.append((table, "another calibration table of this run"))
    check_destination(out, reads + [(t, "a calibration table of this run") for t in tables])


def _calibration_options(p: Pass, args: argparse.Namespace) -> Pass:
    """Apply --calibration / --save-calibration to a calibrate pass; others pass through."""
    if not isinstance(p, Calibrate):
        return p
    changes = {"method": args.calibration} if args.calibration else {}
    if args.save_calibration:
        changes["save"] = args.save_calibration
    return dataclasses.replace(p, **changes)


def _guard_options(p: Pass, args: argparse.Namespace) -> Pass:
    """Apply --allow-slower to the guarded int8 pass (mixed-precision); others pass through."""
    if isinstance(p, MixedPrecision) and args.allow_slower:
        return dataclasses.replace(p, allow_slower=True)
    return p


def _bench(args: argparse.Namespace, ui: _Ui) -> None:
    models = [load(path) for path in args.models]  # fail on a bad file before timing anything
    data = as_data_source(args.data) if args.data else None
    results = [benchmark(model, data if data is not None else _random(model, args.batch),
                         threads=args.threads, warmup=args.warmup, runs=args.runs,
                         batch_size=args.batch, progress=ui)
               for model in models]
    first = results[0]
    table = Table(Column("model", overflow="fold"), "size", "median (ms)", "p90 (ms)",
                  "samples/s", "speed-up", title="latency, side by side",
                  caption=f"batch {first.batch_size}, {first.threads} intra-op threads, median "
                          f"of {first.runs} runs after {args.warmup} warm-up; speed-up = first "
                          "model's median / this median")
    for path, r in zip(args.models, results, strict=True):
        table.add_row(str(path), _size(Path(path).stat().st_size), f"{r.median_ms:.3f}",
                      f"{r.p90_ms:.3f}", f"{r.throughput:,.0f}",
                      f"{first.median_ms / r.median_ms:.2f}×")
    ui.out.print(table)


def _compare(args: argparse.Namespace, ui: _Ui) -> None:
    if args.labels and not args.data:
        raise DataError("--labels needs --data: the labels belong to the samples of a data file")
    reference = load(args.reference)
    if args.data:
        data = args.data
    else:
        data = _random(reference, RANDOM_SAMPLES)
        ui.err.print(f"note: comparing on {RANDOM_SAMPLES} random samples; give --data for "
                     "real inputs")
    labels = _labels(Path(args.labels)) if args.labels else None
    result = compare(reference, args.candidate, data, labels=labels, progress=ui)
    ui.out.print(result.table())


def _random(model: Model, n: int) -> DataSource:
    """`n` random samples for `model`, or an error that says which option gives real ones."""
    try:
        return DataSource.random(model, n=n)
    except DataError as e:
        raise DataError(f"{e}; on the command line, give inputs with --data FILE") from None


def _labels(path: Path) -> np.ndarray:
    """Labels from a .npy file (missing files raise FileNotFoundError like any other)."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file of labels ({e})") from None
    if not isinstance(labels, np.ndarray):
        raise DataError(f"{path}: holds several arrays; give one .npy array of labels")
    return labels


def _demo(args: argparse.Namespace, ui: _Ui) -> None:
    original = demo.model_path()
    test, labels = demo.test_data(), demo.test_labels()
    table = Table("variant", "size", "nodes", "ms @1", "ms @64", "top-1", "agree",
                  title="digits CNN: original vs each recipe (onnxpress.recipes)")
    recipes = {name: passes for name, passes in RECIPES.items()
               if name not in RECIPE_TARGETS}  # made for another backend: not measurable here
    step = ui("demo", len(recipes) + 3 * (len(recipes) + 1))
    refused: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="onnxpress-demo-") as tmp:
        variants = [("fp32 original", original)]
        for name, passes in recipes.items():
            path = Path(tmp) / f"digits.{name}.onnx"
            try:
                optimize(original, passes, data=demo.calibration_data(), progress=ui).save(path)
                variants.append((name, path))
            except GuardError as e:  # the guard refused: show why instead of a number
                refused[name] = str(e)
            step(1 + 3 * (name in refused))
        for name, path in variants:
            result = compare(original, path, test, labels=labels)
            step(1)
            latency = []
            for batch in (1, 64):
                latency.append(benchmark(path, test, runs=args.runs, batch_size=batch,
                                         progress=ui))
                step(1)
            table.add_row(name, _size(path.stat().st_size), str(len(load(path))),
                          f"{latency[0].median_ms:.3f}", f"{latency[1].median_ms:.3f}",
                          f"{result.candidate_accuracy:.2%}",
                          f"{result[0].top1_agreement:.2%}")
        for name in refused:
            table.add_row(name, "refused by its guard (below)", "", "", "", "", "")
    table.caption = (f"top-1: accuracy on the {len(test)} test images; agree: same top-1 "
                     f"class as the original; ms @N: median latency at batch N over "
                     f"{args.runs} runs, {latency[0].threads} intra-op threads, onnxruntime "
                     f"{ort.__version__} on CPU (compare ratios, not absolute times)")
    ui.out.print(table)
    for name, reason in refused.items():
        ui.out.print(f"{name}: {reason}")


# --------------------------------------------------------------------------------------------
# Command line
def _positive(text: str) -> int:
    """Parse an integer >= 1 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _count(text: str) -> int:
    """Parse an integer >= 0 (an argparse type)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got '{text}'")
    return int(text)


def _parser() -> _ArgumentParser:
    """The command line: global options and one subparser per command."""
    # --debug works before or after the subcommand; SUPPRESS keeps a subcommand from
    # resetting a --debug given before it.
    common = _ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of errors")
    parser = _ArgumentParser(prog="onnxpress", parents=[common],
                             description="Make ONNX models smaller and faster.")
    parser.add_argument("--version", action="version", version=f"onnxpress {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("inspect", parents=[common], help="describe a model")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--prunable", action="store_true",
                   help="also list the coupled channel groups prune-channels would see")
    p.set_defaults(run=_inspect)

    p = commands.add_parser("optimize", parents=[common], help="run passes and save the result")
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("-o", "--output", required=True, help="where to write the optimized model")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--passes", help="comma-separated pass names, e.g. cleanup")
    which.add_argument("--recipe", choices=sorted(RECIPES), default="cleanup",
                       help="a named pass list (default: cleanup)")
    p.add_argument("--data", help="sample inputs: a .npz file or a folder of .npy files")
    p.add_argument("--target", choices=sorted(TARGETS),
                   help="backend to compile for (default: the recipe's, else cpu)")
    p.add_argument("--calibration", choices=sorted(METHODS),
                   help="range method of the calibrate pass (default: the recipe's)")
    p.add_argument("--save-calibration", metavar="FILE",
                   help="also write the calibration table as JSON")
    p.add_argument("--calibration-table", metavar="FILE",
                   help="reuse a calibration table (onnxpress JSON or a TensorRT cache): "
                        "calibrate then measures only the tensors it lacks")
    p.add_argument("--allow-slower", action="store_true",
                   help="keep an int8 result even if it runs slower than the float model")
    p.add_argument("--verify", choices=["off", "structure", "numeric"], default="structure")
    p.add_argument("--overwrite", action="store_true",
                   help="allow OUTPUT to be the input model")
    p.set_defaults(run=_optimize)

    p = commands.add_parser("bench", parents=[common], help="time models side by side")
    p.add_argument("models", nargs="+", metavar="MODEL", help="ONNX model files")
    p.add_argument("--batch", type=_positive, default=1, help="samples per run (default 1)")
    p.add_argument("--runs", type=_positive, default=100, help="timed runs (default 100)")
    p.add_argument("--warmup", type=_count, default=10, help="untimed runs (default 10)")
    p.add_argument("--threads", type=_positive, help="intra-op threads (default: onnxruntime's)")
    p.add_argument("--data", help="inputs: a .npz file or a folder of .npy (default: random)")
    p.set_defaults(run=_bench)

    p = commands.add_parser("compare", parents=[common], help="how far CAND's outputs are "
                                                              "from REF's")
    p.add_argument("reference", metavar="REF", help="reference ONNX model")
    p.add_argument("candidate", metavar="CAND", help="candidate ONNX model")
    p.add_argument("--data", help="inputs: a .npz file or a folder of .npy (default: random)")
    p.add_argument("--labels", help="a .npy of integer labels, one per sample of --data")
    p.set_defaults(run=_compare)

    p = commands.add_parser("demo", parents=[common],
                            help="optimize the embedded digits model and compare")
    p.add_argument("--runs", type=_positive, default=200, help="timed runs per latency")
    p.set_defaults(run=_demo)
    return parser


def _one_line(error: BaseException) -> str:
    """The error as one readable line (OSError's repr-like message made plain)."""
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return f"{error.filename}: no such file"
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run the ``onnxpress`` command line and return its exit status.

    Args:
        argv: The arguments after the program name; None reads `sys.argv`.

    Returns:
        0 on success, 2 on any error the user can fix (one line on stderr).
    """
    args = None
    previous = _terminate_on_sigterm()
    try:
        args = _parser().parse_args(argv)
        with _Ui() as ui:
            args.run(args, ui)
        return 0
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except (_UsageError, OnnxpressError, OSError) as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"onnxpress: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("onnxpress: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("onnxpress: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` blocks (a save's staging cleanup)
    run; Python's default action would end the process without them."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _terminate_on_sigterm() -> Any:
    """Turn SIGTERM into `_Terminated`; return the previous handler (None off the main thread,
    where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
