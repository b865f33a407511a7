"""Mixed precision: static int8 guarded on the user's data — within budget and faster, or an
error that says why.

1. **Measure plain int8.** `quantize-static` runs (through `Context.run`, so its record
   nests here) on a copy; the copy is measured against the FP32 model on held-back samples
   (`runtime.guard`: per output cosine, SNR, top-1 agreement for class-like outputs). Within
   the budget: done.
2. **Local sensitivity of every unit** — weighted layers, but also the Add / Mul / Concat /
   Sigmoid / pool units whose Q/DQ can do the damage (a GELU cubic, a LayerNorm variance). Each
   unit is run alone on real activations collected from the data, once in float and once with
   its activation inputs, weight and output fake-quantized exactly as `quantize-static` would
   (same ranges, dtype, per-channel axes, weight bits). Score: the relative error energy
   ``‖f(x) − f̂(x̂)‖² / ‖f(x)‖²``, summed over batches (batches of different shapes are
   scored one by one, never concatenated). One single-node session per unit.
3. **Fallback.** The k highest-scoring units are kept float for k = 1, 2, 4, … until the
   budget holds, then k is narrowed by bisection: O(log units) model evaluations, not one per
   unit. If only keeping (almost) everything float holds the budget, the pass stops with a
   `GuardError` naming the worst units and the numbers — it never returns a collapsed model.
4. **Latency guard** (cpu): the result is timed against the float model it replaces,
   interleaved in one process (`runtime.guard.latency_ratio`, one thread, median). Slower
   than ``max_latency_ratio``: the island ops (everything but the weighted layers) are reverted
   and it is measured again; still slower: `GuardError`, unless ``allow_slower``.

Lossy (it quantizes), but within the stated budget on the held-back samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxpress.errors import GuardError, PreconditionError
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.quantize.plan import QuantPlan, Unit
from onnxpress.passes.quantize.qdq import QParams, qparams, quantize_array, weight_qparams
from onnxpress.passes.quantize.static import QuantizeStatic
from onnxpress.runtime.collect import collect
from onnxpress.runtime.data import Feeds
from onnxpress.runtime.guard import Budget, Measurement, Reference, holdout, latency_ratio
from onnxpress.runtime.session import session

#: Samples of every unit input kept for the local sensitivity (a few batches' worth).
SCORE_SAMPLES = 8


def fake_quantize(values: np.ndarray, p: QParams) -> np.ndarray:
    """`values` quantized and dequantized with `p`: what the int8 kernel effectively sees."""
    q = quantize_array(values, p).astype(np.float64)
    scale, zero = p.scale.astype(np.float64), p.zero_point.astype(np.float64)
    if p.axis is not None and scale.ndim:
        shape = [1] * values.ndim
        shape[p.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(values.dtype)


class _Batches:
    """Keeps the first batches of a tensor, up to `limit` samples (an observer for `collect`).

    Batches stay separate: with variable sequence lengths they cannot be concatenated.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.parts: list[np.ndarray] = []
        self.count = 0

    def update(self, batch: np.ndarray) -> None:
        """Keep the batch while fewer than `limit` samples are kept."""
        if self.count < self.limit:
            self.parts.append(np.array(batch))
            self.count += len(batch) if np.ndim(batch) else 1


