"""Memory of large models: peak resident memory / model size for load, cleanup, fuse and save.

    python benchmarks/memory.py                  # 400 MB and 2.2 GB MLPs (built on first run)
    python benchmarks/memory.py --sizes 400      # the 400 MB one only
    python benchmarks/memory.py --quick          # a 64 MB model: a smoke test

The models are built by ``models/large.py`` into ``models/build/`` (gitignored): a chain of
``Identity -> MatMul(4096 x 4096 float32) -> Add -> BatchNormalization -> Relu`` layers, so
``cleanup`` removes the Identities and ``fuse`` folds every MatMul + Add + BN into a Gemm, i.e.
rewrites every weight. Under 2 GB the model is one file; the 2.2 GB one keeps its weights in
external data (no single protobuf message may exceed 2 GB).

Each job runs in a fresh process (``common.run_child``), measured after its imports:

- ``load``: ``onnxpress.load(path)``;
- ``cleanup`` / ``fuse``: ``onnxpress.optimize(path, [pass])`` (load included);
- ``save``: load, then ``model.save`` into a temporary folder beside the model (external data
  when the model needs it);
- ``fuse+save``: ``fuse``, then save the result (every weight is a new array by then).

"peak / size" is the growth of the peak resident memory (VmHWM after a reset, minus the
resident size on entry) divided by the model's weight bytes; 1.0 means one copy of the weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import common

JOBS = ("load", "cleanup", "fuse", "save", "fuse+save")
BUILD = common.ROOT / "models" / "build"


def measure(path: str, job: str) -> dict:
    """Run `job` on the model at `path` in this (fresh) process; return time and peak."""
    import onnxpress as ox

    with tempfile.TemporaryDirectory(dir=Path(path).parent) as folder:
        with common.measured() as cost:
            if job == "load":
                model = ox.load(path)
            elif job == "save":
                model = ox.load(path)
                model.save(Path(folder) / "saved.onnx")
            else:
                model = ox.optimize(path, [job.removesuffix("+save")])
                if job.endswith("+save"):
                    model.save(Path(folder) / "saved.onnx")
        nodes = len(model)
    return {"seconds": cost.seconds, "peak_mib": cost.peak_mib, "nodes": nodes}


def _model(size_mb: int) -> Path:
    path = BUILD / f"mlp-{size_mb}mb.onnx"
    if not path.exists():
        subprocess.run([sys.executable, str(common.ROOT / "models" / "large.py"), "--size-mb",
                        str(size_mb), "--out", str(BUILD)], check=True)
    return path


def _weight_bytes(path: Path) -> int:
    """Bytes of the model's tensors: the file, plus its external data files."""
    return sum(p.stat().st_size for p in path.parent.glob(path.stem + ".*")
               if p.suffix in (".onnx", ".weights"))


def main(argv: list[str] | None = None) -> None:
    """Measure every job on every model and print (and record) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 2200],
                        help="model sizes in MiB of weights")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = common.parse_args(parser, argv, sizes=[64])
    if args.child:
        common.reply(measure(*json.loads(args.child)))
        return
    rows = []
    for size in args.sizes:
        path = _model(size)
        weights = _weight_bytes(path)
        for job in args.jobs:
            child = common.run_child(__file__, [str(path), job], cwd=common.ROOT)
            if child.result is None:
                rows.append([path.name, f"{weights / 2**20:,.0f}", job, "–", "–", "–",
                             f"failed ({child.returncode}): {child.stderr_tail[:120]}"])
            else:
                r = child.result
                rows.append([path.name, f"{weights / 2**20:,.0f}", job, f"{r['seconds']:.1f}",
                             f"{r['peak_mib']:,.0f}", f"{r['peak_mib'] * 2**20 / weights:.2f}",
                             f"{r['nodes']} nodes"])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    table = common.markdown_table(["model", "size (MiB)", "job", "time (s)", "peak growth (MiB)",
                                   "peak / size", "result"], rows, "lrlrrrl")
    text = (f"{common.utc_now()}, {common.cpu_model()}, load average "
            f"{common.load_average()}\n\n{table}")
    print(text)
    if not args.quick:
        common.write_section("## Memory", "memory.py", text)


if __name__ == "__main__":
    main()
