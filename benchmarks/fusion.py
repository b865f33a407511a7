"""Fusion side by side: the original model vs ``onnxpress.optimize(path, ["fuse"])``.

    python benchmarks/fusion.py                        # both models, 3-5 minutes on 2 cores
    python benchmarks/fusion.py --only digits          # under a minute
    python benchmarks/fusion.py --runs 50 --no-control # quicker, noisier
    python benchmarks/fusion.py --quick                # smoke test: 5 runs per session

Two models, one Markdown table each, everything measured in this one process:

- **digits**: the embedded residual CNN (``onnxpress.demo``), batches of 1 and 64 test images;
- **MiniLM**: all-MiniLM-L6-v2 exported by ``models/minilm.py`` (built on first run if
  ``models/build/minilm.onnx`` is missing), batches of 1 and 32 sentences of the evaluation
  set, tokenized with padding to the longest sentence of the batch.

Each table shows, for the original and the fused model and their ratio fused / original:

- graph size: node count, a histogram of the ops fusion creates or removes (and of Constant
  nodes, which cleanup turns into initializers), file size;
- what onnxruntime makes of each graph: the node count of the graph it optimized at
  ORT_ENABLE_BASIC and at ORT_ENABLE_ALL (saved through ``SessionOptions.optimized_model_filepath``
  into a temporary directory), and the fused ops it created at ORT_ENABLE_ALL — so a reader
  sees whether our fusion still matters once onnxruntime fuses too;
- latency (median and p90 of ``session.run``) with onnxruntime's CPU provider at
  ORT_ENABLE_BASIC and at ORT_ENABLE_ALL, `THREADS` intra-op threads, and a noise floor: the
  same ratios for a second, independent session of the original model (an A/A test);
- accuracy: digits top-1 on the whole test split for both models (must be equal) and the
  MiniLM sentence-embedding cosine fused vs original, min and mean over the 256 evaluation
  sentences, with the graphs run as written (ORT_DISABLE_ALL: our rewrite alone) and at
  ORT_ENABLE_ALL (what a deployment runs).

Fairness of the latency numbers: all sessions of one batch size (original / fused / original
again × BASIC / ALL) are created up front and warmed up, then take turns run by run in a
random order per pass (`latency_rows`), so machine noise (another process, a frequency
change) lands on all of them alike. Only ``session.run`` is timed; the feeds are built once.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import common
import minilm_data
import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(common.ROOT))  # the checkout's onnxpress, even when another one is installed

import onnxpress
from onnxpress import demo
from onnxpress.runtime.session import LEVELS, session

THREADS = 2
#: Ops whose counts show what fusion did (and Constant, which cleanup turns into initializers).
HISTOGRAM_OPS = ("LayerNormalization", "Gelu", "BatchNormalization", "Gemm", "MatMul", "Erf",
                 "ReduceMean", "Constant")
#: Default-domain ops listed among onnxruntime's fusions (its contrib ops, e.g. FusedMatMul,
#: BiasGelu, FusedConv, NCHWc Conv, are recognised by their non-default domain).
ORT_FUSED_DEFAULT_OPS = ("LayerNormalization", "Gelu")


# ------------------------------------------------------------------------------------------
# Machine and models
def machine_facts() -> str:
    """CPU model, cores, versions and date, as Markdown bullet points."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "\n".join([
        (f"- CPU: {common.cpu_model()}; {os.cpu_count()} logical cores ({usable} usable by "
         "this process)"),
        (f"- onnxruntime {ort.__version__} (CPUExecutionProvider), onnx {onnx.__version__}, "
         f"onnxpress {onnxpress.__version__}, Python {platform.python_version()}"),
        f"- {THREADS} intra-op threads, 1 inter-op thread",
        f"- date: {common.utc_now()}",
    ])


