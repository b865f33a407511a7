"""Measuring side by side on a shared machine: what the benchmark scripts have in common.

Every script compares models (or tools) on one machine that other processes may share, so
they all need the same few things:

- the machine facts printed above their tables (`cpu_model`, `load_average`, `utc_now`);
- the cost of a job in a fresh process: `run_child` starts the script again with
  ``--child``, the child measures its job inside `measured` (wall time and peak
  resident-memory growth) and hands the numbers back with `reply`;
- interleaved latency: `warm_up` every session, then `time_rounds` lets them take turns, so a
  busy phase of the machine lands on all of them alike. How many calls a turn has and how
  many turns there are is each script's choice (its docstring says which);
- Markdown: `markdown_table`, and `write_section`, which replaces a script's part of
  RESULTS.md between its markers and leaves the hand-written text around it alone;
- `parse_args`, whose ``--quick`` makes a script a smoke test.

Only the standard library and numpy are imported here: a child's memory growth is counted
from after its imports, so importing onnxruntime or onnxpress here would change what the
children of `calibration.py` and `quantization.py` measure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
#: Prefix of the line in which a child process hands its result back.
RESULT_PREFIX = "RESULT "


# --------------------------------------------------------------------------------------------
# Machine facts
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo.

    Returns:
        The first "model name" in /proc/cpuinfo, "unknown" if it has none, and
        `platform.processor()` (or "unknown") where the file cannot be read (not Linux).
    """
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), "unknown")


def load_average() -> float | None:
    """The 1-minute load average, or None where the system does not report one."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def utc_now() -> str:
    """The current date and time to the minute, as ``YYYY-MM-DD HH:MM UTC``."""
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"


# --------------------------------------------------------------------------------------------
# The cost of a job in a fresh process
def _status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None without one."""
    try:
        match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    """Reset the resident high-water mark (Linux ≥ 4.0); False if that is unavailable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


@dataclass
class Cost:
    """What a job cost, as `measured` finds it.

    Attributes:
        seconds: Wall time.
        peak_mib: Peak resident-memory growth, in MiB (never negative).
    """

    seconds: float = math.nan
    peak_mib: float = math.nan


@contextlib.contextmanager
def measured() -> Iterator[Cost]:
    """Measure the wall time and peak resident-memory growth of the ``with`` block.

    Memory growth is the kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs
    on entry) at the end minus the resident size on entry. Unlike tracemalloc it counts native
    allocations, such as onnxruntime's. Without the reset (not Linux) the process-lifetime
    ``ru_maxrss`` stands in for the high-water mark, which can only overstate the growth.
    Meant for a fresh process, entered after its imports and data loading. An exception in
    the block propagates and leaves the cost unmeasured: catch it inside the block.

    Yields:
        The `Cost`, filled in when the block ends.
    """
    cost = Cost()
    exact = _reset_peak()
    before = _status_kib("VmRSS") or 0
    start = time.perf_counter()
    yield cost
    cost.seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cost.peak_mib = max(peak - before, 0) / 1024


@dataclass(frozen=True)
class Child:
    """How a child process ended.

    Attributes:
        result: What the child passed to `reply`; None if it passed nothing.
        returncode: Its exit status.
        stderr_tail: The last line of its stderr ("" if it wrote none).
    """

    result: Any
    returncode: int
    stderr_tail: str


def run_child(script: str | Path, job: object, *, cwd: str | Path) -> Child:
    """Run ``python script --child JSON`` in a fresh interpreter and wait for it.

    A fresh process inherits neither the parent's heap, nor onnxruntime's arenas, nor warm
    caches, so what it measures is the job's own cost.

    Args:
        script: The script to run; its ``--child`` option must run the job and `reply`.
        job: Its arguments, JSON-serializable.
        cwd: The working directory (tools that drop temporary files there leave them in it).

    Returns:
        Its result, exit status and last line of stderr.
    """
    done = subprocess.run([sys.executable, str(Path(script).resolve()), "--child",
                           json.dumps(job)], capture_output=True, text=True, cwd=cwd,
                          check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return Child(json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else None,
                 done.returncode, (done.stderr.strip().splitlines() or [""])[-1])


def reply(result: object) -> None:
    """Hand `result` (JSON-serializable) back to the parent waiting in `run_child`."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# Interleaved latency
def warm_up(sessions: Mapping[Hashable, Any], feed: dict, runs: int,
            statistic: Callable[[list[float]], float] = np.median) -> dict[Hashable, float]:
    """Run every session `runs` times, one session after the other, and estimate its speed.

    Args:
        sessions: Name → onnxruntime session (anything with ``run(None, feed)``).
        feed: The inputs of every call.
        runs: Calls per session.
        statistic: How the later half of a session's calls (the first ones allocate) makes
            its estimate.

    Returns:
        Name → estimated seconds per call (0.0 with no runs).
    """
    estimates = {}
    for name, sess in sessions.items():
        later = []
        for i in range(runs):
            start = time.perf_counter()
            sess.run(None, feed)
            if i >= runs // 2:
                later.append(time.perf_counter() - start)
        estimates[name] = float(statistic(later)) if later else 0.0
    return estimates


