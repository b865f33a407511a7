"""prune-channels: exact rewrites, widths, criteria, exclusions and bad input."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from zoo import ZOO, feed_list, graph, ints

import onnxpress as ox
from onnxpress import demo
from onnxpress.errors import PassError
from onnxpress.ir.model import Model
from onnxpress.passes.sparsity.channels import PruneChannels, kept_channels
from onnxpress.passes.sparsity.coupling import SliceInput, analyze, node_label
from onnxpress.testing import assert_same_outputs, run

RNG = np.random.default_rng(1)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _layers(model: Model) -> dict[str, tuple]:
    """Weight shape (and group) of every Conv / Gemm / MatMul, by node label."""
    return {node_label(n): (n.inputs[1].values.shape, n.attrs.get("group", 1))
            for n in model.graph.nodes if n.op in ("Conv", "Gemm", "MatMul")}


def _zero_half(model: Model) -> dict[int, np.ndarray]:
    """Zero a random half of every prunable group's channels wherever they are produced.

    The removed channels are then exactly zero downstream (BN γ and β zeroed too, ops used
    map 0 to 0), so pruning them must not change the outputs at all.
    """
    coupling = analyze(model)
    kept = {}
    for group in coupling.groups:
        if not group.frozen:
            keep = np.sort(RNG.permutation(group.channels)[:group.channels // 2])
            kept.update(dict.fromkeys(group.spaces, keep))
    for edit in coupling.edits:
        survivors = edit.layout.positions(kept)
        if (not isinstance(edit, SliceInput) or edit.role == "consumer" or survivors is None
                or edit.node.op == "BatchNormalization" and edit.index > 2):
            continue
        values = np.array(edit.node.inputs[edit.index].values)
        dead = [slice(None)] * values.ndim
        dead[edit.axis] = np.setdiff1d(np.arange(values.shape[edit.axis]), survivors)
        values[tuple(dead)] = 0
        edit.node.inputs[edit.index].values = values
    return kept


def _pruned(model: Model, **options) -> tuple[Model, dict]:
    out = ox.optimize(model, [PruneChannels(**options)])
    return out, out.report["prune-channels"].stats


# --------------------------------------------------------------------------------------------
# Exact rewrites: removing channels that are zero changes nothing
def block() -> Model:
    """Residual + BN, Concat, depthwise, MaxPool, Flatten → Gemm → Gemm."""
    return graph("(float[2,3,8,8] x) => (float[2,5] y)", """
        s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, ws, bs)
        r0 = Relu (s)
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r0, wa, ba)
        n = BatchNormalization (a, g, beta, mean, var)
        ra = Relu (n)
        b = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (ra, wb, bb)
        res = Add (b, r0)
        r1 = Relu (res)
        p = Conv <kernel_shape = [1, 1]> (r1, wp, bp)
        q = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r1, wq, bq)
        cat = Concat <axis = 1> (p, q)
        d = Conv <group = 12, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (cat, wd, bd)
        rd = Relu (d)
        m = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (rd)
        f = Flatten (m)
        h = Gemm <transB = 1> (f, wh, bh)
        rh = Relu (h)
        y = Gemm (rh, wo, bo)
    """, ws=_w(8, 3, 3, 3), bs=_w(8), wa=_w(16, 8, 3, 3), ba=_w(16), g=_w(16), beta=_w(16),
        mean=_w(16), var=np.ones(16, np.float32), wb=_w(8, 16, 3, 3), bb=_w(8),
        wp=_w(4, 8, 1, 1), bp=_w(4), wq=_w(8, 8, 3, 3), bq=_w(8), wd=_w(12, 1, 3, 3),
        bd=_w(12), wh=_w(16, 192), bh=_w(1, 16), wo=_w(16, 5), bo=_w(5))


def reshape_mlp() -> Model:
    """Conv → Pad → Resize → Reshape into MatMul (+ bias Add) → MatMul."""
    return graph("(float[2,3,4,4] x) => (float[2,5] y)", """
        c = Conv <kernel_shape = [1, 1]> (x, wc, bc)
        r = Relu (c)
        p = Pad (r, pads)
        u = Resize <mode = "nearest"> (p, roi, scales)
        f = Reshape (u, shape)
        h = MatMul (f, w1)
        hb = Add (h, b1)
        rh = Relu (hb)
        y = MatMul (rh, w2)
    """, wc=_w(8, 3, 1, 1), bc=_w(8), pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        roi=np.zeros(0, np.float32), scales=np.array([1, 1, 0.5, 0.5], np.float32),
        shape=np.array([-1, 72], np.int64), w1=_w(72, 8), b1=_w(8), w2=_w(8, 5))


def transformer_mlp() -> Model:
    """[N, S, D] MatMul → bias → x·sigmoid(x) → MatMul: the hidden width is the group."""
    return graph("(float[2,5,16] x) => (float[2,5,16] y)", """
        h = MatMul (x, w1)
        hb = Add (h, b1)
        s = Sigmoid (hb)
        g = Mul (hb, s)
        o = MatMul (g, w2)
        y = Add (o, b2)
    """, w1=_w(16, 32), b1=_w(32), w2=_w(32, 16), b2=_w(16))


def split_block(opset: int) -> Model:
    """C2f: Conv → Split [4, 12] (attribute at opset 11, input at 13; halves by num_outputs at
    18) → a 3x3 Conv with a residual Add on the second part → Concat of all three → Conv."""
    split = {11: "Split <axis = 1, split = [4, 12]> (c1)", 13: "Split <axis = 1> (c1, sp)",
             18: "Split <axis = 1, num_outputs = 2> (c1)"}[opset]
    second = 8 if opset == 18 else 12
    return graph("(float[2,3,8,8] x) => (float[2,4,8,8] y)", f"""
        s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, ws, bs)
        r = Relu (s)
        c1 = Conv <kernel_shape = [1, 1]> (r, w1, b1)
        a, b = {split}
        m = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (b, wm, bm)
        mr = Relu (m)
        res = Add (b, mr)
        cat = Concat <axis = 1> (a, b, res)
        y = Conv <kernel_shape = [1, 1]> (cat, w2, b2)
    """, opset, ws=_w(8, 3, 3, 3), bs=_w(8), w1=_w(16, 8, 1, 1), b1=_w(16),
        wm=_w(second, second, 3, 3), bm=_w(second), w2=_w(4, 16 + second, 1, 1), b2=_w(4),
        **({"sp": ints(4, 12)} if opset == 13 else {}))


def ghost_slice() -> Model:
    """GhostNet: Conv ‖ its depthwise Conv, sliced to [-16, -4) = [0, 12) → BN → Conv."""
    return graph("(float[2,3,8,8] x) => (float[2,4,8,8] y)", """
        p = Conv <kernel_shape = [1, 1]> (x, wp, bp)
        d = Conv <group = 8, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (p, wd, bd)
        cat = Concat <axis = 1> (p, d)
        sl = Slice (cat, st, en, ax)
        n = BatchNormalization (sl, g, beta, mean, var)
        y = Conv <kernel_shape = [1, 1]> (n, wy)
    """, wp=_w(8, 3, 1, 1), bp=_w(8), wd=_w(8, 1, 3, 3), bd=_w(8), st=ints(-16), en=ints(-4),
        ax=ints(1), g=_w(12), beta=_w(12), mean=_w(12), var=np.ones(12, np.float32),
        wy=_w(4, 12, 1, 1))


def grouped_block() -> Model:
    """Conv (16) → BN → grouped Conv (group 4, 4 → 2 per group) → depthwise Conv with a
    channel multiplier of 2 → Conv: whole groups of 4 of a's channels are pruned."""
    return graph("(float[2,3,8,8] x) => (float[2,4,8,8] y)", """
        s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, ws, bs)
        r = Relu (s)
        a = Conv <kernel_shape = [1, 1]> (r, wa, ba)
        n = BatchNormalization (a, g, beta, mean, var)
        ra = Relu (n)
        c = Conv <group = 4, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (ra, wc, bc)
        rc = Relu (c)
        d = Conv <group = 8, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (rc, wd, bd)
        y = Conv <kernel_shape = [1, 1]> (d, wy)
    """, ws=_w(8, 3, 3, 3), bs=_w(8), wa=_w(16, 8, 1, 1), ba=_w(16), g=_w(16), beta=_w(16),
        mean=_w(16), var=np.ones(16, np.float32), wc=_w(8, 4, 3, 3), bc=_w(8),
        wd=_w(16, 1, 3, 3), bd=_w(16), wy=_w(4, 16, 1, 1))