def op_histogram(proto: onnx.ModelProto, qualified: bool = False) -> collections.Counter:
    """Op types of the main graph's nodes; with `qualified`, "op (domain)" outside ai.onnx."""
    return collections.Counter(
        f"{node.op_type} ({node.domain})" if qualified and node.domain not in ("", "ai.onnx")
        else node.op_type for node in proto.graph.node)


def ort_optimized(model_bytes: bytes, level: str, workdir: Path) -> collections.Counter:
    """Op histogram of the graph onnxruntime runs at `level`, saved through SessionOptions."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the "hardware-specific optimizations" warning is expected
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = LEVELS[level]
    path = workdir / f"ort_{level}_{time.monotonic_ns()}.onnx"
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    histogram = op_histogram(onnx.load(str(path), load_external_data=False), qualified=True)
    path.unlink()
    return histogram


# ------------------------------------------------------------------------------------------
# Latency
def latency_rows(original: bytes, fused: bytes, feed: dict, label: str, args) -> list[list[str]]:
    """Median and p90 rows, per onnxruntime level, for one batch size.

    After `args.warmup` untimed runs each, the sessions take turns run by run: every pass
    times one ``run`` of each session, in a fresh random order (fixed seed). Consecutive
    samples of different sessions are milliseconds apart, so a slow phase of the machine hits
    them all, and no session always follows the same one (whose caches and threads it would
    inherit). There are `args.runs` passes, more if needed for each session to get about
    `args.min_seconds` of timed runs (estimated from the slowest session's warm-up median): a
    model that runs in microseconds then gets thousands of samples for the same wall time.

    With `args.control`, a second, independent session of the original model takes its turns
    with the others; its median over the first session's, in the last column, is the noise floor of
    the ratios (an A/A test: a fused / original ratio this far from 1 is not the model's doing).

    Medians get two ratios: the ratio of the medians, and "paired", the median of the
    per-pass ratios ``fused[i] / original[i]`` of runs made back to back, which cancels slow
    phases of the machine more tightly when the two disagree.
    """
    kinds = [("original", original), ("fused", fused)]
    if args.control:
        kinds.append(("original again", original))
    sessions = {(kind, level): session(model, "cpu", threads=THREADS, optimize=level)
                for level in ("basic", "all") for kind, model in kinds}
    slowest = max(common.warm_up(sessions, feed, args.warmup).values())
    n = max(args.runs, int(args.min_seconds / slowest) if slowest else args.runs)
    times = common.time_rounds(sessions, feed, n)  # one run per session and pass: paired by index
    rows = [[f"{label}: timed runs per model and level", str(n), str(n), ""]]
    for level, level_name in (("basic", "ORT_ENABLE_BASIC"), ("all", "ORT_ENABLE_ALL")):
        t0, t1 = times["original", level], times["fused", level]
        a, b = float(np.median(t0)) * 1e3, float(np.median(t1)) * 1e3
        row = [f"{label}, {level_name}, median ms", f"{a:.3f}", f"{b:.3f}",
               f"**{b / a:.3f}** (paired {np.median(t1 / t0):.3f})"]
        if args.control:
            t2 = times["original again", level]
            row.append(f"{np.median(t2) / np.median(t0):.3f} (paired {np.median(t2 / t0):.3f})")
        rows.append(row)
        a, b = float(np.percentile(t0, 90)) * 1e3, float(np.percentile(t1, 90)) * 1e3
        row = [f"{label}, {level_name}, p90 ms", f"{a:.3f}", f"{b:.3f}", f"{b / a:.3f}"]
        if args.control:
            row.append(f"{np.percentile(times['original again', level], 90) * 1e3 / a:.3f}")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------
# Tables
def fuse(path: Path, workdir: Path) -> tuple[Path, float]:
    """``onnxpress.optimize(path, ["fuse"])`` saved into `workdir`: its path, the pass's seconds."""
    start = time.perf_counter()
    fused_model = onnxpress.optimize(path, ["fuse"])
    seconds = time.perf_counter() - start
    fused_path = workdir / f"{path.stem}.fused.onnx"
    fused_model.save(fused_path)
    return fused_path, seconds


def structure_rows(original_path: Path, fused_path: Path, workdir: Path) -> list[list[str]]:
    """Node counts, op histogram, file size and onnxruntime's optimized graphs."""
    original, fused = onnx.load(str(original_path)), onnx.load(str(fused_path))
    original_size, fused_size = original_path.stat().st_size, fused_path.stat().st_size
    original_bytes, fused_bytes = original_path.read_bytes(), fused_path.read_bytes()
    h0, h1 = op_histogram(original), op_histogram(fused)
    rows = [["nodes", str(sum(h0.values())), str(sum(h1.values())),
             ratio(sum(h1.values()), sum(h0.values()))]]
    domains = {node.op_type: node.domain for proto in (original, fused)
               for node in proto.graph.node if node.domain not in ("", "ai.onnx")}
    rows += [[f"· {op}" + (f" ({domains[op]})" if op in domains else ""), str(h0[op]),
              str(h1[op]), ""] for op in HISTOGRAM_OPS]
    rows.append(["file size (bytes)", f"{original_size:,}", f"{fused_size:,}",
                 ratio(fused_size, original_size)])
    ort_all = {}
    for level, level_name in (("basic", "ORT_ENABLE_BASIC"), ("all", "ORT_ENABLE_ALL")):
        g0 = ort_optimized(original_bytes, level, workdir)
        g1 = ort_optimized(fused_bytes, level, workdir)
        rows.append([f"nodes after onnxruntime's {level_name}", str(sum(g0.values())),
                     str(sum(g1.values())), ratio(sum(g1.values()), sum(g0.values()))])
        if level == "all":
            ort_all = (g0, g1)
    g0, g1 = ort_all
    for op in sorted(set(g0) | set(g1)):
        if op in ORT_FUSED_DEFAULT_OPS or op.endswith(")"):
            rows.append([f"· {op} after ORT_ENABLE_ALL", str(g0[op]), str(g1[op]), ""])
    return rows


def ratio(a: float, b: float) -> str:
    """`a / b` to three decimals, "—" when `b` is 0."""
    return f"{a / b:.3f}" if b else "—"


def markdown(title: str, rows: list[list[str]]) -> str:
    """One Markdown table under a ``###`` title; short rows are padded with empty cells."""
    return f"### {title}\n\n" + common.markdown_table(
        ["", "original", "fused", "fused / original", "noise floor: original, 2nd session / 1st"],
        rows, "lrrrr")


# ------------------------------------------------------------------------------------------
# The two models
def bench_digits(workdir: Path, args) -> str:
    """The digits CNN's table: structure, latency at batch 1 and 64, top-1 accuracy."""
    path = demo.model_path()
    fused_path, _ = fuse(path, workdir)
    original_bytes, fused_bytes = path.read_bytes(), fused_path.read_bytes()
    rows = structure_rows(path, fused_path, workdir)

    images = next(iter(demo.test_data().batches(10**9)))["input"]
    labels = demo.test_labels()
    for batch in (1, 64):
        feed = {"input": np.ascontiguousarray(images[:batch])}
        rows += latency_rows(original_bytes, fused_bytes, feed, f"batch {batch}", args)

    for level, level_name in (("off", "graph as written"), ("all", "ORT_ENABLE_ALL")):
        logits = [session(m, "cpu", threads=THREADS, optimize=level).run(None,
                                                                         {"input": images})[0]
                  for m in (original_bytes, fused_bytes)]
        acc = [float((out.argmax(1) == labels).mean()) for out in logits]
        agree = float((logits[0].argmax(1) == logits[1].argmax(1)).mean())
        err = float(np.abs(logits[0] - logits[1]).max())
        rows.append([f"top-1 accuracy, {len(labels)} test images ({level_name})",
                     f"{acc[0]:.4f}", f"{acc[1]:.4f}",
                     f"agreement {agree:.4f}; max \\|Δlogit\\| {err:.1e}"])
        assert acc[0] == acc[1], f"fused digits accuracy {acc[1]} != original {acc[0]}"
    return markdown(f"digits CNN ({path.name}; batches 1 and 64 of the test split)", rows)


def bench_minilm(workdir: Path, args) -> str:
    """MiniLM's table: structure, latency at batch 1 and 32, embedding cosine."""
    minilm = minilm_data.load()
    path = minilm.path
    fused_path, fuse_seconds = fuse(path, workdir)
    original_bytes, fused_bytes = path.read_bytes(), fused_path.read_bytes()
    rows = structure_rows(path, fused_path, workdir)
    rows.append(["`fuse` pass time (s)", "", f"{fuse_seconds:.1f}", ""])

    sentences = minilm.evaluation
    for batch in (1, 32):
        feed = minilm.tokenize(sentences[:batch])
        seq = feed["input_ids"].shape[1]
        rows += latency_rows(original_bytes, fused_bytes, feed, f"batch {batch} (seq {seq})",
                             args)

    feeds = minilm.feeds(sentences)
    for level, level_name in (("off", "graph as written"), ("all", "ORT_ENABLE_ALL")):
        embeddings = []
        for model in (original_bytes, fused_bytes):
            sess = session(model, "cpu", threads=THREADS, optimize=level)
            embeddings.append(np.concatenate([sess.run(["sentence_embedding"], feed)[0]
                                              for feed in feeds]))
        cos = minilm_data.cosines(*embeddings)
        err = float(np.abs(embeddings[0] - embeddings[1]).max())
        rows.append([(f"embedding cosine fused vs original, {len(sentences)} sentences "
                      f"({level_name})"), "", f"min {cos.min():.8f}, mean {cos.mean():.8f}",
                     f"max \\|Δ\\| {err:.1e}"])
    return markdown(f"all-MiniLM-L6-v2 ({path.name}; batches 1 and 32 evaluation sentences, "
                    "padded to the batch's longest)", rows)


def main(argv: list[str] | None = None) -> None:
    """Parse the options, print the machine facts and one table per model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=60,
                        help="timed runs per session, at least (default 60)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed runs per session before timing (default 10)")
    parser.add_argument("--min-seconds", type=float, default=1.0, metavar="SECONDS",
                        help="for fast models, more runs: about this many seconds of timed "
                             "runs per session (default 1)")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="skip the A/A noise-floor session (a second session of the "
                             "original model); saves a third of the timing")
    parser.add_argument("--only", choices=("digits", "minilm"), help="one model only")
    args = common.parse_args(parser, argv, runs=5, warmup=2, min_seconds=0)

    start = time.perf_counter()
    print(machine_facts())
    print(f"- latency: at least {args.runs} timed runs per session (more for fast models: "
          f"~{args.min_seconds:g} s of runs each) after {args.warmup} warm-up runs; all "
          f"sessions of a batch size (original / fused"
          f"{' / original again' if args.control else ''} × BASIC / ALL) alternate run by "
          "run, in a random order each pass")
    if (load := common.load_average()) is not None:
        print(f"- load average at start: {load:.2f} (1 min)")
    print()
    with tempfile.TemporaryDirectory(prefix="onnxpress-fusion-") as tmp:
        if args.only in (None, "digits"):
            print(bench_digits(Path(tmp), args), end="\n\n", flush=True)
        if args.only in (None, "minilm"):
            print(bench_minilm(Path(tmp), args), end="\n\n", flush=True)
    load = common.load_average()
    print(f"(benchmark wall time {time.perf_counter() - start:.0f} s"
          + ("" if load is None else f", load average {load:.2f}") + ")")


if __name__ == "__main__":
    main()
