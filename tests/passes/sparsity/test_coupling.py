"""Channel coupling: groups, index maps and frozen reasons on zoo and hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import MODELS_DIR, ZOO, graph, ints

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

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


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
    return graph("(float[1,3,8,8] x) => (float[1,10] y)", """
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
    model = graph("(float[2,3,4,4] x) => (float[2,5] y)", """
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
    model = graph("(float[2,5,16] x) => (float[2,5,16] y)", """
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
    ("m = Slice (r, s0, s6, s1, s2)", {"s0": ints(0), "s6": ints(6), "s1": ints(1), "s2": ints(2)},
     "Slice node 'Slice→m' slices the channel axis with step 2"),
    ("m = Slice (r, s0, x8s, s1)", {"s0": ints(0), "s1": ints(1)},
     "Slice node 'Slice→m': its bounds on the channel axis are not constant"),
    ("m = Split <axis = 1> (r, x8s)", {},
     "Split node 'Split→m': the split sizes are not constant"),
    ("m = Reshape (r, split)", {"split": np.array([1, 4, 2, 16], np.int64)},
     "splits or moves the channel axis"),
    ("m = Pad (r, chpads)", {"chpads": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)},
     "pads the channel axis"),
    ("m = Mul (r, x8)", {}, "graph input 'x8'"),
    ("m = MatMul (wm, r)", {"wm": _w(4, 4)}, "MatMul node 'MatMul→m' reads channels as a weight"),
])
def test_unmappable_ops_freeze_the_group_and_name_the_node(between, inits, reason):
    model = graph("(float[1,3,4,4] x, float[1,8,4,4] x8, int64[1] x8s) => (float y)", f"""
        c = Conv <kernel_shape = [1, 1]> (x, wc)
        r = Relu (c)
        {between}
        y = ReduceMax <keepdims = 0> (m)
    """, wc=_w(8, 3, 1, 1), **inits)
    group = channel_groups(model)[0]
    assert group.label == "Conv→c" and group.channels == 8
    assert reason in group.frozen


