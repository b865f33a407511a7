"""Weight-only quantization of MiniLM side by side: onnxpress vs onnxruntime's MatMulNBits.

    python benchmarks/weights.py            # ~6-8 minutes on 2 cores (GPTQ dominates)
    python benchmarks/weights.py --quick    # smoke test: little data, short timing, no write

Model: all-MiniLM-L6-v2 (``models/build/minilm.onnx``, built by ``models/minilm.py`` if
missing). The first 128 "calibration" sentences (4 batches of 32) feed GPTQ's ``XᵀX`` for both
tools; the 256 "evaluation" sentences measure the sentence-embedding cosine to FP32 (mean,
min). File size is the saved file over the FP32 file.

Variants:

- onnxpress ``int4-weights`` (fuse, GPTQ int4 blocks of 32, asymmetric, act-order, int4
  embedding tables via GatherBlockQuantized), the same with round-to-nearest, and
  ``int8-weights`` (int8 blocks of 128, RTN, int8 embeddings);
- onnxruntime ``MatMulNBitsQuantizer`` (``onnxruntime.quantization.matmul_nbits_quantizer``):
  its default (RTN 4 bits, block 128, asymmetric), the same at block 32, its GPTQ option
  (``GPTQWeightOnlyQuantConfig``: block 128, its defaults otherwise, the same 128 sentences),
  8 bits block 128, and 4 bits with ``op_types_to_quantize=("MatMul", "Gather")`` — the
  embedding route that bumps the opset and may leave an invalid model (reported as such).

Latency: every session ``CPUExecutionProvider``, ``ORT_ENABLE_ALL``, `THREADS` intra-op
thread, is warmed up, then timed in interleaved rounds (`common.time_rounds`, random order
per round) on one batch of 32 evaluation sentences and on one sentence; medians are reported
with the ratio to FP32. Quantization time is the wall time of one in-process call (both tools
load and save inside it), for orientation only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import common
import minilm_data
import numpy as np

THREADS = 1
CALIBRATION = 128
SECTION = "## Weight-only quantization"


def _ours(passes, src: Path, dst: Path, calibration) -> None:
    sys.path.insert(0, str(common.ROOT))
    import onnxpress as ox

    ox.optimize(src, passes, data=calibration).save(dst, overwrite=True)


def _theirs(src: Path, dst: Path, calibration, *, bits=4, block_size=128, gptq=False,
            op_types=("MatMul",)) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self):
            return next(self.batches, None)

    algo = (nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(),
                                            block_size=block_size, op_types_to_quantize=op_types)
            if gptq else nbits.DefaultWeightOnlyQuantConfig(
                block_size=block_size, bits=bits, op_types_to_quantize=op_types))
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size,
                                           op_types_to_quantize=op_types, algo_config=algo)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def variants(quick: bool):
    """(label, build(src, dst, calibration)) of every variant but FP32."""
    sys.path.insert(0, str(common.ROOT))
    from onnxpress.passes.quantize.weight_only import QuantizeWeights
    from onnxpress.recipes import RECIPES

    rtn4 = ["fuse", QuantizeWeights(bits=4, block_size=32, method="rtn")]
    found = [
        ("onnxpress int4-weights (GPTQ, b32)", lambda s, d, c: _ours(RECIPES["int4-weights"],
                                                                     s, d, c)),
        ("onnxpress int4 RTN (b32)", lambda s, d, c: _ours(rtn4, s, d, c)),
        ("onnxpress int8-weights (b128)", lambda s, d, c: _ours(RECIPES["int8-weights"],
                                                                s, d, c)),
        ("onnxruntime 4-bit RTN (default, b128)", lambda s, d, c: _theirs(s, d, c)),
        ("onnxruntime 4-bit RTN (b32)", lambda s, d, c: _theirs(s, d, c, block_size=32)),
        ("onnxruntime 4-bit GPTQ (b128)", lambda s, d, c: _theirs(s, d, c, gptq=True)),
        ("onnxruntime 8-bit (b128)", lambda s, d, c: _theirs(s, d, c, bits=8)),
        ("onnxruntime 4-bit MatMul+Gather (b128)",
         lambda s, d, c: _theirs(s, d, c, op_types=("MatMul", "Gather"))),
    ]
    return found[:2] if quick else found


def embeddings(sess, feeds) -> np.ndarray:
    return np.concatenate([sess.run(["sentence_embedding"], f)[0] for f in feeds])


def main(argv=None) -> None:
    import onnx
    import onnxruntime as ort

    args = common.parse_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), argv)
    data = minilm_data.load()
    calibration = data.feeds(data.calibration[:32 if args.quick else CALIBRATION], 32)
    evaluation = data.feeds(data.evaluation[:64 if args.quick else None], 64)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    def session(path):
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    fp32 = session(data.path)
    reference = embeddings(fp32, evaluation)
    size0 = data.path.stat().st_size
    rows, sessions = [], {"FP32": fp32}
    built = {"FP32": ("1.000", "1.00000", "1.00000", "")}
    with tempfile.TemporaryDirectory(prefix="weights-bench-") as tmp:
        for number, (label, build) in enumerate(variants(args.quick)):
            dst = Path(tmp) / f"v{number}.onnx"
            start = time.perf_counter()
            try:
                build(data.path, dst, calibration)
                seconds = time.perf_counter() - start
                onnx.checker.check_model(str(dst), full_check=True)
                sess = session(dst)
            except Exception as e:  # noqa: BLE001  (a tool's failure is a result to report)
                traceback.print_exc(file=sys.stderr)
                built[label] = ("", "", "", (f"fails: {type(e).__name__}: "
                                             f"{str(e).splitlines()[0][:120]}"))
                continue
            c = minilm_data.cosines(reference, embeddings(sess, evaluation))
            built[label] = (f"{dst.stat().st_size / size0:.3f}", f"{c.mean():.5f}",
                            f"{c.min():.5f}", f"{seconds:.0f} s")
            sessions[label] = sess
            print(label, built[label], file=sys.stderr, flush=True)
        feeds = {"@32": evaluation[0] if not args.quick else calibration[0],
                 "@1": data.tokenize(data.evaluation[:1])}
        feeds["@32"] = {k: v[:32] for k, v in feeds["@32"].items()}
        medians = {}
        for batch, feed in feeds.items():
            common.warm_up(sessions, feed, 3)
            rounds = 3 if args.quick else (15 if batch == "@32" else 60)
            times = common.time_rounds(sessions, feed, rounds)
            medians[batch] = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    for label, (size, mean, low, note) in built.items():
        if label in sessions:
            lat = [f"{medians[b][label]:.2f} ({medians[b][label] / medians[b]['FP32']:.2f}x)"
                   for b in ("@32", "@1")]
        else:
            lat = ["", ""]
        rows.append([label, size, mean, low, *lat, note])
    table = common.markdown_table(
        ["variant", "file / FP32", "cosine mean", "cosine min", "ms @32 (ratio)",
         "ms @1 (ratio)", "quantize time / note"], rows, "lrrrrrl")
    text = (f"MiniLM (all-MiniLM-L6-v2), {len(reference)} evaluation sentences; GPTQ data: "
            f"{sum(len(b['input_ids']) for b in calibration)} calibration sentences. Latency: "
            f"medians of interleaved rounds, onnxruntime {ort.__version__} CPU, {THREADS} "
            f"intra-op thread, {common.cpu_model()}, load {common.load_average()}, "
            f"{common.utc_now()}.\n\n{table}")
    print(text)
    if not args.quick:
        common.write_section(SECTION, "weights.py", text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
