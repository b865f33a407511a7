"""SmoothQuant: move activation outliers into the weights of the MatMul/Gemm that read them.

A MatMul ``Y = X W`` (``X: [..., K]``, ``W: [K, N]``) is unchanged by any per-input-channel
scale ``s > 0`` applied as ``X' = X · diag(s)⁻¹``, ``W' = diag(s) · W``:

    X' W' = X diag(s)⁻¹ diag(s) W = X W.

Transformer activations have a few channels whose values are 10-100× the others, so a
per-tensor int8 range for ``X`` wastes most of its levels on them, while the weights, quantized
per output channel, have room to spare. SmoothQuant (Xiao et al., 2023) picks

    s_j = max|X_j|^α / max|W_j|^(1-α)

(``max|W_j|`` over row ``j`` of every weight that reads ``X``; ``α`` = 0.5 by default), so that
``max|X'_j| = max|X_j|^(1-α) max|W_j|^(1-α)`` and ``max|W'_j| = max|X_j|^α max|W_j|^α``: at
``α`` = 0.5 both are ``sqrt(max|X_j| max|W_j|)``; ``α`` → 1 moves all of the range into the
weights, ``α`` → 0 none. ``max|X_j|`` is measured on ``ctx.data`` (a `PerChannel` observer per
input through `collect`). Channels never active, or whose weight row is zero, keep ``s_j = 1``.

Where ``X / s`` goes, cheapest first:

1. folded into the producer when every reader of ``X`` is smoothed with the same ``s`` and ``X``
   is not a graph output: a LayerNormalization's scale and bias (``LN(x)·γ/s + β/s``), or the
   constant of a Mul (``x · (c/s)``) — free at run time;
2. otherwise a ``Mul(X, 1/s)`` in front of the smoothed readers (other readers, such as a
   residual Add, keep the exact ``X``). That Mul runs in float before the QuantizeLinear and
   costs latency; the stats count folded and inserted inputs.

``auto_alpha=True`` picks ``α`` per input from `ALPHAS` (or no smoothing at all) by the error it
would leave after int8: on up to `SAMPLE_ROWS` rows of ``X`` kept during the measurement,
``Σ_readers ‖Q(X') Q(W') − X W‖²`` with ``Q`` the quantizer's own rounding — ``X'`` per tensor
uint8 over its full observed range ``[min_j min(X_j)/s_j, max_j max(X_j)/s_j]``, ``W'`` per output
channel at the target's weight bits (`weight_qparams`). On MiniLM's outputs it ties the best
single ``α`` (mean embedding cosine 0.9969 vs 0.9969 at ``α`` = 0.7-0.8 and 0.9894 at 0.5;
benchmarks/RESULTS.md), without a sweep over the whole model.

Exact in float (up to rounding). Idempotent: re-measuring after smoothing gives
``s'_j = (max|X_j|/s_j)^α / (s_j max|W_j|)^(1-α) = 1``, so inputs whose scales are all within
`TOLERANCE` of 1 are left alone (with ``auto_alpha`` a second run may still pick another
``α`` for an input, when that scores better than leaving it). Run it before ``calibrate``
and ``quantize-static``:
``["fuse", "smoothquant", Calibrate(...), "quantize-static"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import PassError, PreconditionError
from onnxpress.ir.edit import consumers, insert_after, is_graph_output, producer
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.calibrate.channels import channel_statistics, require_data
from onnxpress.passes.calibrate.observers import PerChannel
from onnxpress.passes.quantize.qdq import qparams, weight_qparams
from onnxpress.passes.quantize.sensitivity import fake_quantize
from onnxpress.passes.sparsity.coupling import set_constant
from onnxpress.runtime.collect import collect

#: Inputs whose scales all satisfy ``|log s| < TOLERANCE`` are already smooth.
TOLERANCE = 1e-3

#: Scales are kept in [1 / LIMIT, LIMIT] so that a near-dead channel cannot blow a weight up.
LIMIT = 1e5

#: Candidates of ``auto_alpha``.
ALPHAS = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))

#: Rows of each input kept to score the candidates of ``auto_alpha``.
SAMPLE_ROWS = 1024


def input_channel_axis(node: gs.Node) -> int | None:
    """The axis of a MatMul/Gemm's 2-D weight (input 1) that meets the activation's channels.

    None when the node cannot be smoothed: not a MatMul/Gemm, a transposed Gemm activation, or
    a weight that is not a 2-D float constant.
    """
    if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if not (isinstance(weight, gs.Constant) and np.asarray(weight.values).ndim == 2
            and np.issubdtype(np.asarray(weight.values).dtype, np.floating)):
        return None
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return None
        return 1 if node.attrs.get("transB", 0) else 0
    return 0


def _scale_along(values: np.ndarray, axis: int, scale: np.ndarray) -> np.ndarray:
    """`values` multiplied by `scale` along `axis` (broadcast over the other axes)."""
    shape = [1] * values.ndim
    shape[axis] = -1
    return (values * scale.reshape(shape)).astype(values.dtype)


@dataclass
class _Group:
    """One activation and the MatMul/Gemm readers smoothed with one scale vector."""

    tensor: gs.Variable
    readers: list[gs.Node]

    def weight_absmax(self) -> np.ndarray:
        """``max|W_j|`` per input channel over every reader's weight."""
        rows = [np.abs(np.asarray(n.inputs[1].values, np.float64)).max(
            axis=1 - input_channel_axis(n)) for n in self.readers]
        return np.max(np.stack(rows), axis=0)

    def exclusive(self, model: Model) -> bool:
        """Whether the smoothed readers are all of the tensor's readers (folding is safe)."""
        ours = {id(n) for n in self.readers}
        return (not is_graph_output(model.graph, self.tensor)
                and all(id(n) in ours for n in consumers(self.tensor)))