@dataclass(frozen=True)
class MixedPrecision(Pass):
    """Quantize like quantize-static within an accuracy budget against FP32 (keeping the
    most sensitive units float as needed) and, on cpu, never slower than the float model.

    Attributes:
        min_cosine: Required mean per-sample cosine of every judged output to FP32.
        min_agreement: Required top-1 agreement of every class-like judged output.
        samples: Held-back samples of ctx.data the budget is measured on (the last ones).
        outputs: Names of the judged outputs (None: all). A sentence encoder exporting token
            embeddings beside the pooled one is judged by the pooled one.
        quantize: The quantize-static options to apply (its `exclude` is extended).
        latency: On cpu, time the result against the float model (the latency guard).
        max_latency_ratio: Slowest acceptable int8 / float latency (a noise margin above 1).
        allow_slower: Keep a result slower than that instead of stopping with an error.
    """

    name: ClassVar[str] = "mixed-precision"
    exact: ClassVar[bool] = False
    min_cosine: float = 0.99
    min_agreement: float = 0.99
    samples: int = 32
    outputs: tuple[str, ...] | None = None
    quantize: QuantizeStatic = field(default_factory=QuantizeStatic)
    latency: bool = True
    max_latency_ratio: float = 1.05
    allow_slower: bool = False

    def requires(self, model: Model, ctx: Context) -> None:
        """Needs ranges (calibrate) and data to measure on."""
        self.quantize.requires(model, ctx)
        if ctx.data is None:
            raise PreconditionError("mixed-precision measures outputs on data: pass data=... "
                                    "/ --data FILE")
        for value, what in ((self.min_cosine, "min_cosine"),
                            (self.min_agreement, "min_agreement")):
            if not 0 < value <= 1:
                raise PreconditionError(f"{what} must be in (0, 1], not {value}")
        names = [t.name for t in model.graph.outputs]
        unknown = sorted(set(self.outputs or ()) - set(names))
        if unknown:
            raise PreconditionError(f"mixed-precision: {unknown} are not outputs of the model "
                                    f"(outputs: {names})")

    @property
    def budget(self) -> Budget:
        """The accuracy budget."""
        return Budget(self.min_cosine, self.min_agreement, self.outputs)

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Quantize with the fewest float units that meet the budget (and pay)."""
        feeds = holdout(model, ctx.data, self.samples)
        fp32 = ctx.teacher() or model
        reference = Reference(fp32, feeds, self.outputs)
        budget = self.budget
        trials: dict[int, _Trial] = {}

        def attempt(quantizer: QuantizeStatic) -> _Trial:
            trial = model.copy()
            record = ctx.run(quantizer, trial)
            return _Trial(trial, reference.measure(trial), record.stats)

        chosen, kept_float = attempt(self.quantize), []
        if not chosen.measured.meets(budget):
            units = self.quantize.plan(model, ctx.target)
            order = self._ranked(model, ctx, units, feeds)
            trials[0] = chosen
            k = self._fallback(order, attempt, trials, budget)
            if k is None:
                worst = ", ".join(f"{n} ({s:.3g})" for n, s in order[:5])
                best = max(trials.values(), key=lambda t: t.measured.score()).measured
                raise GuardError(
                    f"int8 misses the accuracy budget on {chosen.measured.samples} held-back "
                    f"samples: plain int8 gives {chosen.measured.summary()}; keeping up to "
                    f"{max(trials)} of {len(order)} units float gives at best "
                    f"{best.summary()}. Most sensitive units (relative error): {worst}. Lower "
                    "the budget (min_cosine / min_agreement), exclude these layers, or try "
                    "smoothquant / equalize before calibrate")
            chosen = trials[k]
            kept_float = [n for n, _ in order[:k]]
        if not chosen.stats.get("nodes"):
            raise GuardError("quantize-static found nothing to quantize in this model for "
                             f"target '{ctx.target.name}'; it stays float")
        stats = {"quantized": chosen.stats["nodes"], "fallback": len(kept_float),
                 "measured": chosen.measured.summary(), "samples": chosen.measured.samples}
        if kept_float:
            stats["float_units"] = ", ".join(kept_float)
        if self.latency and ctx.target.name == "cpu":
            chosen, ratio = self._latency_guard(model, ctx, chosen, feeds, reference,
                                                kept_float)
            stats["latency_vs_float"] = round(ratio, 3)
        if "onnxruntime" in chosen.stats:
            stats["onnxruntime"] = chosen.stats["onnxruntime"]
        if chosen.stats.get("op_types"):
            stats["reverted"] = "ops without weights (they did not pay)"
        model.adopt(chosen.model)
        return PassResult(True, stats)

    # ----------------------------------------------------------------------------------------
    def _fallback(self, order: list[tuple[str, float]], attempt, trials: dict, budget: Budget
                  ) -> int | None:
        """The fewest top-ranked units to keep float for the budget to hold, or None when only
        (nearly) all of them would do."""
        def at(k: int) -> bool:
            if k not in trials:
                excluded = (*self.quantize.exclude, *(n for n, _ in order[:k]))
                trials[k] = attempt(replace(self.quantize, exclude=excluded, fused_only=False))
            return trials[k].measured.meets(budget)

        limit = len(order) - 1  # keeping every unit float is no quantization at all
        low, k = 0, 1  # k = 0 (plain int8) is known to fail
        while True:
            if k > limit:
                return None
            if at(k):
                break
            if k == limit:
                return None
            low, k = k, min(limit, 2 * k)
        high = k
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if at(middle) else (middle, high)
        # The fallback trials skipped the fusion check for speed: apply it to the winner.
        excluded = (*self.quantize.exclude, *(n for n, _ in order[:high]))
        trials[high] = attempt(replace(self.quantize, exclude=excluded))
        return high if trials[high].measured.meets(budget) else None

    def _latency_guard(self, model: Model, ctx: Context, chosen: _Trial,
                       feeds: Sequence[Feeds], reference: Reference, kept_float: list[str]
                       ) -> tuple[_Trial, float]:
        """Time `chosen` against the float `model`; revert island ops if it does not pay."""
        feed = feeds[0]
        ratio = latency_ratio(chosen.model, model, feed)
        if ratio <= self.max_latency_ratio:
            return chosen, ratio
        anchors = replace(self.quantize, exclude=(*self.quantize.exclude, *kept_float),
                          op_types=tuple(op for op, rule in ctx.target.quantization.items()
                                         if rule.weight is not None))
        trial = model.copy()
        record = ctx.run(anchors, trial)
        anchored_ratio = latency_ratio(trial, model, feed)
        measured = reference.measure(trial)
        if anchored_ratio <= self.max_latency_ratio and measured.meets(self.budget):
            return _Trial(trial, measured, {**record.stats, "op_types": anchors.op_types}), \
                anchored_ratio
        if self.allow_slower:
            return chosen, ratio
        raise GuardError(
            f"int8 runs at {ratio:.2f}x the float model's latency on this machine (weighted "
            f"layers only: {anchored_ratio:.2f}x; limit {self.max_latency_ratio}x, 1 thread, "
            f"batch of {len(next(iter(feed.values())))}): quantizing does not pay here. Keep "
            "the float model, or allow_slower=True / --allow-slower to keep int8 anyway")

    def _ranked(self, model: Model, ctx: Context, chosen: QuantPlan, feeds: Sequence[Feeds]
                ) -> list[tuple[str, float]]:
        """(unit name, local sensitivity) for every unit, most sensitive first."""
        inputs = sorted({unit.node.inputs[i].name for unit in chosen.units
                         for i in unit.rule.inputs(unit.node)})
        observers = {name: _Batches(name, SCORE_SAMPLES) for name in inputs}
        collect(model, inputs, feeds, observers, target="cpu", progress=ctx.progress)
        symmetric = (ctx.target.symmetric_activations
                     if self.quantize.symmetric_activations is None
                     else self.quantize.symmetric_activations)
        dtype = np.dtype(self.quantize.activation_dtype or ctx.target.activation_dtype)

        def params(tensor: gs.Tensor) -> QParams | None:
            if tensor.name not in ctx.calibration:
                return None
            lo, hi = ctx.calibration[tensor.name]
            return qparams(float(lo), float(hi), dtype, symmetric=symmetric)

        advance = ctx.progress("sensitivity", len(chosen.units))
        scores = []
        for unit in chosen.units:
            scores.append((unit.node.name, self._score(model, ctx, unit, chosen, observers,
                                                       params)))
            advance(1)
        return sorted(scores, key=lambda s: -s[1])

    def _score(self, model: Model, ctx: Context, unit: Unit, chosen: QuantPlan,
               observers: dict[str, _Batches], params) -> float:
        """Relative error energy of the unit quantized alone, over the kept batches."""
        node, rule = unit.node, unit.rule
        indices = rule.inputs(node)
        weights, quantized_weights = {}, {}
        if rule.weight is not None:
            w = np.asarray(node.inputs[rule.weight].values)
            axis = rule.axis(node) if self.quantize.per_channel else None
            weights[rule.weight] = w
            quantized_weights[rule.weight] = fake_quantize(
                w, weight_qparams(w, axis, bits=ctx.target.weight_bits))
        out_planned = chosen.activations.get(id(node.outputs[0]))
        out_p = params(node.outputs[0]) if out_planned is not None else None
        error = energy = 0.0
        for part in range(min(len(observers[node.inputs[i].name].parts) for i in indices)):
            x = {i: observers[node.inputs[i].name].parts[part] for i in indices}
            x_hat = {i: (fake_quantize(v, p) if (p := params(node.inputs[i])) else v)
                     for i, v in x.items()}
            exact = _run_alone(model, node, x, weights).astype(np.float64)
            approx = _run_alone(model, node, x_hat, quantized_weights)
            if out_p is not None:
                approx = fake_quantize(approx, out_p)
            error += float(np.sum((exact - approx) ** 2))
            energy += float(np.sum(exact ** 2))
        return error / max(energy, 1e-30)


@dataclass(frozen=True)
class _Trial:
    """One quantized candidate: the model, how it measured, and its quantize-static stats."""

    model: Model
    measured: Measurement
    stats: dict


def _run_alone(model: Model, node: gs.Node, activations: dict[int, np.ndarray],
               weights: dict[int, np.ndarray]) -> np.ndarray:
    """Output of `node` alone on the given activation inputs and weight values."""
    names, inputs, initializers, feeds = [], [], [], {}
    for i, tensor in enumerate(node.inputs):
        name = "" if tensor.is_empty() else f"in{i}"
        if i in activations:
            feeds[name] = activations[i]
            inputs.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(activations[i].dtype),
                list(activations[i].shape)))
        elif name:
            value = weights.get(i, np.asarray(tensor.values))
            initializers.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        names.append(name)
    proto_node = onnx.helper.make_node(node.op, names, ["out"], domain=node.domain,
                                       **node.attrs)
    graph = onnx.helper.make_graph([proto_node], "alone", inputs,
                                   [onnx.helper.make_empty_tensor_value_info("out")],
                                   initializers)
    proto = onnx.helper.make_model(graph, ir_version=model.ir_version, opset_imports=[
        onnx.helper.make_opsetid(d, v) for d, v in model.opsets.items()])
    return session(proto.SerializeToString(), "cpu", optimize=False).run(["out"], feeds)[0]
