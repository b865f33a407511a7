"""Quantization side by side: FP32 vs onnxpress vs onnxruntime.quantization, in one run.

    python benchmarks/quantization.py               # all three models, ~8-10 minutes on 2 cores
    python benchmarks/quantization.py --only digits --no-write   # a quick look, not recorded
    python benchmarks/quantization.py --quick       # smoke test: little data, short timing

Models (one Markdown table each):

- **digits**: the embedded residual CNN (``onnxpress.demo``, 1×8×8 input); calibration = its
  256 calibration images, accuracy = top-1 on its 540 test images.
- **resnet32**: a ResNet-ish CNN built here with ``onnx.helper`` (the zoo's residual graphs
  and ``tests/models/torch_cnn_*`` are too small to time): input 3×32×32, stem Conv 3→64 + BN
  + Relu, a basic block of two 3×3 Conv 64→64 + BN with an identity skip at 32×32, MaxPool 2,
  the same block at 16×16, GlobalAveragePool, Gemm 64→10. Conv weights are random (He,
  seeded); every BatchNormalization gets the mean/variance its input really has on the
  training images, so activations are well scaled like a trained net's; the Gemm head is then
  fitted by ridge regression on the pooled features of the digits *training* images (sklearn's
  digits minus the 540 test images, upsampled ×4 to 32×32, grey in all three channels). Top-1
  is thus a real accuracy on the same 540 test images — of a random-feature network.
- **MiniLM**: all-MiniLM-L6-v2 (``models/build/minilm.onnx``, built by ``models/minilm.py`` if
  missing), real English sentences from ``models/build/minilm_sentences.json``: the 256
  "calibration" sentences calibrate (8 batches of 32, each padded to its longest sentence),
  the 256 "evaluation" sentences measure the sentence-embedding cosine to FP32 (mean, min).

Variants: FP32; onnxpress ``int8-cpu`` (fuse, percentile 99.999 calibrate, quantize-static)
and the same with minmax ranges; ``dynamic-int8`` for MiniLM; onnxruntime ``quantize_static``
(QDQ, per_channel=True, MinMax / Percentile / Entropy with onnxruntime's defaults, U8
activations + S8 weights and S8/S8, onnxruntime's own default) and ``quantize_dynamic`` (S8 and
U8 weights, its defaults otherwise). onnxruntime's quantization guide recommends pre-processing
(``onnxruntime.quantization.shape_inference.quant_pre_process``: symbolic shape inference,
ORT optimization, ONNX shape inference) before quantizing; every onnxruntime variant
quantizes the pre-processed model. On MiniLM the symbolic shape inference fails with the
defaults ("Incomplete symbolic shape inference"), so ``auto_merge=True`` is used everywhere, the
option onnxruntime's symbolic shape inference suggests. The S8/S8 variant of a calibration
method reuses the U8 run's ranges through ``calibration_cache_path`` (the ranges do not depend
on the integer type), so its quantization time is not measured separately.

Fairness:

- Quantization time and memory: each quantizer runs in a fresh subprocess on the same batches
  (the same feed dicts for both tools). Time is the wall time of the quantization call
  (``onnxpress.optimize`` with the recipe, which includes the fuse pass and onnxruntime's
  fusion check; ``quantize_static`` / ``quantize_dynamic``, which include loading and saving);
  ``quant_pre_process`` is timed apart. Memory is the growth of resident memory during that
  call: the kernel's high-water mark (VmHWM, reset through ``/proc/self/clear_refs`` just
  before) minus the resident size at that moment, after imports and data loading, so
  onnxruntime's native allocations count too (`common.measured`).
- Latency: every session (``CPUExecutionProvider``, ``ORT_ENABLE_ALL``, `THREADS` intra-op
  threads, sequential execution) is created and warmed up first, then timed in rounds; in
  each round every variant runs a block of calls lasting ~`BLOCK_S` (one call for slow
  models), in an order rotated from round to round, so machine noise lands on all variants
  alike. Each variant gets ~`BUDGET_S` of timed calls, and never fewer than `MIN_RUNS`. Only
  ``session.run`` is timed; the median is reported. A second, independent FP32 session
  ("FP32 (A/A)") shows the noise floor: its ratio to FP32 is how far from 1.0 a ratio drifts
  by chance on this machine at that moment.
- Accuracy is measured with the same sessions' settings (what a deployment runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import common
import minilm_data
import numpy as np

THREADS = 2
ROUNDS = 10            # at least this many rounds, whatever the budget
MIN_RUNS = 50
MAX_RUNS = 20000
BUDGET_S = 1.0         # timed seconds per variant and batch size (MIN_RUNS wins if longer)
#: Calls per round: as many as last ~50 ms (one for slower models). Much shorter blocks let
#: the previous session's spinning intra-op threads (onnxruntime's default) steal the CPU
#: from the next one: measured 10-30x slowdowns of some variants with 1-call blocks.
BLOCK_S = 0.05
#: ``--quick``: calibration / evaluation samples per model (and `QUICK_TIMING`).
QUICK_SAMPLES = 64
CALIBRATION_BATCH = 32
LARGE_BATCH = {"digits": 64, "resnet32": 64, "minilm": 32}
SECTION = "## Quantization"

#: Child jobs of one model: (label, job). Calibration methods onnxruntime runs for static.
ORT_METHODS = ("MinMax", "Percentile", "Entropy")
OURS = "onnxpress int8-cpu (percentile)"


# ============================================================================================
# Child process: one quantization, measured
def load_batches(path: Path) -> list[dict[str, np.ndarray]]:
    """Feed dicts saved by `save_batches` (keys ``"<index>/<input name>"``)."""
    with np.load(path) as npz:
        batches: dict[int, dict[str, np.ndarray]] = {}
        for key in npz.files:
            index, name = key.split("/", 1)
            batches.setdefault(int(index), {})[name] = npz[key]
    return [batches[i] for i in sorted(batches)]


def save_batches(path: Path, batches: list[dict[str, np.ndarray]]) -> Path:
    np.savez(path, **{f"{i:03d}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
    return path


def _child(job: dict) -> dict:
    """Run one quantization job; return time, memory growth and the error, if any."""
    batches = load_batches(Path(job["data"])) if job.get("data") else None
    if job["tool"] == "onnxpress":
        sys.path.insert(0, str(common.ROOT))
        import onnxpress as ox
        from onnxpress.passes.calibrate import Calibrate
        from onnxpress.recipes import RECIPES
        from onnxpress.runtime.data import DataSource

        passes = {"int8-cpu": RECIPES["int8-cpu"],
                  "int8-minmax": ["fuse", Calibrate(method="minmax"), "quantize-static"],
                  "dynamic-int8": RECIPES["dynamic-int8"]}[job["recipe"]]

        def work():
            data = DataSource.from_feeds(batches) if batches is not None else None
            ox.optimize(job["source"], passes, data=data).save(job["out"], overwrite=True)
    else:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        types = {"U8": QuantType.QUInt8, "S8": QuantType.QInt8}
        if job["kind"] == "preprocess":
            def work():
                quant_pre_process(job["source"], job["out"], auto_merge=True)
        elif job["kind"] == "dynamic":
            def work():
                quantize_dynamic(job["source"], job["out"], weight_type=types[job["weight"]])
        else:
            def static(out, activation, reader):
                quantize_static(job["source"], out, reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=types[activation],
                                weight_type=QuantType.QInt8,
                                calibrate_method=getattr(CalibrationMethod, job["method"]),
                                calibration_cache_path=job["cache"])

            def work():
                static(job["out"], "U8", common.ort_reader(batches))

    error = None
    with common.measured() as cost:
        try:
            work()
        except Exception as e:  # noqa: BLE001 (the tools under test fail in assorted types)
            error = f"{type(e).__name__}: {e}".strip().splitlines()[-1][:300]
            traceback.print_exc(file=sys.stderr)
    result = {"seconds": cost.seconds, "peak_mib": cost.peak_mib, "error": error}
    if error is None and job["tool"] == "onnxruntime" and job["kind"] == "static":
        try:  # S8/S8 from the same ranges (calibration_cache_path), not measured
            static(job["out_s8"], "S8", None)
        except Exception as e:  # noqa: BLE001
            result["error_s8"] = f"{type(e).__name__}: {e}".splitlines()[-1][:300]
    return result


def quantize_in_child(job: dict, log) -> dict:
    """`job` in a fresh interpreter; its JSON result."""
    # cwd: onnxruntime's symbolic shape inference drops temporary files in the working
    # directory (and leaves them behind when it fails); keep them in our temporary folder.
    child = common.run_child(__file__, job, cwd=Path(job["out"]).parent)
    if child.result is None:
        return {"seconds": math.nan, "peak_mib": math.nan,
                "error": f"child exited {child.returncode}: "
                         f"{(child.stderr_tail or '(no output)')[:300]}"}
    result = child.result
    log(f"  {job['label']}: {result['seconds']:.1f} s, +{result['peak_mib']:.0f} MiB"
        + (f", FAILED: {result['error']}" if result["error"] else ""))
    return result


# ============================================================================================
# Models and data
@dataclass(frozen=True)
class Timing:
    """The latency budget of `time_interleaved` and `paired_ratio`.

    Attributes:
        rounds: Interleaved rounds, at least, whatever the budget.
        min_runs: Timed calls (or 1-thread pairs) per variant and batch size, at least.
        budget_s: Timed seconds per variant and batch size (`min_runs` wins if longer).
    """

    rounds: int = ROUNDS
    min_runs: int = MIN_RUNS
    budget_s: float = BUDGET_S


QUICK_TIMING = Timing(rounds=2, min_runs=3, budget_s=0.02)


@dataclass
class Variant:
    """One model file and what we know about it."""

    name: str
    path: Path | None
    quant: dict | None = None          # child result (time, memory, error)
    note: str = ""
    latency: dict = field(default_factory=dict)   # batch → (median ms, p90 ms, runs)
    accuracy: dict = field(default_factory=dict)
    fused: str = ""


@dataclass
class Bench:
    """A model under test: its files, data and accuracy function."""

    key: str
    title: str
    source: Path
    calibration: Path                 # batches file (the same for both tools)
    latency_feeds: dict               # batch size → feed dict
    evaluate: object                  # session → accuracy dict
    padded_calibration: Path | None = None
    variants: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    preprocess: dict | None = None
    control: tuple | None = None      # (ORT variant, batch, (ours / theirs at 1 thread, pairs))


def _digits_images():
    from sklearn.datasets import load_digits

    sys.path.insert(0, str(common.ROOT))
    from onnxpress import demo

    digits = load_digits()
    images = (digits.images / 16).astype(np.float32)[:, None]
    test = np.asarray(demo.test_data().arrays["input"])
    labels = demo.test_labels()
    test_keys = {x.tobytes() for x in test}
    train = np.array([x not in test_keys for x in (i.tobytes() for i in images)])
    calib = np.asarray(demo.calibration_data().arrays["input"])
    return images[train], digits.target[train], test, labels, calib


def _batches(images: np.ndarray, size: int = CALIBRATION_BATCH) -> list[dict]:
    return [{"input": images[i:i + size]} for i in range(0, len(images), size)]


def _top1(session, images, labels, reference=None):
    predictions = np.concatenate([session.run(None, {"input": images[i:i + 64]})[0].argmax(1)
                                  for i in range(0, len(images), 64)])
    result = {"top1": float((predictions == labels).mean())}
    if reference is not None:
        result["agree"] = float((predictions == reference).mean())
    return result, predictions


def digits_bench(folder: Path, samples: int | None) -> Bench:
    sys.path.insert(0, str(common.ROOT))
    from onnxpress import demo

    _, _, test, labels, calib = _digits_images()
    calib = calib[:samples]
    state = {}

    def evaluate(session):
        result, predictions = _top1(session, test, labels, state.get("reference"))
        state.setdefault("reference", predictions)
        return result

    return Bench("digits", "digits CNN (onnxpress.demo, 1×8×8, 150 KB)", demo.model_path(),
                 save_batches(folder / "digits_calib.npz", _batches(calib)),
                 {1: {"input": test[:1]}, 64: {"input": test[:64]}}, evaluate)


def _upsample(images: np.ndarray) -> np.ndarray:
    """1×8×8 digits → 3×32×32 (nearest ×4, grey in all channels)."""
    big = np.kron(images, np.ones((1, 1, 4, 4), np.float32))
    return np.repeat(big, 3, axis=1).astype(np.float32)


def build_resnet(path: Path, train: np.ndarray, train_labels: np.ndarray) -> Path:
    """The ResNet-ish model described in the module docstring, written to `path`."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(2024)
    inits: dict[str, np.ndarray] = {}
    nodes = []

    def conv_bn(x, cin, cout, name, relu):
        w = (rng.standard_normal((cout, cin, 3, 3)) * math.sqrt(2 / (cin * 9))).astype(np.float32)
        inits[f"{name}.w"] = w
        inits[f"{name}.b"] = np.zeros(cout, np.float32)
        for p, v in (("scale", np.ones(cout)), ("bias", np.zeros(cout)), ("mean", np.zeros(cout)),
                     ("var", np.ones(cout))):
            inits[f"{name}.bn.{p}"] = v.astype(np.float32)
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.c"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], name=f"{name}/Conv"))
        nodes.append(helper.make_node(
            "BatchNormalization", [f"{name}.c"] + [f"{name}.bn.{p}" for p in
                                                   ("scale", "bias", "mean", "var")],
            [f"{name}.n"], name=f"{name}/BatchNormalization"))
        if not relu:
            return f"{name}.n"
        nodes.append(helper.make_node("Relu", [f"{name}.n"], [f"{name}.r"], name=f"{name}/Relu"))
        return f"{name}.r"

    def block(x, name):
        h = conv_bn(x, 64, 64, f"{name}.1", True)
        h = conv_bn(h, 64, 64, f"{name}.2", False)
        nodes.append(helper.make_node("Add", [h, x], [f"{name}.add"], name=f"{name}/Add"))
        nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"],
                                      name=f"{name}/Relu"))
        return f"{name}.out"

    x = conv_bn("input", 3, 64, "stem", True)
    x = block(x, "block1")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[2, 2], strides=[2, 2],
                                  name="pool/MaxPool"))
    x = block("pool", "block2")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="head/GAP"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], axis=1, name="head/Flatten"))
    inits["head.w"] = np.zeros((10, 64), np.float32)
    inits["head.b"] = np.zeros(10, np.float32)
    nodes.append(helper.make_node("Gemm", ["features", "head.w", "head.b"], ["logits"],
                                  transB=1, name="head/Gemm"))

    def model(outputs):
        graph = helper.make_graph(
            nodes, "resnet32",
            [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 32, 32])],
            [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT,
                                           ["N", 10] if o == "logits" else None)
             for o in outputs],
            [numpy_helper.from_array(v, k) for k, v in inits.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                 ir_version=8, producer_name="benchmarks/quantization.py")

    def run(outputs):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = THREADS
        session = ort.InferenceSession(model(outputs).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        got = [session.run(outputs, {"input": train[i:i + 128]}) for i in range(0, len(train), 128)]
        return [np.concatenate([g[k] for g in got]) for k in range(len(outputs))]

    # BatchNormalization statistics: what each BN's input really is, layer by layer.
    for bn in [n for n in nodes if n.op_type == "BatchNormalization"]:
        name = bn.input[0][:-2]
        (c,) = run([bn.input[0]])
        inits[f"{name}.bn.mean"] = c.mean(axis=(0, 2, 3)).astype(np.float32)
        inits[f"{name}.bn.var"] = c.var(axis=(0, 2, 3)).astype(np.float32)
        inits[f"{name}.bn.scale"] = rng.uniform(0.5, 1.5, c.shape[1]).astype(np.float32)
        inits[f"{name}.bn.bias"] = (rng.standard_normal(c.shape[1]) * 0.2).astype(np.float32)
    # Ridge-regression head on the pooled features of the training images.
    (features,) = run(["features"])
    design = np.hstack([features, np.ones((len(features), 1), np.float32)]).astype(np.float64)
    targets = np.eye(10)[train_labels]
    ridge = 1e-3 * np.trace(design.T @ design) / design.shape[1]
    solution = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]),
                               design.T @ targets)
    inits["head.w"] = solution[:-1].T.astype(np.float32)
    inits["head.b"] = solution[-1].astype(np.float32)
    onnx.save(model(["logits"]), str(path))
    return path