@dataclass(frozen=True)
class SmoothQuant(Pass):
    """Scale MatMul/Gemm inputs per channel into their weights, folding where it is free.

    Attributes:
        alpha: Migration strength in [0, 1]: the share of each channel's range moved from the
            activation into the weights.
        auto_alpha: Choose ``α`` per input among `ALPHAS` (or no smoothing) by the int8
            error it leaves (module docstring); `alpha` is then unused.
        min_outlier_ratio: Smooth only inputs with outlier channels: ``max_j max|X_j|`` at
            least this many times ``median_j max|X_j|`` (0: every input).
        batch_size: Samples per inference batch of the measurement.
    """

    name: ClassVar[str] = "smoothquant"
    exact: ClassVar[bool] = True

    alpha: float = 0.5
    auto_alpha: bool = False
    min_outlier_ratio: float = 0.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        """Validate the options now."""
        if not 0.0 <= self.alpha <= 1.0:
            raise PassError(f"smoothquant: alpha must be in [0, 1], not {self.alpha}")
        if not self.min_outlier_ratio >= 0:
            raise PassError("smoothquant: min_outlier_ratio must be ≥ 0, not "
                            f"{self.min_outlier_ratio}")
        if self.batch_size < 1:
            raise PassError(f"smoothquant: batch_size must be positive, not {self.batch_size}")

    def requires(self, model: Model, ctx: Context) -> None:
        """The activations' ranges are measured on the pipeline's data."""
        require_data(ctx, self.name)

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Measure each group's input, then fold or insert its scales."""
        groups = self.groups(model)
        stats = {"alpha": "auto" if self.auto_alpha else self.alpha, "inputs": 0,
                 "matmuls": 0, "folded": {}, "inserted": 0, "already_smooth": 0,
                 "no_outliers": 0}
        if self.auto_alpha:
            stats.update(alphas={}, kept_unsmoothed=0)
        if not groups:
            stats["reason"] = "no MatMul/Gemm with a constant 2-D weight reads an activation"
            return PassResult(False, stats)
        observed, samples = self._measure(model, ctx, groups)
        # Every scale first: a group that cannot be smoothed fails with the model untouched.
        planned = []
        for group in groups:
            scale = self._plan(group, observed[group.tensor.name], samples, ctx, stats)
            if scale is not None:
                planned.append((group, scale))
        for group, scale in planned:
            for node in group.readers:
                weight = np.asarray(node.inputs[1].values)
                set_constant(model, node, 1,
                             _scale_along(weight, input_channel_axis(node), scale))
            how = self._fold(model, group, scale)
            if how is None:
                self._insert(model, group, scale)
                stats["inserted"] += 1
            else:
                stats["folded"][how] = stats["folded"].get(how, 0) + 1
            stats["inputs"] += 1
            stats["matmuls"] += len(group.readers)
        return PassResult(stats["inputs"] > 0, stats)

    def _plan(self, group: _Group, channels: PerChannel, samples: dict[str, _RowSample],
              ctx: Context, stats: dict) -> np.ndarray | None:
        """The group's scales, or None (counted in `stats`) when it is left alone."""
        absmax = channels.absmax()
        if absmax.max(initial=0.0) < self.min_outlier_ratio * np.median(absmax):
            stats["no_outliers"] += 1
            return None
        alpha = self.alpha
        if self.auto_alpha:
            alpha = _best_alpha(group, channels, samples[group.tensor.name].rows(),
                                ctx.target.weight_bits)
            if alpha is None:
                stats["kept_unsmoothed"] += 1
                return None
            stats["alphas"][str(alpha)] = stats["alphas"].get(str(alpha), 0) + 1
        scale = scales(absmax, group, alpha)
        if np.all(np.abs(np.log(scale)) < TOLERANCE):
            stats["already_smooth"] += 1
            return None
        return scale

    def groups(self, model: Model) -> list[_Group]:
        """The activations read by smoothable MatMul/Gemm nodes, in graph order."""
        found: dict[int, _Group] = {}
        for node in model.graph.nodes:
            x = node.inputs[0] if node.inputs else None
            if not isinstance(x, gs.Variable) or input_channel_axis(node) is None:
                continue
            if id(x) not in found:
                found[id(x)] = _Group(x, [])
            found[id(x)].readers.append(node)
        return [g for g in found.values() if _same_channels(g)]

    def _measure(self, model: Model, ctx: Context, groups: list[_Group]
                 ) -> tuple[dict[str, PerChannel], dict[str, _RowSample]]:
        """Per-channel statistics of every group's input (and row samples for `auto_alpha`)."""
        names = {g.tensor.name: -1 for g in groups}
        if not self.auto_alpha:
            return channel_statistics(model, ctx, names, batch_size=self.batch_size), {}
        observed = {name: PerChannel(-1, name) for name in names}
        samples = {name: _RowSample(SAMPLE_ROWS) for name in names}
        both = {name: _Both(observed[name], samples[name]) for name in names}
        collect(model, list(names), ctx.data, both, target="cpu", batch_size=self.batch_size,
                progress=ctx.progress)
        return observed, samples

    def _fold(self, model: Model, group: _Group, scale: np.ndarray) -> str | None:
        """Divide the producer's per-channel constants by `scale`; the op folded into, or None."""
        source = producer(group.tensor)
        if source is None or not group.exclusive(model):
            return None
        if source.op == "LayerNormalization" and _layernorm_last_axis(source):
            for index in (1, 2):
                if index < len(source.inputs) and not source.inputs[index].is_empty():
                    values = np.asarray(source.inputs[index].values)
                    set_constant(model, source, index, (values / scale).astype(values.dtype))
            return "LayerNormalization"
        if source.op == "Mul":
            index = _channel_constant(source, scale.size)
            if index is not None:
                values = np.asarray(source.inputs[index].values)
                set_constant(model, source, index, (values / scale).astype(values.dtype))
                return "Mul"
        return None

    def _insert(self, model: Model, group: _Group, scale: np.ndarray) -> None:
        """A ``Mul(X, 1/s)`` read by the smoothed readers only."""
        x = group.tensor
        dtype = np.asarray(group.readers[0].inputs[1].values).dtype
        inverse = model.constant(f"{x.name}_smooth_inv", (1.0 / scale).astype(dtype))
        out = model.variable(f"{x.name}_smooth", dtype=x.dtype, shape=x.shape)
        mul = model.node("Mul", [x, inverse], [out], hint=f"{x.name}_smooth")
        for node in group.readers:
            node.inputs[0] = out
        source = producer(x)
        if source is not None:
            insert_after(model.graph, source, [mul])
        else:
            model.graph.nodes.insert(0, mul)