def time_rounds(sessions: Mapping[Hashable, Any], feed: dict,
                rounds: int | Mapping[Hashable, int], *,
                blocks: Mapping[Hashable, int] | None = None, shuffle: bool = True,
                settle: bool = False) -> dict[Hashable, np.ndarray]:
    """Time the sessions' ``run`` calls in rounds, the sessions taking turns.

    In every round each session has its turn: a block of consecutive timed calls. Turns of
    different sessions are close in time, so a slow phase of the machine (another process, a
    frequency change) lands on all of them alike. Only ``run`` is timed.

    Args:
        sessions: Name → warmed-up onnxruntime session (anything with ``run(None, feed)``).
        feed: The inputs of every call.
        rounds: Rounds, for all sessions or per session. A session with fewer rounds than the
            most has its turns spread evenly over all rounds.
        blocks: Timed calls per turn, per session (default 1 each).
        shuffle: Take turns in a fresh random order every round (seed 0); False rotates the
            order by one session per round.
        settle: Start a turn of several calls with one untimed call: onnxruntime's intra-op
            threads keep spinning for a while after a run and would steal the CPU from the
            first call of the next session.

    Returns:
        Name → seconds of each of its timed calls, in the order they were made.
    """
    names = list(sessions)
    own = dict(rounds) if isinstance(rounds, Mapping) else dict.fromkeys(names, rounds)
    blocks = dict(blocks) if blocks is not None else dict.fromkeys(names, 1)
    total = max(own.values())
    times: dict[Hashable, list[float]] = {name: [] for name in names}
    rng = np.random.default_rng(0)
    for r in range(total):
        order = ([names[k] for k in rng.permutation(len(names))] if shuffle
                 else names[r % len(names):] + names[:r % len(names)])
        for name in order:
            if r and r * own[name] // total == (r - 1) * own[name] // total:
                continue  # not this session's round: it has fewer of its own
            sess, record = sessions[name], times[name]
            if settle and blocks[name] > 1:
                sess.run(None, feed)
            for _ in range(blocks[name]):
                start = time.perf_counter()
                sess.run(None, feed)
                record.append(time.perf_counter() - start)
    return {name: np.array(record) for name, record in times.items()}


# --------------------------------------------------------------------------------------------
# Markdown and RESULTS.md
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                   align: str = "") -> str:
    """A Markdown table.

    Args:
        headers: Column titles ("" for none).
        rows: Cells; a short row is padded with empty cells.
        align: One letter per column, "r" for right-aligned; other letters, and columns
            beyond the string, are left-aligned.

    Returns:
        The table's lines, without a trailing newline.
    """
    width = len(headers)
    lines = ["|" + "".join(f" {header} |" if header else " |" for header in headers),
             "|" + "".join("---:|" if a == "r" else "---|" for a in align.ljust(width, "l"))]
    lines += ["| " + " | ".join([*row, *[""] * (width - len(row))]) + " |" for row in rows]
    return "\n".join(lines)


def write_section(heading: str, script: str, markdown: str, results: Path = RESULTS) -> None:
    """Put `markdown` in `script`'s part of RESULTS.md.

    The part lies between ``<!-- benchmarks/<script>: begin -->`` and ``... end -->``; the
    first time, the markers go right under `heading` or, without it, in a new section at the
    end. Every other section, and any text outside the markers (the hand-written
    interpretation), stays as it is. The file is replaced atomically.

    Args:
        heading: The section's heading line, e.g. ``"## Sparsity"``.
        script: The script's file name, e.g. ``"sparsity.py"``.
        markdown: The new text between the markers.
        results: The file to update.
    """
    begin, end = f"<!-- benchmarks/{script}: begin -->", f"<!-- benchmarks/{script}: end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    elif heading in text:
        at = text.index(heading) + len(heading)
        text = text[:at] + "\n\n" + block + "\n" + text[at:]
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    tmp = results.with_name(f"{results.name}.{Path(script).stem}-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, results)


# --------------------------------------------------------------------------------------------
# Command line
def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               **quick: object) -> argparse.Namespace:
    """Parse `argv`, adding a ``--quick`` option that makes the script a smoke test.

    Args:
        parser: The script's parser, without ``--quick``.
        argv: The arguments (None: ``sys.argv[1:]``).
        **quick: Defaults ``--quick`` sets, by option destination (e.g. ``runs=3``); options
            given explicitly still win.

    Returns:
        The parsed options; ``quick`` tells whether ``--quick`` was given.
    """
    settings = ", ".join(
        f"--{name.replace('_', '-')} "
        + (" ".join(map(str, value)) if isinstance(value, list) else str(value))
        for name, value in quick.items())
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: few runs on little data"
                             + (f" ({settings})" if settings else "")
                             + "; the numbers mean nothing; prints, never writes RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick and quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def ort_reader(feeds: Sequence[Mapping[str, np.ndarray]]):
    """An onnxruntime `CalibrationDataReader` over `feeds` (rewindable), for its quantizers."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self):
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

    return Reader()