def resnet_bench(folder: Path, samples: int | None) -> Bench:
    train, train_labels, test, labels, calib = _digits_images()
    path = build_resnet(folder / "resnet32.onnx", _upsample(train), train_labels)
    test, calib = _upsample(test), _upsample(calib[:samples])
    state = {}

    def evaluate(session):
        result, predictions = _top1(session, test, labels, state.get("reference"))
        state.setdefault("reference", predictions)
        return result

    return Bench("resnet32", "ResNet-ish CNN (built here, 3×32×32, 64 channels, "
                 f"{path.stat().st_size / 1e6:.2f} MB)", path,
                 save_batches(folder / "resnet32_calib.npz", _batches(calib)),
                 {1: {"input": test[:1]}, 64: {"input": test[:64]}}, evaluate)


def minilm_bench(folder: Path, samples: int | None) -> Bench:
    minilm = minilm_data.load()
    model, tokenize = minilm.path, minilm.tokenize
    calibration, evaluation = minilm.calibration[:samples], minilm.evaluation[:samples]
    batches = minilm.feeds(calibration, CALIBRATION_BATCH)
    everything = tokenize(calibration)  # one length for all: onnxruntime's histograms need it
    padded = [{k: v[i:i + CALIBRATION_BATCH] for k, v in everything.items()}
              for i in range(0, len(calibration), CALIBRATION_BATCH)]
    evaluation_feeds = minilm.feeds(evaluation)
    state = {}

    def evaluate(session):
        embeddings = np.concatenate([session.run(["sentence_embedding"], f)[0]
                                     for f in evaluation_feeds])
        cosine = minilm_data.cosines(embeddings, state.setdefault("reference", embeddings))
        return {"cos_mean": float(cosine.mean()), "cos_min": float(cosine.min())}

    return Bench("minilm", f"all-MiniLM-L6-v2 (6 layers, {model.stat().st_size / 1e6:.0f} MB)",
                 model, save_batches(folder / "minilm_calib.npz", batches),
                 {1: tokenize(evaluation[:1]), 32: tokenize(evaluation[:32])}, evaluate,
                 padded_calibration=save_batches(folder / "minilm_calib_padded.npz", padded))


