"""Accuracy tools side by side: smoothquant on MiniLM, equalize and bias-correction on digits.

- **MiniLM** (``models/build/minilm.onnx``, built by ``models/minilm.py`` if missing): static
  int8 (``fuse``, ``calibrate`` percentile on the first `CALIBRATION` calibration sentences,
  ``quantize-static``) without and with ``smoothquant`` before calibration, for each ``α`` of
  `ALPHAS` and ``auto_alpha``; then ``α`` = 0.75 with ``bias-correction``, and with the six
  FFN-out MatMuls (GELU output → dense) kept float, the layers that lose the most.
  Accuracy: cosine of the 256 evaluation sentences' embeddings to FP32's (mean and min).
  Latency: batch 32 of evaluation sentences, 1 intra-op thread, sessions taking turns
  (`common.time_rounds`), median over `ROUNDS` turns, as a ratio to FP32 timed in the same
  rounds, next to onnxruntime's own ``quantize_dynamic`` (S8 weights).
- **digits** (the embedded demo CNN, 540 test images): int8 with per-channel and per-tensor
  weights, each plain, with ``equalize``, ``bias-correction`` and both; logit SNR and
  mean-abs error against FP32, top-1 accuracy.

``python benchmarks/accuracy_tools.py`` writes its section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import minilm_data
import numpy as np
from common import (
    cpu_model,
    load_average,
    markdown_table,
    parse_args,
    time_rounds,
    utc_now,
    warm_up,
    write_section,
)

import onnxpress as ox
from onnxpress import demo
from onnxpress.passes import Calibrate, QuantizeStatic, SmoothQuant
from onnxpress.runtime.compare import compare

ALPHAS = (0.3, 0.5, 0.7, 0.8)
CALIBRATION = 128
ROUNDS = 20


def _session(model, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    proto = model.SerializeToString() if hasattr(model, "SerializeToString") else \
        Path(model).read_bytes()
    return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def minilm(quick: bool) -> str:
    data = minilm_data.load()
    calibration = data.feeds(data.calibration[:16 if quick else CALIBRATION], 32)
    evaluation = data.feeds(data.evaluation[:32 if quick else None], 32)
    reference = _session(data.path)
    ref = np.concatenate([reference.run(["sentence_embedding"], f)[0] for f in evaluation])
    variants = {"none": (None, ()), **{f"α={a}": (SmoothQuant(alpha=a), ()) for a in ALPHAS},
                "auto α": (SmoothQuant(auto_alpha=True), ()),
                "α=0.75 + bias-correction": (SmoothQuant(alpha=0.75), ("bias-correction",)),
                "α=0.75, FFN-out MatMuls float": (SmoothQuant(alpha=0.75), ())}
    rows, sessions = [], {"FP32": reference}
    for label, (smooth, more) in variants.items():
        exclude = ("*/layer.*/output/dense/MatMul",) if "FFN-out" in label else ()
        passes = ["fuse", *([smooth] if smooth else []), *more,
                  Calibrate(method="percentile"), QuantizeStatic(exclude=exclude)]
        model = ox.optimize(data.path, passes, data=calibration)
        sess = _session(model.to_onnx())
        emb = np.concatenate([sess.run(["sentence_embedding"], f)[0] for f in evaluation])
        cos = minilm_data.cosines(emb, ref)
        stats = model.report["smoothquant"].stats if smooth else {}
        folded = sum(stats.get("folded", {}).values())
        where = (f"{stats['inputs']} inputs: {folded} folded, {stats['inserted']} Mul inserted"
                 if smooth else "—")
        if smooth and smooth.auto_alpha:
            where += f"; α chosen {stats['alphas']}, {stats['kept_unsmoothed']} kept"
        rows.append([label, f"{cos.mean():.5f}", f"{cos.min():.5f}", where])
        sessions[label] = sess
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dynamic.onnx"
        quantize_dynamic(str(data.path), str(out), weight_type=QuantType.QInt8)
        sessions["ORT dynamic S8"] = _session(out)
    feed = evaluation[0]
    warm_up(sessions, feed, 4 if quick else 10)
    times = time_rounds(sessions, feed, 3 if quick else ROUNDS)
    fp32 = float(np.median(times["FP32"]))
    ratio = {name: float(np.median(t)) / fp32 for name, t in times.items()}
    for row in rows:
        row.insert(3, f"{ratio[row[0]]:.2f}×")
    rows.append(["ORT dynamic S8 (reference)", "", "", f"{ratio['ORT dynamic S8']:.2f}×", ""])
    return markdown_table(["smoothquant", "cos mean", "cos min", "latency / FP32", "scales"],
                          rows, "lrrrl") + (
        f"\n\nFP32 batch 32: {fp32 * 1e3:.1f} ms (median, 1 thread).")


def digits() -> str:
    test = dict(np.load(demo.model_path().parent / "digits_test.npz"))
    labels = np.load(demo.model_path().parent / "digits_test_labels.npy")
    rows = []
    for per_channel in (True, False):
        correction = "bias-correction" + ("" if per_channel else ":per_channel=False")
        for tools in ([], ["equalize"], [correction], ["equalize", correction]):
            passes = ["fuse", *tools, Calibrate(method="percentile"),
                      f"quantize-static:per_channel={per_channel}"]
            model = ox.optimize(demo.model_path(), passes, data=demo.calibration_data())
            c = compare(demo.model_path(), model, test, labels=labels)
            o = c[0]
            rows.append(["per channel" if per_channel else "per tensor",
                         " + ".join(t.split(":")[0] for t in tools) or "—", f"{o.snr_db:.2f}",
                         f"{o.mean_abs:.4f}", f"{c.candidate_accuracy:.2%}",
                         f"{c.reference_accuracy:.2%}"])
    return markdown_table(["weights", "tools", "logit SNR (dB)", "mean abs", "top-1",
                           "FP32 top-1"], rows, "llrrrr")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), argv)
    text = (f"{utc_now()}, {cpu_model()}, load {load_average()}; weights 7-bit where the "
            "cpu target says so (x86 without VNNI).\n\n### MiniLM static int8 ± smoothquant\n\n"
            f"{minilm(args.quick)}\n\n### digits int8 ± equalize / bias-correction\n\n"
            f"{digits()}\n")
    print(text)
    if not args.quick:
        write_section("## Accuracy tools", "accuracy_tools.py", text)


if __name__ == "__main__":
    sys.exit(main())
