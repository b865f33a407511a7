"""Calibration side by side: onnxpress ``calibrate`` vs onnxruntime.quantization's calibrators.

    python benchmarks/calibration.py                      # the demo model and EDGE_MODEL
    python benchmarks/calibration.py model.onnx --data calib.npz --scale 1 10
    python benchmarks/calibration.py --quick              # smoke test: one run, data ×1

For each model, data size and method (minmax, percentile, entropy) both tools calibrate the
same activations on the same batches, and the script prints one Markdown table: wall time,
peak memory, tensors, and how far onnxruntime's ranges are from ours. By default the models are
the demo digits CNN (its calibration data) and `EDGE_MODEL` (random data): a float16 branch
with a small range and an all-zero tensor, the activations histogram code must not crash on.

Fairness:

- Every measurement runs in a fresh subprocess, so neither tool inherits the other's heap,
  onnxruntime arenas or warm caches; each tool's cost includes building its probe / augmented
  model and session, every batch, and the range computation.
- Peak memory is the growth of resident memory during calibration (`common.measured`): the
  kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs just before
  calibrating) minus the resident size at that moment, after imports and data loading. Unlike
  tracemalloc it counts onnxruntime's native allocations, which both tools make. Without /proc
  (not Linux) the process-lifetime ru_maxrss is used instead, which can only overstate the
  growth.
- Same inputs: batch size 32, the same op types (onnxruntime's ``op_types_to_calibrate`` is
  our `QUANTIZABLE_OPS`, so both pick the float inputs/outputs of the same nodes), 2048
  histogram bins and percentile 99.999 for both. onnxruntime's entropy calibrator is run twice:
  with its defaults (128 bins, for which its search has a single candidate) and with 2048 bins
  like ours; failures are reported with their error text.
- "Δ vs ours" is the median over common tensors of ``|amax_ort - amax_ours| / amax_ours``.
- The data is tiled ``--scale`` times to show how memory follows the dataset size.
- Time and memory are medians over ``--repeat`` runs (fresh processes each).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import common
import numpy as np

METHODS = ("minmax", "percentile", "entropy")
BATCH = 32
BINS = 2048
PERCENTILE = 99.999

#: A float16 activation of range ~4e-4 (numpy's histogram cannot make 2048 float16 bins of
#: it) and an all-zero product, behind ordinary float32 ones.
EDGE_MODEL = """<ir_version: 8, opset_import: ["": 17]>
edge (float[N, 64] x) => (float[N, 64] y, float[N, 64] z, float[N, 64] w) {
    y = Relu(x)
    h = Cast<to=10>(x)
    small = Mul(h, tiny)
    positive = Relu(small)
    z = Cast<to=1>(positive)
    w = Mul(x, zero)
}"""

#: Measurements per model and data size: (tool, method, onnxruntime extra_options, label).
#: onnxruntime's percentile defaults already are 2048 bins and 99.999.
RUNS = (
    ("onnxpress", "minmax", {}, "onnxpress"),
    ("onnxruntime", "minmax", {}, "onnxruntime"),
    ("onnxpress", "percentile", {}, "onnxpress"),
    ("onnxruntime", "percentile", {}, "onnxruntime"),
    ("onnxpress", "entropy", {}, "onnxpress"),
    ("onnxruntime", "entropy", {}, "onnxruntime (defaults: 128 bins)"),
    ("onnxruntime", "entropy", {"num_bins": BINS}, f"onnxruntime ({BINS} bins)"),
)


# --------------------------------------------------------------------------------------------
# Child process: one measurement
def _load_arrays(data: str | None, model_path: str, samples: int, scale: int
                 ) -> dict[str, np.ndarray]:
    from onnxpress.ir import load
    from onnxpress.runtime.data import DataSource

    source = (DataSource.from_npz(data) if data else
              DataSource.random(load(model_path), samples, seed=0))
    return {k: np.concatenate([v] * scale) for k, v in source.arrays.items()}


def _ours(model_path: str, arrays: dict, method: str) -> dict[str, tuple[float, float]]:
    from onnxpress.ir import load
    from onnxpress.passes.base import Context
    from onnxpress.passes.calibrate import Calibrate
    from onnxpress.runtime.data import DataSource
    from onnxpress.targets import get_target

    ctx = Context(target=get_target("cpu"), data=DataSource.from_arrays(arrays))
    Calibrate(method=method, bins=BINS, percentile=PERCENTILE, batch_size=BATCH).run(
        load(model_path), ctx)
    return {name: (r.min, r.max) for name, r in ctx.calibration.ranges.items()}


def _onnxruntime(model_path: str, arrays: dict, method: str, options: dict
                 ) -> dict[str, tuple[float, float]]:
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
    )

    from onnxpress.passes.calibrate.calibrate import QUANTIZABLE_OPS

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            total = len(next(iter(arrays.values())))
            self.batches = iter([{k: v[i:i + BATCH] for k, v in arrays.items()}
                                 for i in range(0, total, BATCH)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        calibrator = create_calibrator(
            Path(model_path), sorted(QUANTIZABLE_OPS),
            augmented_model_path=str(Path(folder) / "augmented.onnx"),
            calibrate_method={"minmax": CalibrationMethod.MinMax,
                              "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[method],
            extra_options=options)
        calibrator.collect_data(Reader())
        data = calibrator.compute_data()
    # MinMax gives 1-element arrays, the histogram methods 0-d ones.
    return {name: (float(np.ravel(t.range_value[0])[0]), float(np.ravel(t.range_value[1])[0]))
            for name, t in data.data.items()}


def measure(tool: str, method: str, options: dict, model_path: str, data: str | None,
            samples: int, scale: int) -> dict:
    """Run one calibration in this process; the numbers the parent tabulates."""
    arrays = _load_arrays(data, model_path, samples, scale)
    if tool == "onnxruntime":  # import before the baseline, as onnxpress is imported below
        import onnxruntime.quantization.calibrate  # noqa: F401
    import onnxpress.passes.calibrate  # noqa: F401

    result: dict = {"samples": len(next(iter(arrays.values())))}
    with common.measured() as cost:
        try:
            ranges = (_ours(model_path, arrays, method) if tool == "onnxpress"
                      else _onnxruntime(model_path, arrays, method, options))
            result["ranges"] = ranges
        except Exception as e:  # noqa: BLE001 (onnxruntime's calibrators fail in assorted types)
            result["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:120]
    result["seconds"], result["peak_mib"] = cost.seconds, cost.peak_mib
    return result


# --------------------------------------------------------------------------------------------
# Parent process: run every measurement in a subprocess and tabulate
def _spawn(tool: str, method: str, options: dict, model: str, data: str | None,
           samples: int, scale: int) -> dict:
    child = common.run_child(__file__, [tool, method, options, model, data, samples, scale],
                             cwd=tempfile.gettempdir())  # ORT's calibrator may write to cwd
    if child.returncode != 0 or child.result is None:
        return {"error": f"crashed: {(child.stderr_tail or 'no output')[:120]}",
                "seconds": float("nan"), "peak_mib": float("nan"), "samples": 0}
    return child.result


def _delta(theirs: dict, ours: dict) -> str:
    shared = [n for n in ours if n in theirs and max(map(abs, ours[n])) > 0]
    if not shared:
        return "–"
    rel = [abs(max(map(abs, theirs[n])) - max(map(abs, ours[n]))) / max(map(abs, ours[n]))
           for n in shared]
    return f"{np.median(rel):.1%}"


def main(argv: list[str] | None = None) -> None:
    """Measure every run for every model and data size, then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="ONNX models (default: the demo model)")
    parser.add_argument("--data", help=".npz keyed by input name (default: the demo's "
                        "calibration data for the demo model, random data otherwise)")
    parser.add_argument("--samples", type=int, default=256, help="random samples per model")
    parser.add_argument("--scale", type=int, nargs="+", default=[1, 10],
                        help="tile the data this many times (one row group per value)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = common.parse_args(parser, argv, repeat=1, scale=[1], samples=64)
    if args.child:
        common.reply(measure(*json.loads(args.child)))
        return

    from onnxpress import demo
    from onnxpress.testing import make_model

    folder = tempfile.TemporaryDirectory()
    edge = make_model(EDGE_MODEL, tiny=np.float16(1e-4), zero=np.float32(0)).save(
        Path(folder.name) / "edge_fp16_small_range.onnx")
    models = ([str(Path(m).resolve()) for m in args.models]
              or [str(demo.model_path()), str(edge)])
    rows = []
    for model in models:
        data = (str(Path(args.data).resolve()) if args.data else
                str(Path(demo.__file__).parent / "digits_calib.npz")
                if Path(model) == demo.model_path() else None)
        for scale in args.scale:
            ours: dict = {}
            for tool, method, options, label in RUNS:
                runs = [_spawn(tool, method, options, model, data, args.samples, scale)
                        for _ in range(args.repeat)]
                r = dict(runs[0], seconds=float(np.median([x["seconds"] for x in runs])),
                         peak_mib=float(np.median([x["peak_mib"] for x in runs])))
                ranges = r.get("ranges", {})
                if tool == "onnxpress":
                    ours[method] = ranges
                print(f"{Path(model).name} ×{scale} {method} {label}: "
                      f"{r['seconds']:.2f} s, {r['peak_mib']:.1f} MiB", file=sys.stderr)
                rows.append([
                    Path(model).name, str(r["samples"]), method, label, f"{r['seconds']:.2f}",
                    f"{r['peak_mib']:.1f}", str(len(ranges) or "–"),
                    _delta(ranges, ours.get(method, {})) if tool != "onnxpress" else "–",
                    r.get("error", "")])
    print(common.markdown_table(["model", "samples", "method", "tool", "time (s)",
                                 "peak memory growth (MiB)", "tensors", "Δ amax vs ours",
                                 "error"], rows, "lrllrrrrl"))
    folder.cleanup()


if __name__ == "__main__":
    main()
