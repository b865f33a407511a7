"""Int8 on the development zoo: onnxpress ``int8-cpu`` vs onnxruntime ``quantize_static``.

For every model of ``tests/zoo_real.py`` (``python models/build_zoo.py`` builds them), in one
process:

* onnxpress: ``optimize(path, RECIPES["int8-cpu"], data=<name>.npz)``; when its latency
  guard refuses int8 (slower than FP32 here) the table says so in "int8-cpu guard" and the
  int8 model is made again with ``MixedPrecision(allow_slower=True)`` to measure it;
* onnxruntime: ``quantize_static`` on the same 64 calibration samples, QDQ, MinMax,
  activations uint8, weights int8, per-channel when the model's opset is >= 13 (per-axis
  DequantizeLinear needs 13).

Each result that was produced is judged against the FP32 model on the held-out
``<name>_eval.npz`` (96 samples): the output kind's task metric (top-1 agreement, detection
F1 after decode+NMS, CTC exact match, binarized-map IoU; see `zoo_real.METRICS`) and the
cosine of every output. Latency is at batch 1 with one intra-op thread, onnxruntime's default
graph optimizations, the three sessions interleaved (`common.time_rounds`, 60 rounds of one
call after 20 warm-up calls each); the ratio is median(candidate) / median(FP32) (< 1 is
faster). A failure is reported with its message, never hidden.

Run ``PYTHONPATH=. python benchmarks/zoo_baseline.py [names...]``; it prints a Markdown table.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from zoo_real import METRICS, ZOO_MODELS, ZooModel, cosine  # noqa: E402

import onnxpress as ox  # noqa: E402
from onnxpress.errors import GuardError  # noqa: E402
from onnxpress.passes.quantize.sensitivity import MixedPrecision  # noqa: E402
from onnxpress.recipes import RECIPES  # noqa: E402

WARM_UP, ROUNDS = 20, 60


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _static_batch(path: Path) -> bool:
    return all(isinstance(d, int) for i in _session(path).get_inputs() for d in i.shape[:1])


def _batches(arrays: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + size] for k, v in arrays.items()} for i in range(0, n, size)]


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    sess = _session(path)
    runs = [sess.run(None, f) for f in feeds]
    return [np.concatenate([r[i] for r in runs]) for i in range(len(runs[0]))]


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".strip().splitlines()[-1][:160]


def quantize_ours(zm: ZooModel, out: Path, allow_slower: bool = False) -> None:
    """The onnxpress int8-cpu recipe; `allow_slower` keeps int8 its latency guard rejects."""
    passes = [MixedPrecision(allow_slower=True) if allow_slower and p == "mixed-precision"
              else p for p in RECIPES["int8-cpu"]]
    ox.optimize(zm.path, passes, data=zm.calib_path).save(out, overwrite=True)


def quantize_ort(zm: ZooModel, out: Path, calib: list[dict[str, np.ndarray]]) -> None:
    """The onnxruntime quantize_static: QDQ, MinMax, U8 activations / S8 weights."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    opset = max(o.version for o in onnx.load(zm.path, load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx"))
    quantize_static(zm.path, out, common.ort_reader(calib), quant_format=QuantFormat.QDQ,
                    per_channel=opset >= 13, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


def evaluate(zm: ZooModel, workdir: Path) -> list[str]:
    """One table row for a zoo model."""
    static = _static_batch(zm.path)
    evals = _batches(zm.evaluation(), 1 if static else 32)
    calib = _batches(zm.calibration(), 1)
    reference = _outputs(zm.path, evals)
    candidates: dict[str, Path | str] = {}
    verdict = "ok"
    for tool, make in (("onnxpress", lambda p: quantize_ours(zm, p)),
                       ("ort", lambda p: quantize_ort(zm, p, calib))):
        path = workdir / f"{zm.name}_{tool}.onnx"
        try:
            try:
                make(path)
            except GuardError as e:
                if tool != "onnxpress" or "latency" not in str(e):
                    raise
                # Slower than FP32: say so, and measure the int8 model it would have kept.
                ratio = re.search(r"runs at ([0-9.]+)x", str(e))
                verdict = f"GuardError: int8 {ratio.group(1) if ratio else '?'}x FP32"
                quantize_ours(zm, path, allow_slower=True)
            _session(path)
            candidates[tool] = path
        except Exception as e:  # noqa: BLE001 (both tools fail in assorted exception types)
            candidates[tool] = _error(e)
            verdict = "-" if tool == "onnxpress" else verdict
    cells = []
    for tool in ("onnxpress", "ort"):
        c = candidates[tool]
        if isinstance(c, str):
            cells.append(f"fails: {c}")
            continue
        try:
            got = _outputs(c, evals)
        except Exception as e:  # noqa: BLE001
            cells.append(f"runs not: {_error(e)}")
            candidates[tool] = _error(e)
            continue
        parts = []
        for (_name, kind), want, have in zip(zm.outputs.items(), reference, got, strict=True):
            label, metric = METRICS[kind]
            parts.append(f"{label} {metric(want, have):.3f}, cos {cosine(want, have):.4f}")
        cells.append("; ".join(parts))
    sessions = {"fp32": _session(zm.path)}
    sessions.update({t: _session(p) for t, p in candidates.items() if isinstance(p, Path)})
    feed = {k: v[:1] for k, v in zm.evaluation().items()}
    common.warm_up(sessions, feed, WARM_UP)
    times = common.time_rounds(sessions, feed, ROUNDS)
    base = np.median(times["fp32"])
    ratios = [f"{np.median(times[t]) / base:.2f}" if t in times else "-"
              for t in ("onnxpress", "ort")]
    return [zm.name, f"{base * 1e3:.2f}", verdict, cells[0], ratios[0], cells[1], ratios[1]]


def main(names: list[str]) -> None:
    """Print the baseline table for the named zoo models (all when none are given)."""
    print(f"CPU {common.cpu_model()}, load {common.load_average()}, {common.utc_now()}, "
          "batch 1, 1 thread, onnxruntime", ort.__version__)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(ZOO_MODELS):
            zm = ZOO_MODELS[name]
            if not zm.available():
                rows.append([name, "-", "not built", "-", "-", "-", "-"])
                continue
            rows.append(evaluate(zm, Path(tmp)))
            print(" | ".join(rows[-1]), flush=True)
    print(common.markdown_table(
        ["model", "FP32 ms", "int8-cpu guard", "onnxpress int8-cpu vs FP32", "latency ratio",
         "ORT quantize_static vs FP32", "latency ratio"], rows))


if __name__ == "__main__":
    main(sys.argv[1:])