# ============================================================================================
# Quantize (subprocesses)
def quantize_all(bench: Bench, folder: Path, log) -> None:
    key, out = bench.key, lambda name: folder / f"{bench.key}.{name}.onnx"
    bench.variants.append(Variant("FP32", bench.source))
    bench.variants.append(Variant("FP32 (A/A)", bench.source, note="second session: noise"))
    recipes = [("onnxpress int8-cpu (percentile)", "int8-cpu"),
               ("onnxpress int8 (minmax)", "int8-minmax")]
    if key == "minilm":
        recipes.append(("onnxpress dynamic-int8", "dynamic-int8"))
    for label, recipe in recipes:
        job = {"label": label, "tool": "onnxpress", "recipe": recipe, "source": str(bench.source),
               "out": str(out(recipe)),
               "data": str(bench.calibration) if recipe != "dynamic-int8" else None}
        result = quantize_in_child(job, log)
        bench.variants.append(Variant(label, out(recipe) if not result["error"] else None,
                                      result))

    pre = out("ort-pre")
    result = quantize_in_child({"label": "onnxruntime quant_pre_process", "tool": "onnxruntime",
                        "kind": "preprocess", "source": str(bench.source), "out": str(pre)}, log)
    bench.preprocess = result
    if result["error"]:
        bench.notes.append(f"onnxruntime quant_pre_process failed ({result['error']}); "
                           "onnxruntime quantizes the original model instead")
        pre = bench.source
    bench.notes.append(f"onnxruntime `quant_pre_process(auto_merge=True)`: "
                       f"{result['seconds']:.1f} s, +{result['peak_mib']:.0f} MiB (not included "
                       "in the quantize times below)")
    for method in ORT_METHODS:
        attempts = [(bench.calibration, "")]
        if bench.padded_calibration is not None and method != "MinMax":
            attempts.append((bench.padded_calibration, " [padded]"))
        for data, suffix in attempts:
            name = f"ort-{method.lower()}{'-padded' if suffix else ''}"
            job = {"label": f"onnxruntime static {method}{suffix}", "tool": "onnxruntime",
                   "kind": "static", "method": method, "source": str(pre), "data": str(data),
                   "out": str(out(name + "-u8s8")), "out_s8": str(out(name + "-s8s8")),
                   "cache": str(folder / f"{key}.{name}.calibration.json")}
            result = quantize_in_child(job, log)
            if result["error"]:
                bench.notes.append(f"onnxruntime `quantize_static` {method}{suffix} failed: "
                                   f"`{result['error']}`")
                continue
            bench.variants.append(Variant(f"ORT static {method} U8S8{suffix}",
                                          out(name + "-u8s8"), result))
            bench.variants.append(Variant(
                f"ORT static {method} S8S8{suffix}",
                out(name + "-s8s8") if "error_s8" not in result else None,
                note="ranges of the U8S8 run" + (f"; failed: {result['error_s8']}"
                                                 if "error_s8" in result else "")))
            break
    for weight in ("S8", "U8"):
        name = f"ort-dynamic-{weight.lower()}"
        result = quantize_in_child({"label": f"onnxruntime dynamic {weight}", "tool": "onnxruntime",
                            "kind": "dynamic", "weight": weight, "source": str(pre),
                            "out": str(out(name))}, log)
        bench.variants.append(Variant(f"ORT dynamic {weight} weights",
                                      out(name) if not result["error"] else None, result))