def swiglu() -> Model:
    """A fused gate/up MatMul Split on the last axis, gate·sigmoid(gate)·up → MatMul."""
    return graph("(float[2,5,16] x) => (float[2,5,16] y)", """
        h = MatMul (x, w1)
        gate, up = Split <axis = -1> (h, sp)
        s = Sigmoid (gate)
        gs = Mul (gate, s)
        u = Mul (gs, up)
        y = MatMul (u, w2)
    """, w1=_w(16, 32), sp=ints(16, 16), w2=_w(16, 16))


@pytest.mark.parametrize(("build", "shapes"), [
    (block, {"Conv→s": ((4, 3, 3, 3), 1), "Conv→a": ((8, 4, 3, 3), 1),
             "Conv→b": ((4, 8, 3, 3), 1), "Conv→p": ((2, 4, 1, 1), 1),
             "Conv→q": ((4, 4, 3, 3), 1), "Conv→d": ((6, 1, 3, 3), 6),
             "Gemm→h": ((8, 96), 1), "Gemm→y": ((8, 5), 1)}),
    (reshape_mlp, {"Conv→c": ((4, 3, 1, 1), 1), "MatMul→h": ((36, 4), 1),
                   "MatMul→y": ((4, 5), 1)}),
    (transformer_mlp, {"MatMul→h": ((16, 16), 1), "MatMul→o": ((16, 16), 1)}),
    *[(lambda opset=opset: split_block(opset),
       {"Conv→s": ((4, 3, 3, 3), 1), "Conv→c1": ((8, 4, 1, 1), 1),
        "Conv→m": ((m, m, 3, 3), 1), "Conv→y": ((4, 8 + m, 1, 1), 1)})
      for opset, m in ((11, 6), (13, 6), (18, 4))],
    (ghost_slice, {"Conv→p": ((4, 3, 1, 1), 1), "Conv→d": ((4, 1, 3, 3), 4),
                   "Conv→y": ((4, 6, 1, 1), 1)}),
    (grouped_block, {"Conv→s": ((4, 3, 3, 3), 1), "Conv→a": ((8, 4, 1, 1), 1),
                     "Conv→c": ((4, 4, 3, 3), 2), "Conv→d": ((8, 1, 3, 3), 4),
                     "Conv→y": ((4, 8, 1, 1), 1)}),
    (swiglu, {"MatMul→h": ((16, 16), 1), "MatMul→y": ((8, 16), 1)}),
], ids=["block", "reshape_mlp", "transformer_mlp", "split_opset11", "split_opset13",
        "split_opset18", "ghost_slice", "grouped", "swiglu"])