def scales(activation_absmax: np.ndarray, group: _Group, alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^α / max|W_j|^(1-α)``, 1 where either side is zero."""
    weight_absmax = group.weight_absmax()
    if activation_absmax.shape != weight_absmax.shape:
        raise PreconditionError(
            f"smoothquant: tensor '{group.tensor.name}' has {activation_absmax.size} channels "
            f"on its last axis but its MatMul/Gemm weights have {weight_absmax.size} input "
            "channels")
    live = (activation_absmax > 0) & (weight_absmax > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(live, activation_absmax ** alpha / weight_absmax ** (1.0 - alpha), 1.0)
    return np.clip(scale, 1.0 / LIMIT, LIMIT)


class _RowSample:
    """Keeps the first `limit` rows of ``X`` laid out as ``[rows, K]`` (any leading shape)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[np.ndarray] = []
        self.count = 0

    def update(self, batch: np.ndarray) -> None:
        if self.count < self.limit:
            rows = np.asarray(batch).reshape(-1, batch.shape[-1])[: self.limit - self.count]
            self.parts.append(rows.astype(np.float64))
            self.count += len(rows)

    def rows(self) -> np.ndarray:
        return np.concatenate(self.parts)


class _Both:
    """Feeds one tensor to a `PerChannel` and a `_RowSample` (collect takes one observer)."""

    def __init__(self, channels: PerChannel, sample: _RowSample) -> None:
        self.channels, self.sample = channels, sample

    def update(self, batch: np.ndarray) -> None:
        self.channels.update(batch)
        self.sample.update(batch)


def _int8_error(group: _Group, channels: PerChannel, rows: np.ndarray, scale: np.ndarray,
                bits: int) -> float:
    """``Σ_readers ‖Q(X/s) Q(sW) − X W‖²`` on the sampled rows (module docstring)."""
    lo = float((channels.min / scale).min())
    hi = float((channels.max / scale).max())
    x = fake_quantize(rows / scale, qparams(lo, hi, np.uint8, symmetric=False))
    error = 0.0
    for node in group.readers:
        w = np.asarray(node.inputs[1].values, np.float64)
        axis = input_channel_axis(node)
        smoothed = _scale_along(w, axis, scale)
        wq = fake_quantize(smoothed, weight_qparams(smoothed, 1 - axis, bits=bits))
        if axis == 1:  # Gemm transB: W is [N, K]
            w, wq = w.T, wq.T
        error += float(np.square(x @ wq - rows @ w).sum())
    return error


def _best_alpha(group: _Group, channels: PerChannel, rows: np.ndarray, bits: int
                ) -> float | None:
    """The candidate ``α`` with the smallest int8 error; None when not smoothing is best."""
    absmax = channels.absmax()
    best, best_error = None, _int8_error(group, channels, rows, np.ones_like(absmax), bits)
    for alpha in ALPHAS:
        error = _int8_error(group, channels, rows, scales(absmax, group, alpha), bits)
        if error < best_error:
            best, best_error = alpha, error
    return best


def _same_channels(group: _Group) -> bool:
    """Every reader's weight has the same number of input channels (a valid graph has)."""
    sizes = {np.asarray(n.inputs[1].values).shape[input_channel_axis(n)] for n in group.readers}
    return len(sizes) == 1


def _layernorm_last_axis(node: gs.Node) -> bool:
    """A LayerNormalization over the last axis only, with a constant scale (and bias)."""
    constants = [t for t in node.inputs[1:] if not t.is_empty()]
    return (node.attrs.get("axis", -1) == -1
            and all(isinstance(t, gs.Constant) and np.asarray(t.values).ndim == 1
                    for t in constants))


def _channel_constant(node: gs.Node, channels: int) -> int | None:
    """The input of a Mul that is a float constant whose last axis is 1 or ``K`` (or a
    scalar), the other input being an activation; None if there is none.

    Dividing it by ``s`` along its last axis divides output channel ``j`` by ``s_j`` and keeps
    the output's shape (the output's last axis is ``K`` and its rank at least the constant's).
    """
    for index, t in enumerate(node.inputs[:2]):
        if not isinstance(t, gs.Constant) or isinstance(node.inputs[1 - index], gs.Constant):
            continue
        values = np.asarray(t.values)
        if np.issubdtype(values.dtype, np.floating) and (
                values.ndim == 0 or values.shape[-1] in (1, channels)):
            return index
    return None