# ============================================================================================
# Measure (this process)
def make_session(path: Path, threads: int = THREADS):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(bench: Bench, log, timing: Timing) -> None:
    """Accuracy, fusion report and latency of every variant, then the 1-thread control.

    Args:
        bench: The model and its quantized variants.
        log: Prints a progress line.
        timing: The latency budget.
    """
    sys.path.insert(0, str(common.ROOT))
    from onnxpress.runtime.fusion import fusion_report

    live = [v for v in bench.variants if v.path is not None]
    sessions = {}
    for v in live:
        try:
            sessions[v.name] = make_session(v.path)
            v.accuracy = bench.evaluate(sessions[v.name])
            if v.name.startswith(("onnxpress", "ORT")):
                report = fusion_report(v.path)
                v.fused = f"{report.ratio:.0%}"
        except Exception as e:  # noqa: BLE001 (a variant onnxruntime cannot load or run)
            v.note = (v.note + "; " if v.note else "") + f"cannot run: {type(e).__name__}: {e}"
            sessions.pop(v.name, None)
            v.path = None
    for name in ("onnxpress int8-cpu (percentile)", "ORT static MinMax U8S8"):
        v = _get(bench, name)
        if v is not None and bench.key == "minilm":
            bench.notes.append(f"ops reading a dequantized activation in {name}: "
                               f"{quantized_ops(v.path)}")
    for batch, feed in bench.latency_feeds.items():
        log(f"  timing {bench.key} at batch {batch} ({len(sessions)} sessions)")
        for name, (median, p90, runs) in time_interleaved(sessions, feed, timing).items():
            next(v for v in live if v.name == name).latency[batch] = (median, p90, runs)
    sessions.clear()
    ours, theirs = _get(bench, OURS), same_method_ort(bench)
    if ours is not None and theirs is not None:
        batch = max(bench.latency_feeds)
        log(f"  1-thread control at batch {batch}: {ours.name} vs {theirs.name}")
        bench.control = (theirs.name, batch, paired_ratio(ours.path, theirs.path,
                                                          bench.latency_feeds[batch], timing))


