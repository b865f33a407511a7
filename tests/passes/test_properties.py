"""Properties of `fuse` on random graphs: equivalent outputs, deterministic, idempotent.

Hypothesis draws a recipe — the input rank (2 or 4), a list of steps and a weight seed — and
`_build` turns it into a valid model, tracking the current tensor's shape so every step fits.
Steps are Conv (with or without bias, optionally behind a zero Pad), BatchNormalization, Relu,
Add (of an earlier tensor of the same shape when there is one, so intermediates get a second
reader; else of a constant), MatMul on the last axis (optionally with a bias Add, optionally
with a transposed constant weight), a random Transpose and a cancelling Transpose pair. Some
intermediates are also exposed as graph outputs, which must block fusions through them.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from zoo import feed_list

from onnxpress import load, optimize
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context
from onnxpress.passes.fusion.pipeline import Fuse
from onnxpress.targets import get_target
from onnxpress.testing import assert_same_outputs

STEPS = {
    2: ["bn", "relu", "add", "matmul", "transpose", "transpose_pair"],
    4: ["conv", "pad_conv", "bn", "relu", "add", "matmul", "transpose", "transpose_pair"],
}


class _Builder:
    """Appends ONNX nodes to a chain, keeping the current tensor and its static shape."""

    def __init__(self, shape: list[int], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.current, self.shape = "x", list(shape)
        self.seen: list[tuple[str, list[int]]] = [("x", list(shape))]

    def name(self) -> str:
        return f"t{len(self.nodes) + len(self.inits)}"

    def const(self, value: np.ndarray) -> str:
        name = self.name()
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def weight(self, *shape: int) -> str:
        """A weight scaled by 1/sqrt(fan-in) so values stay O(1) along the chain."""
        fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
        return self.const(self.rng.standard_normal(shape) / np.sqrt(fan_in))

    def emit(self, op: str, inputs: list[str], **attrs) -> str:
        """Add a node off the chain (a weight's Transpose) and return its output."""
        out = self.name()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def node(self, op: str, inputs: list[str], shape: list[int], **attrs) -> str:
        """Add a node that continues the chain: its output, of `shape`, becomes current."""
        out = self.emit(op, inputs, **attrs)
        self.current, self.shape = out, list(shape)
        self.seen.append((out, list(shape)))
        return out

    def step(self, kind: str) -> None:
        getattr(self, f"_{kind}")()

    def _conv(self, pad_first: bool = False) -> None:
        cin, spatial = self.shape[1], self.shape[2:]
        cout, k = int(self.rng.integers(2, 5)), int(self.rng.choice([1, 3]))
        inputs = [self.current, self.weight(cout, cin, k, k)]
        if self.rng.random() < 0.5:
            inputs.append(self.const(self.rng.standard_normal(cout)))
        pads = [k // 2] * 4
        if pad_first and k == 3:
            pads_in = np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64)
            self.inits.append(numpy_helper.from_array(pads_in, self.name()))
            inputs[0] = self.node("Pad", [self.current, self.inits[-1].name],
                                  [self.shape[0], cin, spatial[0] + 1, spatial[1] + 1])
            pads = [0, 1, 1, 0]
        self.node("Conv", inputs, [self.shape[0], cout, *spatial], kernel_shape=[k, k],
                  pads=pads)

    def _pad_conv(self) -> None:
        self._conv(pad_first=True)

    def _bn(self) -> None:
        c = self.shape[1]
        params = [self.const(self.rng.uniform(0.5, 1.5, c)), self.const(self.rng.normal(size=c)),
                  self.const(self.rng.normal(size=c)), self.const(self.rng.uniform(0.5, 1.5, c))]
        self.node("BatchNormalization", [self.current, *params], self.shape)

    def _relu(self) -> None:
        self.node("Relu", [self.current], self.shape)

    def _add(self) -> None:
        same = [name for name, shape in self.seen[:-1] if shape == self.shape]
        other = (same[int(self.rng.integers(len(same)))] if same
                 else self.const(self.rng.normal(size=[1, self.shape[1]] + [1] *
                                                 (len(self.shape) - 2))))
        self.node("Add", [self.current, other] if self.rng.random() < 0.5
                  else [other, self.current], self.shape)

    def _matmul(self) -> None:
        k, n = self.shape[-1], int(self.rng.integers(2, 5))
        if self.rng.random() < 0.3:  # exporters store Wᵀ and transpose it in the graph
            w = self.emit("Transpose", [self.weight(n, k)], perm=[1, 0])
        else:
            w = self.weight(k, n)
        self.node("MatMul", [self.current, w], [*self.shape[:-1], n])
        if self.rng.random() < 0.7:
            bias = self.const(self.rng.normal(size=n))
            self.node("Add", [self.current, bias] if self.rng.random() < 0.5
                      else [bias, self.current], self.shape)

    def _transpose(self) -> None:
        perm = [int(a) for a in self.rng.permutation(len(self.shape))]
        self.node("Transpose", [self.current], [self.shape[a] for a in perm], perm=perm)

    def _transpose_pair(self) -> None:
        perm = [int(a) for a in self.rng.permutation(len(self.shape))]
        shape = self.shape
        self.node("Transpose", [self.current], [shape[a] for a in perm], perm=perm)
        self.node("Transpose", [self.current], shape, perm=[int(a) for a in np.argsort(perm)])


@st.composite
def recipes(draw) -> tuple[int, list[str], int, list[int]]:
    """(input rank, steps, weight seed, indices of intermediates to expose as outputs)."""
    rank = draw(st.sampled_from(sorted(STEPS)))
    steps = draw(st.lists(st.sampled_from(STEPS[rank]), min_size=1, max_size=7))
    return (rank, steps, draw(st.integers(0, 2**16)),
            draw(st.lists(st.integers(0, 20), max_size=2, unique=True)))


def _build(rank: int, steps: list[str], seed: int, exposed: list[int]) -> Model:
    shape = [2, 3] if rank == 2 else [1, 3, 4, 5]
    b = _Builder(shape, seed)
    for kind in steps:
        b.step(kind)
    outputs = [b.current] + [b.seen[i][0] for i in exposed
                             if 0 < i < len(b.seen) - 1]
    shapes = dict(b.seen)
    graph = helper.make_graph(
        b.nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outputs],
        b.inits)
    return load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=8))


@settings(max_examples=25, deadline=None)
@given(recipes())
def test_fuse_is_exact_deterministic_and_idempotent(recipe):
    model = _build(*recipe)
    first = optimize(model, ["fuse"])
    assert_same_outputs(model, first, feed_list(model), rtol=1e-4, atol=1e-5)
    second = optimize(model, ["fuse"])
    assert first.to_onnx().SerializeToString() == second.to_onnx().SerializeToString()
    assert not Fuse().run(first, Context(target=get_target("cpu"))).changed