def test_removing_zero_channels_is_exact(build, shapes):
    model = build()
    kept = _zero_half(model)
    out, stats = _pruned(model, ratio=0.5, round_to=2, prune_first=True)
    assert _layers(out) == shapes
    assert_same_outputs(model, out, feed_list(model), atol=1e-5)
    position = {id(n): i for i, n in enumerate(model.graph.nodes)}
    for node, layout in analyze(model).outputs:  # each pruned layer records what it kept
        np.testing.assert_array_equal(kept_channels(out.graph.nodes[position[id(node)]]),
                                      layout.positions(kept))
    assert stats["channels_after"] * 2 == stats["channels_before"]


def _node(model: Model, label: str) -> gs.Node:
    return next(n for n in model.graph.nodes if node_label(n) == label)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_sizes_are_rewritten_in_the_form_of_the_opset(opset):
    model = split_block(opset)
    _zero_half(model)
    out, stats = _pruned(model, ratio=0.5, round_to=2, prune_first=True)
    cut = 8 if opset == 18 else 4
    assert stats["widths"] == {"Conv→s": "8 → 4", f"Conv→c1[0:{cut}]": f"{cut} → {cut // 2}",
                               f"Conv→c1[{cut}:16]+Conv→m": f"{16 - cut} → {8 - cut // 2}"}
    split = _node(out, "Split→a")
    sizes = [cut // 2, 8 - cut // 2]
    if opset == 11:
        assert split.attrs["split"] == sizes
    else:  # the input, replacing num_outputs at opset 18
        assert split.inputs[1].values.tolist() == sizes and "num_outputs" not in split.attrs
    assert out.graph.tensors()["cat"].shape == [2, 8 + sizes[1], 8, 8]


def test_slice_bounds_count_the_channels_kept_before_them():
    model = ghost_slice()
    _zero_half(model)
    out, stats = _pruned(model, ratio=0.5, round_to=2, prune_first=True)
    assert stats["widths"] == {"Conv→p[0:4]": "4 → 2", "Conv→p[4:8]": "4 → 2"}
    sliced = _node(out, "Slice→sl")
    assert [sliced.inputs[i].values.tolist() for i in (1, 2)] == [[0], [6]]
    assert _node(out, "BatchNormalization→n").inputs[1].values.shape == (6,)


@pytest.mark.parametrize(("opset", "call", "inits"), [
    (9, "Slice <starts = [4], ends = [12], axes = [1]> (r)", {}),  # attributes
    (10, "Slice (r, st, en)", {"st": ints(0, 4, 0, 0), "en": ints(9, -4, 9, 9)}),  # every axis
])
def test_slice_bounds_in_attributes_or_without_axes_are_rewritten(opset, call, inits):
    model = graph("(float[2,3,4,4] x) => (float[2,4,4,4] y)", f"""
        c = Conv <kernel_shape = [1, 1]> (x, wc, bc)
        r = Relu (c)
        v = {call}
        y = Conv <kernel_shape = [1, 1]> (v, wy)
    """, opset, wc=_w(16, 3, 1, 1), bc=_w(16), wy=_w(4, 8, 1, 1), **inits)
    _zero_half(model)
    out, stats = _pruned(model, ratio=0.5, round_to=2, prune_first=True)
    assert stats["widths"] == {"Conv→c[0:4]": "4 → 2", "Conv→c[4:12]": "8 → 4",
                               "Conv→c[12:16]": "4 → 2"}
    sliced = _node(out, "Slice→v")
    bounds = ([sliced.attrs["starts"], sliced.attrs["ends"]] if opset == 9 else
              [sliced.inputs[i].values[1].tolist() for i in (1, 2)])
    assert bounds == ([[2], [6]] if opset == 9 else [2, 6])
    assert_same_outputs(model, out, feed_list(model), atol=1e-5)


def test_grouped_widths_are_whole_groups_and_multiples_of_round_to():
    model = graph("(float[1,3,6,6] x) => (float[1,4,6,6] y)", """
        s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, ws)
        a = Conv <kernel_shape = [1, 1]> (s, wa)
        g = Conv <group = 8, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (a, wg)
        y = Conv <kernel_shape = [1, 1]> (g, wy)
    """, ws=_w(8, 3, 3, 3), wa=_w(32, 8, 1, 1), wg=_w(32, 4, 3, 3), wy=_w(4, 32, 1, 1))
    out, stats = _pruned(model, ratio=0.3)  # 4 layer channels per block, 8 per step
    assert stats["widths"] == {"Conv→a": "32 → 24"}
    assert _layers(out)["Conv→g"] == ((24, 4, 3, 3), 6)
    run(out, feed_list(out)[0])
    out, stats = _pruned(model, ratio=0.3, round_to=32)
    assert stats["skipped"]["Conv→a"] == ("32 channels in blocks of 4: no narrower multiple of "
                                          "round_to=32 within max_ratio_per_layer=0.5")


@pytest.mark.parametrize(("criterion", "kept"), [("l2", [0, 3]), ("l1", [1, 3])])
def test_a_block_scores_the_norm_of_all_its_channels(criterion, kept):
    # Blocks of 4 channels of a (group=4 reads 4 each): block 0 has one large filter, block 1
    # four medium ones; l2 prefers block 0 (2.5² > 4·1.2²), l1 block 1 (4·1.2 > 2.5 + 3·0.1).
    scale = np.array([[2.5, .1, .1, .1], [1.2, 1.2, 1.2, 1.2], [.5, .5, .5, .5], [3, 3, 3, 3]])
    wa = np.ones((16, 8, 1, 1), np.float32) * scale.reshape(16, 1, 1, 1).astype(np.float32)
    model = graph("(float[1,3,6,6] x) => (float[1,4,6,6] y)", """
        s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, ws)
        a = Conv <kernel_shape = [1, 1]> (s, wa)
        g = Conv <group = 4, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (a, wg)
        y = Conv <kernel_shape = [1, 1]> (g, wy)
    """, ws=_w(8, 3, 3, 3), wa=wa, wg=_w(16, 4, 3, 3), wy=_w(4, 16, 1, 1))
    out, _ = _pruned(model, ratio=0.5, round_to=4, criterion=criterion)
    np.testing.assert_array_equal(kept_channels(_node(out, "Conv→a")),
                                  [4 * b + t for b in kept for t in range(4)])


def test_shape_annotations_are_re_inferred():
    out, _ = _pruned(block(), ratio=0.5, round_to=2, prune_first=True)
    tensors = out.graph.tensors()
    assert tensors["cat"].shape == [2, 6, 8, 8]
    assert tensors["f"].shape == [2, 96]
    assert tensors["y"].shape == [2, 5]


def test_a_shared_constant_is_copied_for_the_pruned_reader_only():
    model = graph("(float[1,3,4,4] x) => (float[1,4,4,4] y, float[1,8,4,4] z)", """
        a = Conv <kernel_shape = [1, 1]> (x, wa)
        ma = Mul (a, scale)
        ra = Relu (ma)
        y = Conv <kernel_shape = [1, 1]> (ra, wy)
        c = Conv <kernel_shape = [1, 1]> (x, wc)
        z = Mul (c, scale)
    """, wa=_w(8, 3, 1, 1), wy=_w(4, 8, 1, 1), wc=_w(8, 3, 1, 1),
        scale=np.abs(_w(1, 8, 1, 1)) + 1)
    out, stats = _pruned(model, ratio=0.5, round_to=4, prune_first=True)
    assert stats["widths"] == {"Conv→a": "8 → 4"}
    muls = {n.outputs[0].name: n.inputs[1] for n in out.graph.nodes if n.op == "Mul"}
    assert muls["ma"].values.shape == (1, 4, 1, 1) and muls["z"].values.shape == (1, 8, 1, 1)
    assert muls["z"].name == "scale"
    np.testing.assert_array_equal(run(out, feed_list(model)[0])[1],
                                  run(model, feed_list(model)[0])[1])


# --------------------------------------------------------------------------------------------
# Widths
def wide(channels: int) -> Model:
    """Stem (a first layer, kept by default) → one group of `channels` → frozen head."""
    return graph("(float[1,3,6,6] x) => (float[1,4,6,6] y)", """
        s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, ws)
        r = Relu (s)
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r, wa)
        ra = Relu (a)
        y = Conv <kernel_shape = [1, 1]> (ra, wy)
    """, ws=_w(8, 3, 3, 3), wa=_w(channels, 8, 3, 3), wy=_w(4, channels, 1, 1))


@pytest.mark.parametrize(("channels", "options", "width"), [
    (32, {"ratio": 0.3}, 24),
    (32, {"ratio": 0.5}, 16),
    (32, {"ratio": 0.9}, 16),  # max_ratio_per_layer = 0.5 caps it
    (32, {"ratio": 0.9, "max_ratio_per_layer": 0.8}, 8),  # never below round_to
    (32, {"ratio": 0.3, "round_to": 16}, 16),
    (32, {"ratio": 0.3, "round_to": 1}, 22),
    (64, {"ratio": 0.3}, 48),
    (20, {"ratio": 0.3}, 16),  # first down to a multiple of round_to
])
def test_widths_are_multiples_of_round_to(channels, options, width):
    out, stats = _pruned(wide(channels), **options)
    assert stats["widths"] == {"Conv→a": f"{channels} → {width}"}
    assert _layers(out)["Conv→a"][0][0] == width == _layers(out)["Conv→y"][0][1]
    assert out.graph.outputs[0].shape == [1, 4, 6, 6]
    run(out, feed_list(out)[0])


def test_widths_rounding_cannot_reach_are_a_no_op_with_the_reason():
    out, stats = _pruned(wide(32), ratio=0.1)  # 3.2 channels: closer to 0 than to 8
    assert not out.report["prune-channels"].changed
    assert stats["reason"] == "ratio=0.1 with round_to=8 leaves every width unchanged"
    out, stats = _pruned(wide(32), round_to=32)
    assert not out.report["prune-channels"].changed
    assert "no narrower multiple of round_to=32" in stats["skipped"]["Conv→a"]


def test_first_layers_are_kept_unless_asked():
    _, stats = _pruned(wide(32), ratio=0.5)
    assert "reads graph input 'x'" in stats["skipped"]["Conv→s"]
    _, stats = _pruned(wide(32), ratio=0.5, round_to=4, prune_first=True)
    assert stats["widths"] == {"Conv→s": "8 → 4", "Conv→a": "32 → 16"}


# --------------------------------------------------------------------------------------------
# Criteria
def test_bn_gamma_keeps_the_largest_gammas():
    model = graph("(float[1,3,4,4] x) => (float[1,4,4,4] y)", """
        s = Conv <kernel_shape = [1, 1]> (x, ws)
        a = Conv <kernel_shape = [1, 1]> (s, wa)
        n = BatchNormalization (a, g, beta, mean, var)
        r = Relu (n)
        y = Conv <kernel_shape = [1, 1]> (r, wy)
    """, ws=_w(8, 3, 1, 1), wa=_w(8, 8, 1, 1), wy=_w(4, 8, 1, 1), beta=_w(8), mean=_w(8),
        g=np.array([0.1, -3, 0.2, 2, -0.05, 1, 0.3, -4], np.float32),
        var=np.ones(8, np.float32))
    out, _ = _pruned(model, ratio=0.5, criterion="bn-gamma", round_to=4)
    conv = next(n for n in out.graph.nodes if node_label(n) == "Conv→a")
    np.testing.assert_array_equal(kept_channels(conv), [1, 3, 5, 7])


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_weight_norms_are_those_of_the_folded_weight(criterion):
    # Scores use γ/σ of a BN that reads the layer directly: fusing first chooses the same.
    digits = ox.load(demo.model_path())
    choices = []
    for passes in ([PruneChannels(criterion=criterion)],
                   ["fuse", PruneChannels(criterion=criterion)]):
        out = ox.optimize(digits, passes)
        choices.append([kept_channels(n).tolist() for n in out.graph.nodes
                        if kept_channels(n) is not None])
    assert choices[0] == choices[1] and len(choices[0]) == 7


def test_bn_gamma_after_folding_has_nothing_to_score():
    fused = ox.optimize(ox.load(demo.model_path()), ["fuse"])
    out, stats = _pruned(fused, criterion="bn-gamma")
    assert not out.report["prune-channels"].changed
    reasons = list(stats["skipped"].values())
    assert reasons.count("no BatchNormalization to take gamma from") == 4
    assert "reads graph input 'input'" in reasons[0]  # the stem


# --------------------------------------------------------------------------------------------
# The digits model, exclusions, metadata
def test_digits_pruned_keeps_its_interface_and_shrinks():
    digits = ox.load(demo.model_path())
    out, stats = _pruned(digits, ratio=0.3)
    assert stats["widths"] == {
        "/block1/conv1/conv1.0/Conv": "32 → 16",
        "/block1/conv2/conv2.0/Conv+/block1/shortcut/shortcut.0/Conv+/block2/conv2/conv2.0/Conv":
            "32 → 24",
        "/block2/conv1/conv1.0/Conv": "32 → 24", "/head/head.1/Gemm": "64 → 48"}
    layers = _layers(out)
    assert layers["/depthwise/depthwise.0/depthwise.0.0/Conv"] == ((24, 1, 3, 3), 24)
    assert layers["/head/head.1/Gemm"][0] == (48, 24)
    assert layers["/head/head.3/Gemm"][0] == (10, 48)
    assert [(t.name, t.shape) for t in out.graph.outputs] == [("logits", ["batch", 10])]
    assert out.nbytes < 0.55 * digits.nbytes
    assert run(out, demo.test_data().take(1)[0])[0].shape == (1, 10)


def test_exclusions_by_glob_and_unmatched_patterns_warn():
    with pytest.warns(UserWarning, match=r"\['nothing\*'\] match no node"):
        _, stats = _pruned(ox.load(demo.model_path()), exclude=("/head/*", "nothing*"))
    assert stats["unmatched_exclude"] == ["nothing*"]
    assert stats["skipped"]["/head/head.1/Gemm"] == "excluded by ['/head/*']"
    assert "/head/head.1/Gemm" not in stats["widths"]


def test_kept_channels_survive_export_and_compose_when_pruned_twice():
    digits = ox.load(demo.model_path())
    once = ox.optimize(digits, [PruneChannels(ratio=0.3)])
    twice = ox.optimize(once, [PruneChannels(ratio=0.3)])
    reloaded = ox.load(twice.to_onnx())
    narrowed = 0
    for before, after in zip(once.graph.nodes, reloaded.graph.nodes, strict=True):
        first, second = kept_channels(before), kept_channels(after)
        if first is not None and second.size < first.size:
            assert set(second) < set(first)  # indices of the original, not of `once`
            narrowed += 1
    assert narrowed


def test_same_result_twice():
    model = block()
    first = ox.optimize(model, [PruneChannels(ratio=0.5, round_to=2, prune_first=True)])
    second = ox.optimize(model, [PruneChannels(ratio=0.5, round_to=2, prune_first=True)])
    assert first.to_onnx().SerializeToString() == second.to_onnx().SerializeToString()


# --------------------------------------------------------------------------------------------
# Bad input
@pytest.mark.parametrize(("options", "match"), [
    ({"ratio": 0}, "ratio must be in"), ({"ratio": 1}, "ratio must be in"),
    ({"ratio": -0.2}, "ratio must be in"), ({"ratio": 1.5}, "ratio must be in"),
    ({"criterion": "taylor"}, "unknown criterion 'taylor'"),
    ({"round_to": 0}, "round_to must be a positive integer"),
    ({"max_ratio_per_layer": 0}, "max_ratio_per_layer"),
    ({"exclude": "/head/*"}, "list of node-name globs"),
])
def test_bad_options_fail_at_construction(options, match):
    with pytest.raises(PassError, match=match):
        PruneChannels(**options)


def test_a_model_without_prunable_groups_is_a_no_op_with_the_reason():
    model = ZOO["conv_bn_relu"]()
    out, stats = _pruned(model)
    assert not out.report["prune-channels"].changed
    assert "no prunable channel group" in stats["reason"]
    assert stats["frozen"] == {"Conv→c": "reaches graph output 'y'"}