def same_method_ort(bench: Bench) -> Variant | None:
    """Onnxruntime's static variant closest to our recipe: Percentile, U8 activations."""
    return (_get(bench, "ORT static Percentile U8S8")
            or _get(bench, "ORT static Percentile U8S8 [padded]")
            or _get(bench, "ORT static MinMax U8S8"))


def paired_ratio(a: Path, b: Path, feed: dict, timing: Timing, threads: int = 1
                 ) -> tuple[float, int]:
    """Median over ≥ `timing.min_runs` alternating call pairs of time(a) / time(b), with
    `threads` intra-op threads: one thread is far less sensitive to other processes on a
    shared machine than two, so this separates a real difference from contention noise."""
    sa, sb = make_session(a, threads), make_session(b, threads)
    for _ in range(3):
        sa.run(None, feed)
        sb.run(None, feed)
    start = time.perf_counter()
    sa.run(None, feed)
    pairs = min(MAX_RUNS, max(timing.min_runs,
                                 math.ceil(timing.budget_s / (time.perf_counter() - start))))
    ratios = []
    for i in range(pairs):
        first, second = (sa, sb) if i % 2 else (sb, sa)
        t0 = time.perf_counter()
        first.run(None, feed)
        t1 = time.perf_counter()
        second.run(None, feed)
        t2 = time.perf_counter()
        ta, tb = (t1 - t0, t2 - t1) if first is sa else (t2 - t1, t1 - t0)
        ratios.append(ta / tb)
    return float(np.median(ratios)), pairs


