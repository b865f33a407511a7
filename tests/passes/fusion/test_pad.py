"""fuse-pad: a zero constant Pad folded into the following Conv's / AveragePool's pads."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import feed_list

from onnxpress import optimize
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import explain
from onnxpress.passes.fusion.pad import FusePad, PadAveragePool, PadConv
from onnxpress.passes.manager import PassRecord
from onnxpress.testing import assert_same_outputs, make_model

RNG = np.random.default_rng(0)
CONV_W = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
CONV_B = RNG.standard_normal(4).astype(np.float32)
#: Pads of the Pad in the opset 11+ tests: 1/2 rows before/after, 2/1 columns before/after.
PADS = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)


def _model(body: str, opset: int = 17, y: str = "float[1,4,N,M] y", **inits) -> Model:
    return make_model(f'<ir_version: 8, opset_import: ["": {opset}]>\n'
                      f'g (float[1,2,6,6] x) => ({y}) {{\n{body}\n}}',
                      **{"w": CONV_W, "bias": CONV_B, **inits})


def _fuse(model: Model) -> tuple[Model, PassRecord]:
    out = optimize(model, [FusePad()])
    assert_same_outputs(model, out, feed_list(model), rtol=1e-4, atol=1e-5)
    return out, out.report["fuse-pad"]


def _ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]


def _folded(body: str, **kwargs) -> list[int]:
    """Fuse the model and return the remaining single node's pads."""
    out, rec = _fuse(_model(body, **kwargs))
    assert rec.changed
    [node] = out.graph.nodes
    assert node.inputs[0].name == "x"
    return node.attrs["pads"]


CONV = "y = Conv <kernel_shape = [3, 3], pads = [1, 0, 0, 1]> (p, w, bias)"


def test_pad_input_form_folds_into_conv_pads():
    out, rec = _fuse(_model(f"p = Pad (x, pads)\n{CONV}", pads=PADS))
    assert rec.stats == {"PadConv": 1, "PadAveragePool": 0}
    [conv] = out.graph.nodes
    assert conv.attrs["pads"] == [2, 2, 2, 2]
    assert [t.name for t in conv.inputs] == ["x", "w", "bias"]
    assert conv.attrs["kernel_shape"] == [3, 3] and conv.outputs[0].name == "y"


def test_pad_attribute_form_before_opset_11():
    assert _folded("p = Pad <pads = [0, 0, 1, 2, 0, 0, 2, 1], value = 0.0> (x)\n" + CONV,
                   opset=10) == [2, 2, 2, 2]


@pytest.mark.parametrize("axes", [[2, 3], [-2, -1]])
def test_pad_axes_input_of_opset_18(axes):
    pads = _folded(f"p = Pad (x, pads, zero, axes)\n{CONV}", opset=18,
                   pads=np.array([1, 2, 2, 1], np.int64), zero=np.array(0.0, np.float32),
                   axes=np.array(axes, np.int64))
    assert pads == [2, 2, 2, 2]


def test_explicit_zero_value_and_constant_node_pads_fold():
    body = ("q = Constant <value = int64[8] {0, 0, 1, 1, 0, 0, 1, 1}> ()\n"
            "z = Constant <value = float {0.0}> ()\n"
            "p = Pad <mode = \"constant\"> (x, q, z)\n"
            "y = Conv <kernel_shape = [3, 3]> (p, w, bias)")
    out, rec = _fuse(_model(body, opset=13))
    assert rec.changed and _ops(out) == ["Constant", "Constant", "Conv"]
    assert out.graph.nodes[-1].attrs["pads"] == [1, 1, 1, 1]


def test_strided_dilated_grouped_conv_folds():
    body = ("p = Pad (x, pads)\ny = Conv <kernel_shape = [2, 2], strides = [2, 1], "
            "dilations = [1, 2], group = 2> (p, w)")
    assert _folded(body, pads=PADS, w=CONV_W[:, :1, :2, :2]) == [1, 2, 2, 1]


@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_average_pool_counting_pads_folds(ceil_mode):
    body = ("p = Pad (x, pads)\ny = AveragePool <kernel_shape = [4, 4], strides = [2, 2], "
            f"count_include_pad = 1, ceil_mode = {ceil_mode}, pads = [0, 1, 1, 0]> (p)")
    out, rec = _fuse(_model(body, y="float[1,2,N,M] y", pads=PADS))
    assert rec.stats == {"PadConv": 0, "PadAveragePool": 1}
    assert out.graph.nodes[0].attrs["pads"] == [1, 3, 3, 1]


# Each case: the model body, its initializers, its outputs, and the reason explain() gives.
Y = "float[1,C,N,M] y"
REJECTED = {
    "average-pool-excluding-pads": (
        "p = Pad (x, pads)\ny = AveragePool <kernel_shape = [3, 3]> (p)", {"pads": PADS}, Y,
        "count_include_pad=0"),
    "pool-pads-reach-kernel": (
        "p = Pad (x, pads)\ny = AveragePool <kernel_shape = [2, 2], count_include_pad = 1> (p)",
        {"pads": PADS}, Y, "reach the kernel size [2, 2]"),
    "max-pool": (
        "p = Pad (x, pads)\ny = MaxPool <kernel_shape = [3, 3]> (p)", {"pads": PADS}, Y, None),
    "nonzero-value": (
        f"p = Pad (x, pads, one)\n{CONV}", {"pads": PADS, "one": np.array(1.0, np.float32)}, Y,
        "value is 1.0"),
    "reflect": (
        f"p = Pad <mode = \"reflect\"> (x, pads)\n{CONV}", {"pads": PADS}, Y, "mode is reflect"),
    "channel-pad": (
        f"p = Pad (x, pads)\n{CONV}", {"pads": np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64),
                                       "w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)},
        Y, "channel axis"),
    "batch-pad": (
        f"p = Pad (x, pads)\n{CONV}", {"pads": np.array([0, 0, 0, 0, 1, 0, 0, 0], np.int64)}, Y,
        "channel axis"),
    "crop": (
        f"p = Pad (x, pads)\n{CONV}", {"pads": np.array([0, 0, -1, 0, 0, 0, 0, 0], np.int64)}, Y,
        "negative pads"),
    "auto-pad": (
        "p = Pad (x, pads)\ny = Conv <kernel_shape = [3, 3], auto_pad = \"SAME_UPPER\"> (p, w)",
        {"pads": PADS}, Y, "auto_pad=SAME_UPPER"),
    "dynamic-pads": (
        f"s = Shape (x)\nz = Sub (s, s)\nh = Concat <axis = 0> (z, z)\np = Pad (x, h)\n{CONV}",
        {}, Y, "pads input is not constant"),
    "other-consumer": (
        f"p = Pad (x, pads)\n{CONV}\nz = Relu (p)", {"pads": PADS},
        "float[1,4,N,M] y, float[1,2,9,9] z", "is also read by"),
    "graph-output": (
        f"p = Pad (x, pads)\n{CONV}", {"pads": PADS}, "float[1,4,N,M] y, float[1,2,9,9] p",
        "is a graph output"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_pad_that_must_not_fold(case):
    body, inits, outputs, reason = REJECTED[case]
    model = _model(body, y=outputs, **inits)
    out, rec = _fuse(model)
    assert not rec.changed and rec.stats == {"PadConv": 0, "PadAveragePool": 0}
    assert _ops(out) == _ops(model)
    if reason is not None:
        rule = PadAveragePool() if "AveragePool" in body else PadConv()
        assert reason in explain(model, rule)
