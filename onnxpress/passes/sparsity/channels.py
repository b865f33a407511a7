"""Structured channel pruning: remove whole output channels of coupled layers (prune-channels).

The coupling analysis (`onnxpress.passes.sparsity.coupling`) splits the channels into groups
that must lose the same indices. This pass scores each prunable group's channels, chooses a
kept set ``K`` per group and rewrites every parameter the group touches, so the graph really
shrinks: fewer rows in the producers' weights, fewer columns in the consumers', smaller BN
parameters, grouped and depthwise ``group`` counts, Reshape constants, Split sizes and Slice
bounds. Graph outputs never change shape.

Scores. For a producer layer ``p`` whose weight has output channel ``k`` in slice ``W_p[k]``:

    l1:  s_p[k] = |γ̂_k| · Σ |W_p[k]|        l2:  s_p[k] = |γ̂_k| · ‖W_p[k]‖₂

where ``γ̂ = γ / √(σ² + ε)`` when a BatchNormalization reads ``p``'s output directly, else 1:
the norm of the BN-folded weight, so the scores are the same before and after fuse-batchnorm
(Li et al., 2017). ``bn-gamma`` takes ``s[k] = |γ_k|`` from every BatchNormalization the group
passes through (Network Slimming, Liu et al., 2017; only before BN folding). Each layer's
scores are divided by their mean, so layers of different scale weigh the same, then averaged
over the group: ``S_g[k] = mean_p s_p[k] / mean(s_p)``. A producer contributes the slices
its output gives the group: channels ``[lo, hi)`` when a Split or Slice cut its output into
parts, and, when a grouped Conv reads the group (blocks of ``u = k_in`` layer channels per
channel of the group), the norm of the whole block ``W_p[k·u : (k+1)·u]`` (mean ``|γ|`` for
``bn-gamma``).

Widths. A group narrows in *blocks*: first to the largest multiple of ``round_to`` below
``C_g``, then ``round_to`` channels at a time, never below ``round_to`` nor below
``(1 − max_ratio_per_layer)·C_g``. Each block holds the group's lowest remaining scores, and
all groups' blocks are ranked together by their mean ``S`` (which is comparable across groups:
every group's scores have mean 1). Blocks are taken in that order while each brings the
channels removed closer to ``ratio · Σ C_g``. ``K_g`` is the top-scoring channels of the width
left. In a group of blocks of ``u`` layer channels the steps are
``round_to / gcd(round_to, u)`` blocks, so the layer widths stay multiples of
``lcm(round_to, u)`` (a grouped Conv loses whole groups), and the budget and the reported
widths count layer channels ``C_g·u``; a group with no such narrower width is skipped with the
reason. Layers that read a graph input (a model's first layers: their few input channels make
every output channel count) are kept whole unless ``prune_first=True`` (rule R-D3).

Rewrite. Every edit of the analysis knows the layout of the tensor it applies to; its
surviving positions are ``P = {o_j + k·r_j + t : k ∈ K_{s_j}, 0 ≤ t < r_j}`` and the edit keeps
``W[P]`` along its axis (or writes ``|P|`` into ``group`` / a shape entry). A pruned layer is
tagged with the channels of the original it keeps (metadata ``onnxpress.kept_channels``), so
`reconstruct` can compare it with the teacher. Shapes are then re-inferred.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import PassError
from onnxpress.ir import analyses, fidelity
from onnxpress.ir.edit import consumers
from onnxpress.ir.model import Model
from onnxpress.ir.select import matches
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.sparsity.coupling import KEPT_KEY, ChannelGroup, Coupling, SliceInput, analyze
from onnxpress.passes.sparsity.flops import layer_costs, total_macs
from onnxpress.passes.sparsity.sensitivity import group_sensitivity
from onnxpress.runtime.guard import Reference, holdout

CRITERIA = ("l1", "l2", "bn-gamma")

#: Input elements the sensitivity trials run on at most (four 640×480 RGB images).
SENSITIVITY_ELEMENTS = 4 * 3 * 640 * 480


def kept_channels(node: gs.Node) -> np.ndarray | None:
    """The channels of the original model a pruned layer keeps (None if never pruned)."""
    recorded = getattr(node, fidelity.NODE_META, ("", {}))[1].get(KEPT_KEY)
    return None if recorded is None else np.asarray(json.loads(recorded), np.int64)


@dataclass(frozen=True)
class PruneChannels(Pass):
    """Remove the least important output channels of coupled Conv/Gemm/MatMul groups.

    Attributes:
        ratio: Fraction of the prunable channels to remove, in (0, 1) (0.3 when neither
            `ratio` nor `target` is given).
        target: Instead of `ratio`: the fraction of the Conv/Gemm/MatMul multiply-accumulates
            to keep, in (0, 1); widths follow measured sensitivity (see "Target").
        criterion: "l1" or "l2" (norm of the BN-folded producer weights) or "bn-gamma".
        round_to: Pruned widths are multiples of this (never below it); None: the target's
            `channel_multiple` (onnxruntime's NCHWc block on this CPU: 8 on AVX2, 16 on
            AVX-512).
        max_ratio_per_layer: At most this fraction of one group is removed, in (0, 1].
        exclude: Node-name globs; a group with a matching producer (or depthwise Conv) is
            left whole.
        prune_first: Also prune groups produced by a layer that reads a graph input.
        samples: Samples of ctx.data (the last ones) the sensitivities are measured on;
            fewer for large inputs (`SENSITIVITY_ELEMENTS`).
    """

    name: ClassVar[str] = "prune-channels"
    exact: ClassVar[bool] = False
    preserves: ClassVar[frozenset] = frozenset({analyses.shapes})  # re-inferred at the end

    ratio: float | None = None
    target: float | None = None
    criterion: str = "l2"
    round_to: int | None = None
    max_ratio_per_layer: float = 0.5
    exclude: tuple[str, ...] = ()
    prune_first: bool = False
    samples: int = 16

    def __post_init__(self) -> None:
        """Validate the options now, before any model is touched."""
        if self.ratio is not None and self.target is not None:
            raise PassError("prune-channels: give ratio (channels to remove) or target "
                            "(multiply-accumulates to keep), not both")
        for option in ("ratio", "target"):
            value = getattr(self, option)
            if value is not None and not 0 < value < 1:
                raise PassError(f"prune-channels: {option} must be in (0, 1), not {value}")
        if self.criterion not in CRITERIA:
            raise PassError(f"prune-channels: unknown criterion '{self.criterion}'; use one of "
                            f"{', '.join(CRITERIA)}")
        if self.round_to is not None and (not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise PassError(f"prune-channels: round_to must be a positive integer, not "
                            f"{self.round_to!r}")
        if not 0 < self.max_ratio_per_layer <= 1:
            raise PassError("prune-channels: max_ratio_per_layer must be in (0, 1], not "
                            f"{self.max_ratio_per_layer}")
        if isinstance(self.exclude, str):
            raise PassError("prune-channels: exclude must be a list of node-name globs, not "
                            "one string")
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Score, choose the kept channels, rewrite the graph and re-infer shapes."""
        round_to = self.round_to or ctx.target.channel_multiple()
        coupling = analyze(model)
        stats: dict = {"groups": len(coupling.groups), "round_to": round_to,
                       "frozen": {g.label: g.frozen for g in coupling.groups if g.frozen}}
        skipped = self._skipped(model, coupling, stats)
        scored = []
        for group in coupling.groups:
            if group.frozen or group.label in skipped:
                continue
            scores = self._scores(group, coupling)
            if not _steps(group.channels, group.unit, round_to, self.max_ratio_per_layer):
                blocks = f" in blocks of {group.unit}" if group.unit > 1 else ""
                skipped[group.label] = (f"{group.channels * group.unit} channels{blocks}: no "
                                        f"narrower multiple of round_to={round_to} within "
                                        f"max_ratio_per_layer={self.max_ratio_per_layer}")
            elif scores is None:
                skipped[group.label] = ("no BatchNormalization to take gamma from"
                                        if self.criterion == "bn-gamma" else
                                        "every producer's weight is zero")
            else:
                scored.append((group, scores))
        stats["skipped"] = skipped
        if not scored:
            stats["reason"] = ("no prunable channel group: every group is frozen or skipped "
                               "(see 'frozen' and 'skipped')")
            return PassResult(False, stats)
        steps = [_steps(g.channels, g.unit, round_to, self.max_ratio_per_layer)
                 for g, _ in scored]
        if self.target is None:
            widths = self._widths(scored, steps)
        else:
            widths = self._target_widths(model, ctx, coupling, scored, steps, stats)
        kept = {}
        for (group, scores), width in zip(scored, widths, strict=True):
            if width < group.channels:
                chosen = np.sort(np.argsort(-scores, kind="stable")[:width])
                kept.update(dict.fromkeys(group.spaces, chosen))
        stats.update(channels_before=sum(g.channels * g.unit for g, _ in scored),
                     channels_after=sum(w * g.unit for (g, _), w in zip(scored, widths,
                                                                        strict=True)),
                     widths={g.label: f"{g.channels * g.unit} → {w * g.unit}"
                             for (g, _), w in zip(scored, widths, strict=True)
                             if w < g.channels})
        if not kept:
            asked = f"ratio={self.ratio}" if self.target is None else f"target={self.target}"
            stats["reason"] = (f"{asked} with round_to={round_to} leaves every width "
                               "unchanged")
            return PassResult(False, stats)
        _rewrite(model, coupling, kept)
        return PassResult(True, stats)

    def _target_widths(self, model: Model, ctx: Context, coupling: Coupling,
                       scored: list[tuple[ChannelGroup, np.ndarray]], steps: list[list[int]],
                       stats: dict) -> list[int]:
        """Widths keeping `target` of the multiply-accumulates, cheapest damage first.

        Block ``j`` of group ``g`` (its next-lowest scores) costs
        ``e_g · ΣS(block) / ΣS(all of g's blocks)``: the group's measured sensitivity ``e_g``
        (output error with all its blocks removed, `sensitivity.group_sensitivity`; 1 for
        every group without data) spread over its blocks by importance. Blocks are taken in
        order of cost per multiply-accumulate saved (at the widths reached so far) until the
        model is down to `target` of its multiply-accumulates.
        """
        costs = layer_costs(coupling, list(model.graph.nodes))
        ascending = [np.sort(scores) for _, scores in scored]
        deepest = [int(sum(s)) for s in steps]
        if ctx.data is not None:
            lowest = [np.argsort(scores, kind="stable")[:d] for (_, scores), d
                      in zip(scored, deepest, strict=True)]
            reference = Reference(model, holdout(model, ctx.data, self._samples(model)))
            sens = group_sensitivity(model, coupling, [(g, r) for (g, _), r
                                                       in zip(scored, lowest, strict=True)],
                                     reference, ctx.progress)
            stats["sensitivity"] = {g.label: round(e, 6) for (g, _), e
                                    in zip(scored, sens, strict=True)}
        else:
            sens = [1.0] * len(scored)
            stats["sensitivity"] = "not measured (no data): weight scores only"
        index = {id(g): i for i, g in enumerate(coupling.groups)}
        removed = [0] * len(coupling.groups)
        base = total_macs(costs, removed)
        goal = self.target * base
        taken = [0] * len(scored)
        done = [0] * len(scored)
        current = base
        while current > goal:
            best = None
            for i, (group, _) in enumerate(scored):
                if taken[i] == len(steps[i]):
                    continue
                size = steps[i][taken[i]]
                trial = list(removed)
                trial[index[id(group)]] += size
                saved = current - total_macs(costs, trial)
                if saved <= 0:
                    continue
                whole = float(ascending[i][:deepest[i]].sum()) or 1.0
                cost = sens[i] * float(ascending[i][done[i]:done[i] + size].sum()) / whole
                if best is None or cost / saved < best[0]:
                    best = (cost / saved, i, size, saved)
            if best is None:
                break
            _, i, size, saved = best
            removed[index[id(scored[i][0])]] += size
            taken[i] += 1
            done[i] += size
            current -= saved
        stats["macs_ratio"] = round(current / base, 4) if base else 1.0
        if current > goal:
            stats["target_reached"] = False
            warnings.warn(f"prune-channels: target={self.target} is out of reach within "
                          f"max_ratio_per_layer={self.max_ratio_per_layer}: "
                          f"{current / base:.3f} of the multiply-accumulates kept",
                          UserWarning, stacklevel=2)
        return [group.channels - d for (group, _), d in zip(scored, done, strict=True)]

    # ----------------------------------------------------------------------------------------
    def _samples(self, model: Model) -> int:
        """Samples to measure sensitivities on: `samples`, fewer for large inputs (at most
        `SENSITIVITY_ELEMENTS` input elements, at least 2 samples)."""
        per = sum(math.prod(d for d in t.shape[1:] if isinstance(d, int) and d > 0)
                  for t in model.graph.inputs if t.shape)
        return max(2, min(self.samples, SENSITIVITY_ELEMENTS // max(per, 1)))

    def _skipped(self, model: Model, coupling: Coupling, stats: dict) -> dict[str, str]:
        """Groups kept whole by `exclude` or as first layers; warns about globs matching no
        node."""
        unmatched = [p for p in self.exclude
                     if not any(matches(n, [p]) for n in model.graph.nodes)]
        if unmatched:
            stats["unmatched_exclude"] = unmatched
            warnings.warn(f"prune-channels: exclude pattern(s) {unmatched} match no node",
                          UserWarning, stacklevel=2)
        inputs = {id(t) for t in model.graph.inputs}
        skipped = {}
        for group in coupling.groups:
            layers = group.producers + [n for n in group.through if n.op == "Conv"]
            hits = [p for p in self.exclude
                    if any(matches(n, [p]) for n in layers)]
            if group.frozen:
                continue
            first = [n for n in group.producers if id(n.inputs[0]) in inputs]
            if hits:
                skipped[group.label] = f"excluded by {hits}"
            elif first and not self.prune_first:
                skipped[group.label] = (f"first layer: reads graph input "
                                        f"'{first[0].inputs[0].name}' (prune_first=True "
                                        "prunes it)")
        return skipped

    def _scores(self, group: ChannelGroup, coupling: Coupling) -> np.ndarray | None:
        """``S_g``: per-layer scores normalized by their mean, averaged (None: no source)."""
        if self.criterion == "bn-gamma":
            layers = list(_gamma_scores(group, coupling))
        else:
            layers = [_weight_scores(node, axis, self.criterion, offset, stride, group.channels)
                      for node, axis, offset, stride in _producer_weights(group, coupling)]
        layers = [s / s.mean() for s in layers if s.mean() > 0]
        return np.mean(layers, axis=0) if layers else None

    def _widths(self, scored: list[tuple[ChannelGroup, np.ndarray]], steps: list[list[int]]
                ) -> list[int]:
        """Kept width per group (in its channels, blocks of ``unit`` layer channels): blocks
        of whole round_to steps, ranked globally; the budget counts layer channels."""
        blocks = []  # (mean score, group, step within the group, channels it removes)
        for i, ((_, scores), sizes) in enumerate(zip(scored, steps, strict=True)):
            ascending, removed = np.sort(scores), 0
            for step, size in enumerate(sizes):
                blocks.append((float(ascending[removed:removed + size].mean()), i, step, size))
                removed += size
        ratio = 0.3 if self.ratio is None else self.ratio
        budget = ratio * sum(group.channels * group.unit for group, _ in scored)
        removed, taken, total = [0] * len(scored), [0] * len(scored), 0
        for _, i, step, size in sorted(blocks):
            # A block is taken while it brings the total closer to the budget; a group's
            # blocks are taken in order (later ones hold its higher scores).
            layer_channels = size * scored[i][0].unit
            if step == taken[i] and total + layer_channels / 2 < budget:
                removed[i] += size
                taken[i] += 1
                total += layer_channels
        return [group.channels - gone for (group, _), gone in zip(scored, removed,
                                                                   strict=True)]


def _steps(channels: int, unit: int, round_to: int, max_ratio: float) -> list[int]:
    """Channels removed by each successive narrowing: down to the largest multiple of
    ``n = round_to / gcd(round_to, unit)`` below `channels`, then n at a time, while the
    width stays ≥ n and the removal within `max_ratio` (max_ratio_per_layer). With blocks
    of ``unit`` layer channels (a grouped Conv's) the layer widths are multiples of
    ``lcm(round_to, unit)``; with ``unit = 1``, of round_to."""
    step = round_to // math.gcd(round_to, unit)
    least = max(channels * (1 - max_ratio), step)
    floor = math.ceil(least / step - 1e-9) * step
    widths = [channels, *range((channels - 1) // step * step, floor - 1, -step)]
    return [a - b for a, b in itertools.pairwise(widths)]


def _rewrite(model: Model, coupling: Coupling, kept: dict[int, np.ndarray]) -> None:
    """Apply every edit, tag the pruned layers, re-infer the shapes."""
    for edit in coupling.edits:
        positions = edit.layout.positions(kept)
        if positions is not None:
            edit.apply(model, positions)
    for node, layout in coupling.outputs:
        positions = layout.positions(kept)
        if positions is not None:
            before = kept_channels(node)  # pruned before: record indices of the original
            original = positions if before is None else before[positions]
            fidelity.tag(node, KEPT_KEY, json.dumps(original.tolist()))
    # Every intermediate shape annotation downstream of a pruned group is stale now.
    model.invalidate()
    model.analysis(analyses.shapes)


def _producer_weights(group: ChannelGroup, coupling: Coupling
                      ) -> list[tuple[gs.Node, int, int, int]]:
    """``(producer, output axis of its weight, offset, stride)`` of each place `group` takes
    in a producer's output: channel ``k`` is the weight's output slices
    ``[offset + k·stride, offset + (k+1)·stride)`` (a part of a cut output starts past 0, a
    block of a grouped Conv's input spans ``stride`` slices)."""
    edits = {id(e.node): e for e in coupling.edits
             if e.role == "producer" and isinstance(e, SliceInput) and e.index == 1}
    producers = {id(node): node for node in group.producers}.values()
    return [(node, edits[id(node)].axis, offset, stride) for node in producers
            for offset, stride in edits[id(node)].layout.index_maps(group.spaces)]


def _weight_scores(node: gs.Node, axis: int, criterion: str, offset: int, stride: int,
                   channels: int) -> np.ndarray:
    """Norm of the (BN-folded) weight's output slices of each channel: ``Σ_t s[o + k·r + t]``
    for l1, ``√Σ_t s[o + k·r + t]²`` for l2 (the norm of the whole block)."""
    weight = np.moveaxis(np.asarray(node.inputs[1].values, np.float64), axis, 0)
    flat = weight.reshape(weight.shape[0], -1)
    norms = np.abs(flat).sum(1) if criterion == "l1" else np.sqrt((flat * flat).sum(1))
    readers = consumers(node.outputs[0])
    if len(readers) == 1 and readers[0].op == "BatchNormalization":
        norms = norms * np.abs(_bn_scale(readers[0]))
    norms = norms[offset:offset + channels * stride]
    if stride == 1:
        return norms
    blocks = norms.reshape(channels, stride)
    return blocks.sum(1) if criterion == "l1" else np.sqrt((blocks * blocks).sum(1))


def _bn_scale(node: gs.Node) -> np.ndarray:
    """``γ / √(σ² + ε)`` of an inference BatchNormalization."""
    gamma, var = (np.asarray(node.inputs[i].values, np.float64) for i in (1, 4))
    return gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))


def _gamma_scores(group: ChannelGroup, coupling: Coupling):
    """``|γ_k|`` of every BatchNormalization the group passes through, per occurrence."""
    for edit in coupling.edits:
        if (edit.node.op == "BatchNormalization" and isinstance(edit, SliceInput)
                and edit.index == 1 and any(edit.node is n for n in group.through)):
            gamma = np.abs(np.asarray(edit.node.inputs[1].values, np.float64))
            for offset, stride in edit.layout.index_maps(group.spaces):
                # A channel of `stride` positions (a block, or after Flatten): their mean.
                yield gamma[offset:offset + stride * group.channels].reshape(
                    group.channels, stride).mean(1)


__all__ = ["PruneChannels", "kept_channels"]