def quantized_ops(path: Path) -> str:
    """"MatMul×36, Add×…": op types (as written in the file) reading a DequantizeLinear of a
    runtime value, i.e. the ops the quantizer put in int8 units."""
    import collections

    import onnx

    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    counts = collections.Counter(
        node.op_type for node in graph.node
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(
            i in producers and producers[i].op_type == "DequantizeLinear"
            and producers[i].input[0] in producers for i in node.input))
    return ", ".join(f"{op}×{n}" for op, n in counts.most_common())


def time_interleaved(sessions: dict, feed: dict, timing: Timing) -> dict:
    """Median latency of each session, measured in interleaved rounds (see the docstring).

    Each variant gets about `timing.budget_s` of timed runs (at least `timing.min_runs`, at
    most `MAX_RUNS`); a round runs every variant once for a block of ~`BLOCK_S` (one call for
    slow models), in an order rotated from round to round; there are at least `timing.rounds`
    rounds. A variant with fewer rounds of its own is spread evenly over all the rounds."""
    # 3 warm-up calls, then the mean of 3 more: a per-call estimate to size the blocks
    estimate = {n: max(e, 1e-6) for n, e in common.warm_up(sessions, feed, 6, np.mean).items()}
    block = {n: max(1, math.ceil(BLOCK_S / estimate[n])) for n in sessions}
    wanted = {n: min(MAX_RUNS, max(timing.min_runs, math.ceil(timing.budget_s / estimate[n])))
              for n in sessions}
    own = {n: max(timing.rounds, math.ceil(wanted[n] / block[n])) for n in sessions}
    times = common.time_rounds(sessions, feed, own, blocks=block, shuffle=False)
    return {n: (float(np.median(t)) * 1e3, float(np.percentile(t, 90)) * 1e3, len(t))
            for n, t in times.items()}


# ============================================================================================
# Report
def _size(path: Path | None) -> str:
    return f"{path.stat().st_size / 1e6:.3f} MB" if path is not None else "—"


