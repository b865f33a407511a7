"""Build large MLPs for the memory benchmark (``benchmarks/memory.py``); never committed.

``python models/large.py [--size-mb 400] [--out models/build]`` writes ``mlp-<size>mb.onnx``: a
chain of ``MatMul(h, W_i) -> Add(b_i) -> Relu`` with ``4096 x 4096`` float32 weights (64 MiB
each), plus a decomposed pattern per layer for the passes to work on (an Identity, a
BatchNormalization after the Add that fuse folds). Models under 2 GB are one file; larger ones
keep their weights in external data, written tensor by tensor so that no protobuf message over
2 GB is ever built (that is what the benchmark checks onnxpress can do too).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

DIM = 4096
LAYER_BYTES = DIM * DIM * 4


def build(size_mb: int, out: Path) -> Path:
    """Write the model of about `size_mb` MiB of weights into `out`; return its path."""
    layers = max(1, round(size_mb * 2**20 / LAYER_BYTES))
    external = layers * LAYER_BYTES >= 2**31 - 2**26
    name = f"mlp-{size_mb}mb"
    path = out / f"{name}.onnx"
    data_name = f"{name}.weights"
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    offset = 0
    data = open(out / data_name, "wb") if external else None  # noqa: SIM115 (closed below)
    h = "x"
    for i in range(layers):
        w = (rng.standard_normal((DIM, DIM), np.float32) / np.sqrt(DIM)).astype(np.float32)
        tensor = onnx.numpy_helper.from_array(w, f"w{i}")
        if data is not None:
            raw = tensor.raw_data
            data.write(raw)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)),
                               ("length", str(len(raw)))):
                tensor.external_data.add(key=key, value=value)
            offset += len(raw)
        initializers.append(tensor)
        del w
        small = {f"b{i}": rng.standard_normal(DIM).astype(np.float32) * 0.1,
                 f"s{i}": rng.uniform(0.5, 1.5, DIM).astype(np.float32),
                 f"t{i}": rng.standard_normal(DIM).astype(np.float32) * 0.1,
                 f"m{i}": rng.standard_normal(DIM).astype(np.float32) * 0.1,
                 f"v{i}": rng.uniform(0.5, 1.5, DIM).astype(np.float32)}
        initializers += [onnx.numpy_helper.from_array(v, k) for k, v in small.items()]
        nodes += [helper.make_node("Identity", [h], [f"i{i}"]),
                  helper.make_node("MatMul", [f"i{i}", f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("BatchNormalization", [f"a{i}", f"s{i}", f"t{i}", f"m{i}",
                                                          f"v{i}"], [f"n{i}"]),
                  helper.make_node("Relu", [f"n{i}"], [f"h{i}"])]
        h = f"h{i}"
    if data is not None:
        data.close()
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, DIM])], [helper.make_tensor_value_info(
            h, TensorProto.FLOAT, [1, DIM])], initializers)
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)
    return path


def main() -> None:
    """Command line: build the model(s) asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, nargs="+", default=[400])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "build")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for size in args.size_mb:
        print(build(size, args.out))


if __name__ == "__main__":
    main()