def test_subgraph_captures_freeze_the_group():
    model = graph("(float[1,3,4,4] x, bool cond) => (float[1,8,4,4] y)", """
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


# --------------------------------------------------------------------------------------------
# Split and Slice on the channel axis: parts of a layer's output
def c2f(opset: int = 17) -> Model:
    """YOLOv8's C2f: Conv → Split [6, 10] → bottleneck with a residual on the second part →
    Concat of both parts and the bottleneck → Conv."""
    split = {11: "Split <axis = 1, split = [6, 10]> (c1)"}.get(opset, "Split <axis = 1> (c1, sp)")
    return graph("(float[1,3,8,8] x) => (float[1,4,8,8] y)", f"""
        s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, ws)
        r = Relu (s)
        c1 = Conv <kernel_shape = [1, 1]> (r, w1, b1)
        a, b = {split}
        m = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (b, wm, bm)
        mr = Relu (m)
        res = Add (b, mr)
        cat = Concat <axis = 1> (a, b, res)
        y = Conv <kernel_shape = [1, 1]> (cat, w2)
    """, opset, ws=_w(8, 3, 3, 3), w1=_w(16, 8, 1, 1), b1=_w(16), wm=_w(10, 10, 3, 3),
        bm=_w(10), w2=_w(4, 26, 1, 1), **({"sp": ints(6, 10)} if opset >= 13 else {}))


@pytest.mark.parametrize("opset", [11, 17])
def test_split_cuts_the_producer_into_parts_with_offset_maps(opset):
    groups = _by_producer(channel_groups(c2f(opset)))
    assert list(groups) == ["Conv→s", "Conv→c1[0:6]", "Conv→c1[6:16]+Conv→m", "Conv→y"]
    first, second = groups["Conv→c1[0:6]"], groups["Conv→c1[6:16]+Conv→m"]
    assert first.channels == 6 and first.frozen is None and first.ranges == [(0, 6)]
    assert [(node_label(n), m) for n, m in first.consumers] == [("Conv→y", [(0, 1)])]
    # The second part meets the bottleneck in the residual Add, and the Concat reads it twice.
    assert second.channels == 10 and second.frozen is None
    assert [(node_label(n), m) for n, m in second.consumers] == [("Conv→m", [(0, 1)]),
                                                                 ("Conv→y", [(6, 1), (16, 1)])]
    assert _names(second.through) == ["Split→a"]


@pytest.mark.parametrize(("opset", "split", "inits"), [
    (11, "Split <axis = 1> (c)", {}),  # no sizes: equal parts
    (13, "Split <axis = -3> (c)", {}),
    (13, "Split <axis = 1> (c, sp)", {"sp": ints(8, 8)}),
    (18, "Split <axis = 1, num_outputs = 2> (c)", {}),
])
def test_every_form_of_split_sizes_is_read(opset, split, inits):
    model = graph("(float[1,3,4,4] x) => (float[1,4,4,4] y)", f"""
        c = Conv <kernel_shape = [1, 1]> (x, wc)
        a, b = {split}
        g = Mul (a, b)
        y = Conv <kernel_shape = [1, 1]> (g, wy)
    """, opset, wc=_w(16, 3, 1, 1), wy=_w(4, 8, 1, 1), **inits)
    halves = channel_groups(model)[0]
    # Mul couples the two halves: one group, the producer listed once per part.
    assert halves.label == "Conv→c[0:8]+Conv→c[8:16]" and halves.channels == 8
    assert halves.frozen is None and _names(c for c, _ in halves.consumers) == ["Conv→y"]


def test_split_and_slice_along_another_axis_pass_the_channels_through():
    model = graph("(float[1,3,4,4] x) => (float[1,4,2,2] y)", """
        c = Conv <kernel_shape = [1, 1]> (x, wc)
        t, u = Split <axis = 2> (c, halves)
        v = Slice (t, zero, two, three)
        y = Conv <kernel_shape = [1, 1]> (v, wy)
    """, wc=_w(8, 3, 1, 1), wy=_w(4, 8, 1, 1), halves=ints(2, 2), zero=ints(0), two=ints(2),
        three=ints(3))
    group = channel_groups(model)[0]
    assert group.label == "Conv→c" and group.frozen is None
    assert group.consumers[0][1] == [(0, 1)]


def ghost() -> Model:
    """GhostNet: a 1x1 Conv and a depthwise Conv of it, concatenated, sliced to 10 channels."""
    return graph("(float[1,3,8,8] x) => (float[1,4,8,8] y)", """
        p = Conv <kernel_shape = [1, 1]> (x, wp, bp)
        d = Conv <group = 6, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (p, wd, bd)
        cat = Concat <axis = 1> (p, d)
        sl = Slice (cat, st, en, ax)
        y = Conv <kernel_shape = [1, 1]> (sl, wy)
    """, wp=_w(6, 3, 1, 1), bp=_w(6), wd=_w(6, 1, 3, 3), bd=_w(6), st=ints(0), en=ints(10),
        ax=ints(1), wy=_w(4, 10, 1, 1))


def test_slice_maps_its_offset_range_and_leaves_the_rest_unread():
    groups = _by_producer(channel_groups(ghost()))
    # [0, 10) of p ‖ d(p) takes p twice except d's last two channels: p is cut at 4.
    assert list(groups) == ["Conv→p[0:4]", "Conv→p[4:6]", "Conv→y"]
    assert groups["Conv→p[0:4]"].consumers[0][1] == [(0, 1), (6, 1)]
    assert groups["Conv→p[4:6]"].consumers[0][1] == [(4, 1)]  # its depthwise copy is cut off
    assert _names(groups["Conv→p[4:6]"].through) == ["Conv→d", "Slice→sl"]
    assert groups["Conv→p[0:4]"].frozen is None and groups["Conv→p[4:6]"].frozen is None


def test_slice_bounds_are_normalized():
    # Negative starts and ends, an end past the width, a negative axis: [4, 12) of 16.
    model = graph("(float[1,3,4,4] x) => (float[1,4,4,4] y)", """
        c = Conv <kernel_shape = [1, 1]> (x, wc)
        v = Slice (c, st, en, ax, one)
        w = Slice (c, st2, big, ax)
        g = Mul (v, w)
        y = Conv <kernel_shape = [1, 1]> (g, wy)
    """, wc=_w(16, 3, 1, 1), wy=_w(4, 8, 1, 1), st=ints(-12), en=ints(-4), ax=ints(-3), one=ints(1),
        st2=ints(8), big=ints(2**62))
    groups = _by_producer(channel_groups(model))
    assert list(groups) == ["Conv→c[0:4]", "Conv→c[4:8]+Conv→c[8:12]+Conv→c[12:16]", "Conv→y"]
    assert groups["Conv→c[0:4]"].consumers == []  # never read: prunable for free
    coupled = groups["Conv→c[4:8]+Conv→c[8:12]+Conv→c[12:16]"]
    assert coupled.channels == 4 and coupled.frozen is None


def test_a_cut_through_a_flattened_channel_freezes_the_group():
    model = graph("(float[1,3,2,2] x) => (float[1,6] y)", """
        c = Conv <kernel_shape = [1, 1]> (x, wc)
        f = Flatten (c)
        a, b = Split <axis = 1> (f, sp)
        y = Gemm <transB = 1> (a, wy)
    """, wc=_w(4, 3, 1, 1), sp=ints(6, 10), wy=_w(6, 6))
    group = channel_groups(model)[0]
    assert group.label == "Conv→c"
    assert group.frozen == "Split node 'Split→a' cuts through a channel's 4 positions (at 2)"


def test_splits_of_splits_are_learnt_over_several_sweeps():
    model = graph("(float[1,3,4,4] x) => (float[1,4,4,4] y)", """
        c = Conv <kernel_shape = [1, 1]> (x, wc)
        a, b = Split <axis = 1> (c, half)
        e, f = Split <axis = 1> (b, quarter)
        g = Mul (e, f)
        h = Concat <axis = 1> (a, g)
        y = Conv <kernel_shape = [1, 1]> (h, wy)
    """, wc=_w(16, 3, 1, 1), half=ints(8, 8), quarter=ints(4, 4), wy=_w(4, 12, 1, 1))
    groups = _by_producer(channel_groups(model))
    assert list(groups) == ["Conv→c[0:8]", "Conv→c[8:12]+Conv→c[12:16]", "Conv→y"]
    assert groups["Conv→c[8:12]+Conv→c[12:16]"].consumers[0][1] == [(8, 1)]


# --------------------------------------------------------------------------------------------
# Grouped Conv: whole groups
def grouped() -> Model:
    """Conv (16) → grouped Conv (group 4: 4 → 2 channels per group) → depthwise Conv with a
    channel multiplier of 2 → Conv."""
    return graph("(float[1,3,8,8] x) => (float[1,4,8,8] y)", """
        a = Conv <kernel_shape = [1, 1]> (x, wa, ba)
        ra = Relu (a)
        g = Conv <group = 4, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (ra, wg, bg)
        rg = Relu (g)
        d = Conv <group = 8, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (rg, wd, bd)
        y = Conv <kernel_shape = [1, 1]> (d, wy)
    """, wa=_w(16, 3, 1, 1), ba=_w(16), wg=_w(8, 4, 3, 3), bg=_w(8), wd=_w(16, 1, 3, 3),
        bd=_w(16), wy=_w(4, 16, 1, 1))


def test_grouped_conv_passes_whole_groups_through():
    group, out = channel_groups(grouped())
    assert group.label == "Conv→a" and group.frozen is None
    assert (group.channels, group.unit) == (4, 4)  # one channel of the group: 4 of a's
    assert _names(group.through) == ["Conv→g", "Conv→d"]
    # 4 → 2 channels per conv group, then ×2 again: each group channel is 4 of y's inputs.
    assert group.consumers[0][1] == [(0, 4)]
    assert out.frozen == "reaches graph output 'y'"
    assert group.describe().startswith("4 blocks of 4 ch — out of Conv→a")


def test_grouped_conv_edits_slice_its_output_axis_and_divide_group():
    edits = [e for e in analyze(grouped()).edits if node_label(e.node) == "Conv→g"]
    assert [(type(e).__name__, getattr(e, "index", None)) for e in edits] == [
        ("SliceInput", 1), ("SetGroup", None), ("SliceInput", 2)]
    assert edits[0].layout.segments[0].stride == 2 and edits[1].per_group == 4


def test_grouped_conv_blocks_apply_to_every_producer_it_reads():
    model = graph("(float[1,3,4,4] x) => (float[1,4,4,4] y)", """
        a = Conv <kernel_shape = [1, 1]> (x, wa)
        b = Conv <kernel_shape = [1, 1]> (x, wb)
        c = Concat <axis = 1> (a, b)
        g = Conv <group = 4, kernel_shape = [1, 1]> (c, wg)
        y = Conv <kernel_shape = [1, 1]> (g, wy)
    """, wa=_w(8, 3, 1, 1), wb=_w(8, 3, 1, 1), wg=_w(8, 4, 1, 1), wy=_w(4, 8, 1, 1))
    groups = _by_producer(channel_groups(model))
    assert [(g.channels, g.unit) for g in (groups["Conv→a"], groups["Conv→b"])] == [(2, 4)] * 2
    assert groups["Conv→b"].consumers[0][1] == [(4, 2)]


def test_a_conv_group_straddling_two_producers_freezes_both():
    model = graph("(float[1,3,4,4] x) => (float[1,4,4,4] y)", """
        a = Conv <kernel_shape = [1, 1]> (x, wa)
        b = Conv <kernel_shape = [1, 1]> (x, wb)
        c = Concat <axis = 1> (a, b)
        g = Conv <group = 4, kernel_shape = [1, 1]> (c, wg)
        y = Conv <kernel_shape = [1, 1]> (g, wy)
    """, wa=_w(6, 3, 1, 1), wb=_w(10, 3, 1, 1), wg=_w(8, 4, 1, 1), wy=_w(4, 8, 1, 1))
    groups = _by_producer(channel_groups(model))
    reason = ("Conv node 'Conv→g' (group=4) has a group of 4 input channels straddling two "
              "channel groups")
    assert groups["Conv→a"].frozen == reason == groups["Conv→b"].frozen


def test_a_cut_inside_a_block_freezes_the_producer_naming_both_nodes():
    model = graph("(float[1,3,4,4] x) => (float[1,4,4,4] y, float[1,4,4,4] z)", """
        a = Conv <kernel_shape = [1, 1]> (x, wa)
        g = Conv <group = 4, kernel_shape = [1, 1]> (a, wg)
        y = Conv <kernel_shape = [1, 1]> (g, wy)
        s = Slice (a, zero, two, one)
        z = Conv <kernel_shape = [1, 1]> (s, wz)
    """, wa=_w(16, 3, 1, 1), wg=_w(8, 4, 1, 1), wy=_w(4, 8, 1, 1), wz=_w(4, 2, 1, 1),
        zero=ints(0), two=ints(2), one=ints(1))
    group = channel_groups(model)[0]
    assert group.label == "Conv→a" and group.channels == 16  # one unrefined space
    assert group.frozen.startswith("Slice node 'Slice→s' cuts 'Conv→a' at channel 2, inside a "
                                   "block of 4 channels that Conv node 'Conv→g' prunes whole")