def table(bench: Bench) -> str:
    small, large = sorted(bench.latency_feeds)
    fp32 = bench.variants[0]
    fp32_size = fp32.path.stat().st_size
    accuracy_head = (["cos mean", "cos min"] if bench.key == "minilm" else ["top-1", "agree"])
    head = ["variant", "file", "× FP32", *accuracy_head, f"ms @{small}", f"× FP32 @{small}",
            f"ms @{large}", f"× FP32 @{large}", "int8 fused", "quantize s", "quantize +MiB"]
    rows = []
    for v in bench.variants:
        cells = [v.name, _size(v.path),
                 f"{v.path.stat().st_size / fp32_size:.2f}" if v.path else "—"]
        if bench.key == "minilm":
            cells += [f"{v.accuracy['cos_mean']:.4f}" if v.accuracy else "—",
                      f"{v.accuracy['cos_min']:.4f}" if v.accuracy else "—"]
        else:
            cells += [f"{v.accuracy['top1']:.2%}" if v.accuracy else "—",
                      f"{v.accuracy['agree']:.2%}" if v.accuracy.get("agree") is not None
                      else "—"]
        for batch in (small, large):
            if batch in v.latency:
                ratio = v.latency[batch][0] / fp32.latency[batch][0]
                cells += [f"{v.latency[batch][0]:.3f}", f"**{ratio:.2f}**"]
            else:
                cells += ["—", "—"]
        cells.append(v.fused or "—")
        if v.quant:
            cells += [f"{v.quant['seconds']:.1f}", f"{v.quant['peak_mib']:.0f}"]
        else:
            cells += ["—", "—"]
        if v.note:
            cells[0] += f" ({v.note})"
        rows.append(cells)
    runs = {b: min(v.latency[b][2] for v in bench.variants if b in v.latency) for b in
            (small, large)}
    footer = (f"Latency: median of ≥ {runs[small]} runs at batch {small} and ≥ {runs[large]} "
              f"at batch {large}, interleaved variant by variant, {THREADS} intra-op threads, "
              "ORT_ENABLE_ALL. int8 fused: share of quantized units onnxruntime runs as int8 "
              "kernels (`onnxpress.runtime.fusion`). quantize s / +MiB: wall time and peak "
              "resident-memory growth of the quantization call in a fresh process.")
    notes = list(bench.notes)
    if bench.control:
        name, batch, (ratio, pairs) = bench.control
        notes.insert(0, f"1-thread control, batch {batch}: {OURS} / {name} = **{ratio:.2f}** "
                        f"(median of {pairs} alternating pairs)")
    return "\n".join([f"### {bench.title}", "", common.markdown_table(head, rows), "", footer,
                      "", *[f"- {n}" for n in notes]])


def _get(bench: Bench, name: str) -> Variant | None:
    return next((v for v in bench.variants if v.name == name and v.path is not None), None)


def noise_band(bench: Bench, batch: int) -> float:
    """How far a latency ratio drifts by chance in this run: the larger of the A/A ratio's
    distance from 1 and the spread among onnxruntime's static U8S8 variants, whose optimized
    graphs are the same kernels (only the ranges differ)."""
    fp32, aa = bench.variants[0], _get(bench, "FP32 (A/A)")
    band = abs(aa.latency[batch][0] / fp32.latency[batch][0] - 1) if aa else 0.0
    same = [v.latency[batch][0] for v in bench.variants
            if v.name.startswith("ORT static") and "U8S8" in v.name and batch in v.latency]
    if len(same) > 1:
        band = max(band, max(same) / min(same) - 1)
    return band


def _verdict(ratio: float, band: float | None = None) -> str:
    text = "met" if ratio <= 1 else f"missed by {ratio - 1:.{1 if ratio < 1.1 else 0}%}"
    if band is not None and abs(ratio - 1) <= band:
        text += f" (within this run's noise, ±{band:.0%})"
    return text


