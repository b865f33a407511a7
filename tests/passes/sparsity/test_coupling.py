"""Channel coupling: groups, index maps and frozen reasons on zoo and hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import MODELS_DIR, ZOO

import onnxpress as ox
from onnxpress import demo
from onnxpress.ir.model import Model
from onnxpress.passes.sparsity.coupling import (
    ChannelGroup,
    Layout,
    Segment,
    analyze,
    channel_groups,
    describe_groups,
    node_label,
)
from onnxpress.testing import make_model

RNG = np.random.default_rng(0)
HEADER = '<ir_version: 8, opset_import: ["": 17]>'


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _model(signature: str, body: str, **inits: np.ndarray) -> Model:
    return make_model(f"{HEADER}\ng {signature} {{\n{body}\n}}", **inits)


def _by_producer(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {g.label: g for g in groups}


def _names(nodes) -> list[str]:
    return [node_label(n) for n in nodes]


# --------------------------------------------------------------------------------------------
# Layout algebra
def test_positions_follow_offsets_and_strides():
    layout = Layout(1, 2, (Segment(0, 3, 1), Segment(1, 2, 4)))  # Concat, then stride 4
    assert layout.width == 11
    assert layout.positions({}) is None
    np.testing.assert_array_equal(layout.positions({1: np.array([1])}), [0, 1, 2, 7, 8, 9, 10])
    np.testing.assert_array_equal(layout.positions({0: np.array([0, 2])}),
                                  [0, 2, *range(3, 11)])
    assert layout.index_maps([1]) == [(3, 4)]


# --------------------------------------------------------------------------------------------
# Zoo graphs
def test_zoo_residual_couples_the_branch_with_the_block_input_which_freezes_it():
    first, second = channel_groups(ZOO["residual_add"]())
    assert first.frozen is None and first.channels == 4
    assert _names(first.through) == ["BatchNormalization→n1"]
    assert _names(c for c, _ in first.consumers) == ["Conv→c2"]
    assert "graph input 'x'" in second.frozen and "Add node 'Add→s'" in second.frozen


def test_zoo_concat_outputs_are_frozen_each_in_its_own_group():
    groups = channel_groups(ZOO["concat"]())
    assert [g.channels for g in groups] == [4, 4]
    assert all(g.frozen == "reaches graph output 'y'" for g in groups)


def test_zoo_depthwise_on_a_graph_input_opens_no_group():
    assert channel_groups(ZOO["depthwise_conv"]()) == []


def test_zoo_flatten_gemm_output_is_frozen():
    (group,) = channel_groups(ZOO["gemm"]())
    assert group.channels == 10 and group.frozen == "reaches graph output 'y'"


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_graph_is_analyzed_without_error(name):
    for line in describe_groups(ZOO[name]()):
        assert line.startswith("group ")


# --------------------------------------------------------------------------------------------
# Hand-built graphs: every mapping
def cnn() -> Model:
    """Stem, a residual block, Concat of two branches, depthwise, MaxPool, Flatten → Gemm."""
    return _model("(float[1,3,8,8] x) => (float[1,10] y)", """
        s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, ws, bs)
        r0 = Relu (s)
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r0, wa, ba)
        ra = Relu (a)
        b = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (ra, wb, bb)
        n = BatchNormalization (b, g, beta, mean, var)
        res = Add (n, r0)
        r1 = Relu (res)
        p = Conv <kernel_shape = [1, 1]> (r1, wp, bp)
        q = Conv <kernel_shape = [1, 1]> (r1, wq, bq)
        cat = Concat <axis = 1> (p, q)
        rc = Relu (cat)
        d = Conv <group = 12, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (rc, wd, bd)
        m = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (d)
        f = Flatten <axis = 1> (m)
        h = Gemm <transB = 1> (f, wh, bh)
        rh = Relu (h)
        y = Gemm <transB = 1> (rh, wo, bo)
    """, ws=_w(8, 3, 3, 3), bs=_w(8), wa=_w(8, 8, 3, 3), ba=_w(8), wb=_w(8, 8, 3, 3), bb=_w(8),
        g=_w(8), beta=_w(8), mean=_w(8), var=np.ones(8, np.float32), wp=_w(4, 8, 1, 1),
        bp=_w(4), wq=_w(8, 8, 1, 1), bq=_w(8), wd=_w(12, 1, 3, 3), bd=_w(12), wh=_w(16, 192),
        bh=_w(16), wo=_w(10, 16), bo=_w(10))


def test_cnn_groups_index_maps_and_members():
    groups = _by_producer(channel_groups(cnn()))
    assert list(groups) == ["Conv→s+Conv→b", "Conv→a", "Conv→p", "Conv→q", "Gemm→h", "Gemm→y"]
    residual = groups["Conv→s+Conv→b"]
    assert residual.channels == 8 and residual.frozen is None
    assert _names(c for c, _ in residual.consumers) == ["Conv→a", "Conv→p", "Conv→q"]
    assert _names(residual.through) == ["BatchNormalization→n"]
    # Concat: p's channels first, q's after them; depthwise passes both through; MaxPool
    # leaves 4x4 = 16 features per channel for the Gemm after Flatten.
    assert _names(c for c, _ in groups["Conv→p"].consumers) == ["Gemm→h"]
    assert groups["Conv→p"].consumers[0][1] == [(0, 16)]
    assert _names(groups["Conv→p"].through) == ["Conv→d"]
    assert groups["Conv→q"].consumers[0][1] == [(64, 16)]
    assert groups["Gemm→h"].consumers[0][1] == [(0, 1)]
    assert groups["Gemm→y"].frozen == "reaches graph output 'y'"


def test_edits_cover_weights_biases_bn_depthwise_and_group():
    edits = analyze(cnn()).edits
    touched = {(node_label(e.node), type(e).__name__, getattr(e, "index", None),
                getattr(e, "axis", None)) for e in edits}
    assert {("Conv→a", "SliceInput", 1, 1), ("Conv→a", "SliceInput", 1, 0),
            ("Conv→a", "SliceInput", 2, 0), ("BatchNormalization→n", "SliceInput", 4, 0),
            ("Conv→d", "SliceInput", 1, 0), ("Conv→d", "SetGroup", None, None),
            ("Gemm→h", "SliceInput", 1, 1), ("Gemm→h", "SliceInput", 2, 0)} <= touched


def test_reshape_into_matmul_maps_strides_and_rewrites_the_shape():
    model = _model("(float[2,3,4,4] x) => (float[2,5] y)", """
        c = Conv <kernel_shape = [1, 1]> (x, wc, bc)
        r = Relu (c)
        p = Pad (r, pads)
        u = Resize (p, roi, scales)
        f = Reshape (u, shape)
        h = MatMul (f, w1)
        y = MatMul (h, w2)
    """, wc=_w(8, 3, 1, 1), bc=_w(8), pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        roi=np.zeros(0, np.float32), scales=np.array([1, 1, 0.5, 0.5], np.float32),
        shape=np.array([2, 72], np.int64), w1=_w(72, 6), w2=_w(6, 5))
    conv, hidden, _ = channel_groups(model)
    assert conv.frozen is None and conv.consumers[0][1] == [(0, 9)]
    assert _names(conv.through) == ["Reshape→f"]
    assert hidden.frozen is None and _names(c for c, _ in hidden.consumers) == ["MatMul→y"]


def test_transformer_mlp_hidden_width_is_a_group():
    model = _model("(float[2,5,16] x) => (float[2,5,16] y)", """
        h = MatMul (x, w1)
        hb = Add (h, b1)
        s = Sigmoid (hb)
        g = Mul (hb, s)
        o = MatMul (g, w2)
        y = Add (o, b2)
    """, w1=_w(16, 32), b1=_w(32), w2=_w(32, 16), b2=_w(16))
    hidden, out = channel_groups(model)
    assert hidden.channels == 32 and hidden.frozen is None
    assert _names(hidden.through) == ["Add→hb"]  # the bias is sliced with the channels
    assert out.frozen == "reaches graph output 'y'"


@pytest.mark.parametrize(("between", "inits", "reason"), [
    ("m = Softmax <axis = 1> (r)", {}, "Softmax node 'Softmax→m' cannot be mapped"),
    ("m = Conv <group = 2, kernel_shape = [1, 1]> (r, wg)", {"wg": _w(8, 4, 1, 1)},
     "(group=2) ties channels in blocks"),
    ("m = Reshape (r, split)", {"split": np.array([1, 4, 2, 16], np.int64)},
     "splits or moves the channel axis"),
    ("m = Pad (r, chpads)", {"chpads": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)},
     "pads the channel axis"),
    ("m = Mul (r, x8)", {}, "graph input 'x8'"),
    ("m = MatMul (wm, r)", {"wm": _w(4, 4)}, "MatMul node 'MatMul→m' reads channels as a weight"),
])
def test_unmappable_ops_freeze_the_group_and_name_the_node(between, inits, reason):
    model = _model("(float[1,3,4,4] x, float[1,8,4,4] x8) => (float y)", f"""
        c = Conv <kernel_shape = [1, 1]> (x, wc)
        r = Relu (c)
        {between}
        y = ReduceMax <keepdims = 0> (m)
    """, wc=_w(8, 3, 1, 1), **inits)
    group = channel_groups(model)[0]
    assert group.label == "Conv→c" and group.channels == 8
    assert reason in group.frozen


def test_subgraph_captures_freeze_the_group():
    model = _model("(float[1,3,4,4] x, bool cond) => (float[1,8,4,4] y)", """
        c = Conv <kernel_shape = [1, 1]> (x, wc)
        y = If (cond) <
            then_branch = t () => (float[1,8,4,4] a) { a = Relu (c) },
            else_branch = e () => (float[1,8,4,4] b) { b = Sigmoid (c) }
        >
    """, wc=_w(8, 3, 1, 1))
    (group,) = channel_groups(model)
    assert "If node 'If→y' cannot be mapped" in group.frozen


def test_digits_has_five_prunable_groups_and_a_frozen_head():
    lines = describe_groups(ox.load(demo.model_path()))
    assert len(lines) == 6
    assert sum("— prunable" in line for line in lines) == 5
    assert "frozen: reaches graph output 'logits'" in lines[-1]
    residual = next(line for line in lines if "out of /block1/conv2" in line)
    assert "through" in residual and "depthwise" in residual and "/head/head.1/Gemm [@0]" in \
        residual


def test_the_analysis_changes_nothing():
    model = cnn()
    before = model.to_onnx().SerializeToString()
    analyze(model)
    assert model.to_onnx().SerializeToString() == before


def test_exported_transformer_prunes_the_mlp_and_freezes_attention():
    # fuse turns the decomposed GELU into onnxruntime's com.microsoft Gelu (opset < 20),
    # which the analysis maps as elementwise.
    model = ox.optimize(ox.load(MODELS_DIR / "torch_transformer.onnx"), ["fuse"])
    groups = _by_producer(channel_groups(model))
    mlp = groups["/layers/layers.0/feed_forward/feed_forward.0/MatMul"]
    assert mlp.frozen is None and mlp.channels == 64
    assert _names(c for c, _ in mlp.consumers) == [
        "/layers/layers.0/feed_forward/feed_forward.2/MatMul"]
    assert "Reshape node '/layers/layers.0/Reshape'" in groups[
        "/layers/layers.0/qkv/MatMul"].frozen  # the head split
    assert "whose width cannot change" in groups["/layers/layers.0/attn_out/MatMul"].frozen
