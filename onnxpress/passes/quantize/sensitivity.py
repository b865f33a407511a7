"""Mixed precision: static int8 everywhere it keeps the outputs close to FP32.

Quantizing every layer compounds small errors; a few layers cause most of the damage (on
all-MiniLM-L6-v2 the FFN and attention-output projections, whose inputs carry outlier
channels). The pass measures and keeps just those in float:

1. **Local sensitivity.** For each layer `quantize-static` would quantize, the layer alone
   is run on real activations (collected from the calibration data), once in float and once
   with its activation inputs and weight fake-quantized exactly as `quantize-static` would
   quantize them (same ranges, dtype, per-channel axes). Its score is the relative error
   energy ``‖f(x, W) − f(x̂, Ŵ)‖² / ‖f(x, W)‖²``. One tiny single-node session per layer:
   cheap, and independent of how deep the layer sits.
2. **Greedy fallback.** The whole model is quantized with the k most sensitive layers kept in
   float, for k = 0, 1, 2, 4, 8, … until the *model's* outputs reach ``min_cosine`` (mean
   over samples of the per-sample cosine to the FP32 outputs, worst output), then k is
   narrowed by bisection between the last failing and the first passing k.

The score ranks; only the end-to-end cosine decides. If only keeping every candidate float
reaches the target, the pass says so and leaves the model FP32 (changed=False).

Lossy (it quantizes), but by construction within the stated cosine on the sample data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxpress.errors import PreconditionError
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.quantize.qdq import QParams, qparams, quantize_array, weight_qparams
from onnxpress.passes.quantize.static import QuantizeStatic, fusion_stats, is_transformer
from onnxpress.runtime.collect import collect
from onnxpress.runtime.data import batch_size_for
from onnxpress.runtime.session import session


def fake_quantize(values: np.ndarray, p: QParams) -> np.ndarray:
    """`values` quantized and dequantized with `p`: what the int8 kernel effectively sees."""
    q = quantize_array(values, p).astype(np.float64)
    scale, zero = p.scale.astype(np.float64), p.zero_point.astype(np.float64)
    if p.axis is not None and scale.ndim:
        shape = [1] * values.ndim
        shape[p.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(values.dtype)


class _Rows:
    """Keeps the first `limit` samples of a tensor (an observer for `collect`)."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.parts: list[np.ndarray] = []

    @property
    def count(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def update(self, batch: np.ndarray) -> None:
        if self.count < self.limit:
            self.parts.append(np.array(batch[: self.limit - self.count]))

    def merge(self, other: _Rows) -> None:
        for part in other.parts:
            self.update(part)

    @property
    def value(self) -> np.ndarray:
        return np.concatenate(self.parts)


@dataclass(frozen=True)
class MixedPrecision(Pass):
    """Quantize like quantize-static, keeping the most sensitive layers float until the
    outputs' cosine to FP32 reaches `min_cosine`.

    Attributes:
        min_cosine: Required mean per-sample cosine of every output to the FP32 model.
        samples: Samples of ctx.data used for the sensitivity and the end-to-end checks.
        outputs: Names of the outputs the target applies to (None: all). A sentence encoder
            exporting token embeddings beside the pooled one is judged by the pooled one.
        quantize: The quantize-static options to apply (its `exclude` is extended).
    """

    name: ClassVar[str] = "mixed-precision"
    exact: ClassVar[bool] = False
    min_cosine: float = 0.99
    samples: int = 32
    outputs: tuple[str, ...] | None = None
    quantize: QuantizeStatic = field(default_factory=QuantizeStatic)

    def requires(self, model: Model, ctx: Context) -> None:
        """Needs ranges (calibrate) and data to measure on."""
        self.quantize.requires(model, ctx)
        if ctx.data is None:
            raise PreconditionError("mixed-precision measures outputs on data: pass data=... "
                                    "/ --data FILE")
        if not 0 < self.min_cosine <= 1:
            raise PreconditionError(f"min_cosine must be in (0, 1], not {self.min_cosine}")

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Quantize with the fewest float layers that meet the target."""
        feeds = _take(model, ctx, self.samples)
        names = [t.name for t in model.graph.outputs]
        unknown = sorted(set(self.outputs or ()) - set(names))
        if unknown:
            raise PreconditionError(f"mixed-precision: {unknown} are not outputs of the model "
                                    f"(outputs: {names})")
        judged = names if self.outputs is None else list(self.outputs)
        reference = _outputs(model, feeds, judged)
        scores = self._scores(model, ctx)
        order = sorted(scores, key=lambda name: -scores[name])

        def attempt(k: int) -> tuple[Model, float]:
            trial = model.copy()
            quantizer = replace(self.quantize, exclude=(*self.quantize.exclude, *order[:k]))
            quantizer.quantize(trial, ctx)
            return trial, _cosine(reference, _outputs(trial, feeds, judged))

        tried: dict[int, tuple[Model, float]] = {}
        k, low = 0, -1
        while True:
            tried[k] = attempt(k)
            if tried[k][1] >= self.min_cosine or k >= len(order):
                break
            low, k = k, min(len(order), max(1, 2 * k))
        high = k
        while high - low > 1 and tried[high][1] >= self.min_cosine:
            middle = (low + high) // 2
            tried[middle] = attempt(middle)
            low, high = (low, middle) if tried[middle][1] >= self.min_cosine else (middle, high)
        best, cosine = tried[high]
        if cosine < self.min_cosine or high == len(order):
            return PassResult(False, {"reason": f"no layer can be quantized with the outputs' "
                                                f"cosine to FP32 at or above {self.min_cosine}",
                                      "candidates": len(order)})
        model.adopt(best)
        quantized = len(order) - high
        return PassResult(True, {
            "quantized": quantized, "kept_float": high, "cosine": round(cosine, 6),
            "trials": len(tried), "float_layers": ", ".join(order[:high]),
            **fusion_stats(model, ctx)})

    def _scores(self, model: Model, ctx: Context) -> dict[str, float]:
        """Relative output error of each candidate layer quantized alone, on real inputs."""
        rules = ctx.target.quantization
        transformer = (is_transformer(model) if self.quantize.transformer == "auto"
                       else self.quantize.transformer == "on")
        candidates = [n for n in self.quantize.select(model, rules, transformer)
                      if rules[n.op].weight is not None]
        inputs = sorted({n.inputs[i].name for n in candidates for i in rules[n.op].inputs(n)})
        observers = {name: _Rows(name, self.samples) for name in inputs}
        collect(model, inputs, ctx.data, observers, target="cpu")
        dtype = np.dtype(self.quantize.activation_dtype or ctx.target.activation_dtype)
        symmetric = (ctx.target.symmetric_activations
                     if self.quantize.symmetric_activations is None
                     else self.quantize.symmetric_activations)
        scores = {}
        for node in candidates:
            rule = rules[node.op]
            x = {i: observers[node.inputs[i].name].value for i in rule.inputs(node)}
            x_hat = {i: fake_quantize(v, qparams(*ctx.calibration[node.inputs[i].name], dtype,
                                                 symmetric=symmetric))
                     for i, v in x.items()}
            w = np.asarray(node.inputs[rule.weight].values)
            axis = rule.axis(node) if self.quantize.per_channel else None
            w_hat = fake_quantize(w, weight_qparams(w, axis, bits=ctx.target.weight_bits))
            exact = _run_alone(model, node, x, {rule.weight: w})
            approx = _run_alone(model, node, x_hat, {rule.weight: w_hat})
            scores[node.name] = float(np.sum((exact - approx) ** 2)
                                      / max(np.sum(exact.astype(np.float64) ** 2), 1e-30))
        return scores


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


def _take(model: Model, ctx: Context, n: int) -> list[dict[str, np.ndarray]]:
    """About `n` samples of ctx.data, as the source's own batches."""
    feeds, count = [], 0
    for feed in ctx.data.batches(batch_size_for(model, ctx.data, min(n, 32))):
        feeds.append(feed)
        count += len(next(iter(feed.values())))
        if count >= n:
            break
    return feeds


def _outputs(model: Model, feeds: list[dict[str, np.ndarray]], names: list[str]
             ) -> list[np.ndarray]:
    """The outputs `names` of `model` on `feeds`, samples concatenated, as float64 rows."""
    sess = session(model, "cpu")
    runs = [sess.run(names, feed) for feed in feeds]
    return [np.concatenate([r[i].reshape(len(r[i]), -1) for r in runs]).astype(np.float64)
            for i in range(len(runs[0]))]


def _cosine(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """The worst output's mean per-sample cosine similarity."""
    worst = 1.0
    for ref, cand in zip(reference, candidate, strict=True):
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
        cosine = np.where(norms > 0, np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-300),
                          1.0)
        worst = min(worst, float(np.mean(cosine)))
    return worst