def verdicts(benches: list[Bench]) -> str:
    """The issue's claims, met or missed, by how much (computed from this run)."""
    rows = []
    for bench in benches:
        ours = _get(bench, OURS)
        if ours is None:
            continue
        fp32 = bench.variants[0]
        same = same_method_ort(bench)
        statics = [v for v in bench.variants if v.name.startswith("ORT static") and v.latency]
        for b in sorted(bench.latency_feeds):
            band = noise_band(bench, b)
            if same is not None:
                r = ours.latency[b][0] / same.latency[b][0]
                fastest = min(statics, key=lambda v: v.latency[b][0])
                rf = ours.latency[b][0] / fastest.latency[b][0]
                rows.append([f"{bench.key} @{b}", "int8 latency ≤ ORT quantize_static's",
                             f"{r:.2f}× {same.name}; {rf:.2f}× the fastest ({fastest.name})",
                             _verdict(r, band)])
            r = ours.latency[b][0] / fp32.latency[b][0]
            rows.append([f"{bench.key} @{b}", "int8 never slower than FP32", f"{r:.2f}×",
                         _verdict(r, band)])
        if bench.control:
            name, batch, (ratio, _) = bench.control
            rows.append([f"{bench.key} @{batch}", "(control) same at 1 thread, paired",
                         f"{ratio:.2f}× {name}", _verdict(ratio)])
        if bench.key == "minilm":
            acc = ours.accuracy
            rows.append(["minilm", "static int8 sentence-embedding cosine ≥ 0.99",
                         f"mean {acc['cos_mean']:.4f}, min {acc['cos_min']:.4f}",
                         (f"mean {'met' if acc['cos_mean'] >= 0.99 else 'missed'}, min "
                          f"{'met' if acc['cos_min'] >= 0.99 else 'missed'}")])
            dyn = [v for v in bench.variants if v.name.startswith("ORT dynamic") and v.latency]
            for b in sorted(bench.latency_feeds):
                if dyn:
                    best = min(dyn, key=lambda v: v.latency[b][0])
                    r = ours.latency[b][0] / best.latency[b][0]
                    rows.append([f"minilm @{b}", "static int8 latency ≤ ORT dynamic int8",
                                 f"{r:.2f}× the faster ({best.name})",
                                 _verdict(r, noise_band(bench, b))])
        pre = bench.preprocess if bench.preprocess and not bench.preprocess["error"] else None
        for method, ort_name, our_name in (
                ("percentile", "ORT static Percentile U8S8", OURS),
                ("minmax", "ORT static MinMax U8S8", "onnxpress int8 (minmax)")):
            ours_q = _get(bench, our_name)
            theirs = _get(bench, ort_name) or _get(bench, ort_name + " [padded]")
            if ours_q is None or theirs is None or not ours_q.quant or not theirs.quant:
                continue
            a, b = ours_q.quant, theirs.quant
            t, m = a["seconds"] / b["seconds"], a["peak_mib"] / max(b["peak_mib"], 1e-9)
            text = (f"{a['seconds']:.1f} s, +{a['peak_mib']:.0f} MiB vs {b['seconds']:.1f} s, "
                    f"+{b['peak_mib']:.0f} MiB: time {t:.2f}×, memory {m:.2f}×")
            verdict = f"time {_verdict(t)}, memory {_verdict(m)}"
            if pre:
                t2 = a["seconds"] / (b["seconds"] + pre["seconds"])
                m2 = a["peak_mib"] / max(b["peak_mib"], pre["peak_mib"])
                text += f" (with `quant_pre_process`: {t2:.2f}×, {m2:.2f}×)"
                verdict += f" (with pre-process: time {_verdict(t2)}, memory {_verdict(m2)})"
            rows.append([bench.key, f"{method} quantization time, memory ≤ ORT's ({theirs.name})",
                         text, verdict])
    return common.markdown_table(["model", "claim", "ours / theirs", "verdict"], rows)


def machine() -> str:
    """The machine facts above the tables: CPU, system, load, versions, date."""
    import onnxruntime as ort

    load = common.load_average()
    return (f"- {common.cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} "
            f"{platform.release()}; load average at start "
            f"{'?' if load is None else f'{load:.2f}'}\n"
            f"- Python {platform.python_version()}, onnxruntime {ort.__version__}, numpy "
            f"{np.__version__}; {datetime.date.today().isoformat()}")


# ============================================================================================
def main(argv=None) -> int:
    """Quantize, measure and print every chosen model's table; update RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["digits", "resnet32", "minilm"], action="append")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = common.parse_args(parser, argv)
    if args.child:
        common.reply(_child(json.loads(args.child)))
        return 0
    samples, timing = (QUICK_SAMPLES, QUICK_TIMING) if args.quick else (None, Timing())

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    facts = machine()
    builders = {"digits": digits_bench, "resnet32": resnet_bench, "minilm": minilm_bench}
    chosen = args.only or list(builders)
    benches = []
    with tempfile.TemporaryDirectory(prefix="onnxpress-quant-bench-") as tmp:
        folder = Path(tmp)
        for key in chosen:
            log(f"{key}: building data and quantizing")
            bench = builders[key](folder, samples)
            quantize_all(bench, folder, log)
            log(f"{key}: accuracy and latency")
            measure(bench, log, timing)
            benches.append(bench)
        minutes = (time.perf_counter() - started) / 60
        markdown = "\n\n".join([
            facts + f"\n- `python benchmarks/quantization.py`, {minutes:.1f} min",
            *[table(b) for b in benches],
            "### Claims, as measured in this run", verdicts(benches)])
    print(markdown)
    if not (args.no_write or args.quick):
        common.write_section(SECTION, "quantization.py", markdown)
        log(f"updated {common.RESULTS.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
