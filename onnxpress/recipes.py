"""Recipes: named pass lists for common goals, so users need not know the pass names.

A recipe is a plain list of passes (registered names or pass objects) — no new concept:
``optimize(model, RECIPES["int8-cpu"], data=...)`` is the same as naming the passes. The
CLI's ``--recipe`` and ``onnxpress demo`` read this table, so a recipe added here is
immediately available in both. `RECIPE_TARGETS` names the target a recipe is made for when
it is not ``cpu``.
"""

from onnxpress.passes.base import Pass
from onnxpress.passes.calibrate import Calibrate
from onnxpress.passes.quantize.weight_only import QuantizeWeights
from onnxpress.passes.sparsity.channels import PruneChannels
from onnxpress.passes.sparsity.guarded import PruneGuarded

#: Recipe name → passes, run in order.
RECIPES: dict[str, list[str | Pass]] = {
    "cleanup": ["cleanup"],
    "fuse": ["fuse"],
    # Percentile ranges measured best on MiniLM (mean embedding cosine 0.9931 vs minmax
    # 0.9929, mse 0.9929, entropy 0.963) and equal to minmax on the digits CNN.
    # mixed-precision is quantize-static guarded on held-back samples of the data: within
    # cosine / top-1 agreement 0.99 of FP32 (falling back by measured sensitivity) and not
    # slower than the float model on cpu — or an error with the numbers.
    "int8-cpu": ["fuse", Calibrate(method="percentile"), "mixed-precision"],
    "dynamic-int8": ["fuse", "quantize-dynamic"],
    # Weight-only: activations stay float, weights and embedding tables shrink. MiniLM:
    # int4 GPTQ blocks of 32 (asymmetric) at cosine 0.9913 and 0.16x the FP32 file (RTN:
    # 0.9751); int8 blocks of 128 at 0.9998 and 0.26x (benchmarks/RESULTS.md, weights.py).
    "int4-weights": ["fuse", QuantizeWeights(bits=4, block_size=32, method="gptq")],
    "int8-weights": ["fuse", QuantizeWeights(bits=8, block_size=128, method="rtn")],
    # Remove 30% of the channels, then refit the layers that read them by least squares
    # against the original model's activations (the teacher): no retraining; guarded on
    # held-back samples (prune less, or a GuardError with the numbers). Widths move in steps of
    # 16 even on this AVX2 machine (NCHWc block 8): digits measured round_to=8 0.834x latency,
    # round_to=16 0.631x at -0.19 points (benchmarks/RESULTS.md).
    "prune-channels": ["fuse", PruneGuarded(PruneChannels(ratio=0.3, round_to=16)), "cleanup"],
    # Prune then quantize: ranges are calibrated on the pruned, refitted graph, and
    # mixed-precision guards the end result against the FP32 input (the teacher).
    "prune-int8": ["fuse", PruneGuarded(PruneChannels(ratio=0.3, round_to=16)), "cleanup",
                   Calibrate(method="percentile"), "mixed-precision"],
    # TensorRT fuses BatchNorm itself and wants float bias: cleanup only, then symmetric Q/DQ.
    # Ranges are computed with onnxruntime on the CPU (the same FP32 model on any provider).
    "int8-tensorrt": ["cleanup", Calibrate(method="percentile", run_on="cpu"),
                      "mixed-precision"],
    # 2:4 weights run on TensorRT's sparse tensor cores only with int8 or fp16 alongside
    # (R-B8); sparsity goes first so the quantization ranges see the sparse weights' outputs.
    "sparse24-tensorrt": ["cleanup", "sparsify-2to4",
                          Calibrate(method="percentile", run_on="cpu"), "quantize-static"],
}

#: Recipes made for a target other than "cpu".
RECIPE_TARGETS: dict[str, str] = {"int8-tensorrt": "tensorrt", "sparse24-tensorrt": "tensorrt"}
