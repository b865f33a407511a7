"""Least-squares reconstruction of linear layers from the teacher's activations (reconstruct).

After pruning (or any lossy pass), a Conv, Gemm or MatMul sees different inputs than in the
original model, the teacher (``ctx.teacher()``). This pass refits each such layer's weight and
bias so that, on the calibration data, its output matches the teacher's output at the same
tensor (found by name; pruning keeps names), without retraining (He et al., 2017; ThiNet).

Normal equations. Let ``X`` be the layer's inputs in the *pruned* model, laid out as rows,
with a column of ones for the bias, ``Y`` the teacher's outputs at the same rows (restricted
to the channels the layer still has, from the ``onnxpress.kept_channels`` tag
prune-channels leaves), and ``W₀`` the current weights. The pass solves

    W' = argmin ‖X W − Y‖² + λ ‖W − W₀‖²   ⇔   (XᵀX + λI) W' = XᵀY + λ W₀

with ``λ = ridge · mean(diag(XᵀX))`` (scale-free, as GPTQ's damping). With ``ridge=None``
(the default) the strength is chosen per layer by held-out error: every fifth row goes to a
held-out Gram pair, each ``ridge ∈ RIDGES`` is solved on the other rows and scored by
``‖X_h W − Y_h‖²`` (from the held-out Grams), and the best is solved again on all rows.
The prior is ``W₀`` rather than 0: a layer whose output already matches is a fixed point
(``XᵀY = XᵀX W₀``), and directions the calibration data never excites (a channel that is
always zero there) keep their original weights instead of collapsing to zero. ``XᵀX`` and
``XᵀY`` accumulate batch by batch in `Gram` observers, so memory is O(d² + d·o) per layer,
never O(dataset).

Rows. A batch gives at most ``rows_per_batch`` rows per layer, drawn uniformly without
replacement (seeded per layer and batch, so the result is deterministic): neighbouring output
positions of a Conv are nearly collinear, and the Gram costs ``rows · d²``. Conv patches are
gathered at the drawn positions only, never unfolded for the whole map. For a Gemm or
MatMul, one row per sample (and per sequence position): ``X = A`` with
``W = αB`` (transposed for ``transB``) and bias ``βC``. A MatMul has no bias column. For a Conv,
im2col: every output position is a row holding its receptive field, unfolded with numpy
stride tricks after padding (pads, strides, dilations, auto_pad). A grouped Conv splits
into ``group`` independent problems — ``X_g`` holds the ``C/g·Πk`` inputs of group ``g`` and
``W_g`` its ``Cout/g`` filters — so a depthwise Conv is ``C`` problems of ``Πk + 1`` unknowns.

Order. Layers are refitted sequentially, as in AdaRound and GPTQ: each wave holds the layers
with no un-refitted layer upstream, and its inputs are re-collected from the model with every
earlier wave already refitted, so later layers also correct the error left upstream (the
student's inputs, the teacher's targets).

Cost. The teacher runs once: one pass over the data keeps, per layer and batch, the drawn
rows of its outputs (O(batches · rows_per_batch · channels), not the full maps). Each wave
then runs only the part of the student before its layers (a probe whose outputs are the
wave's inputs, everything after them dropped) and pairs each batch with the rows kept for it,
so ``X`` and ``Y`` pair row for row as long as the data gives the same batches every pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs
from numpy.lib.stride_tricks import sliding_window_view

from onnxpress.errors import DataError, PassError, PreconditionError
from onnxpress.ir import analyses
from onnxpress.ir.edit import dead_code
from onnxpress.ir.model import Model
from onnxpress.ir.select import matches, selected
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.calibrate.observers import Gram
from onnxpress.passes.sparsity.channels import kept_channels
from onnxpress.passes.sparsity.coupling import node_label, set_constant
from onnxpress.passes.sparsity.weights import as_patterns
from onnxpress.runtime.collect import collect


@dataclass(frozen=True)
class Reconstruct(Pass):
    """Refit Conv/Gemm/MatMul weights so their outputs match the teacher's (ridge LS).

    Attributes:
        ridge: Damping relative to the mean diagonal of ``XᵀX``, pulling towards the
            current weights; ≥ 0.
        batch_size: Samples per inference batch; does not change the result beyond rounding.
        rows_per_batch: Rows drawn per layer and batch (see "Rows").
        include: Globs on node names (``op→output`` for an unnamed node) of the layers to
            refit (empty: every eligible layer).
        exclude: Globs of layers to leave as they are.
    """

    name: ClassVar[str] = "reconstruct"
    exact: ClassVar[bool] = False

    ridge: float | None = None
    batch_size: int = 32
    rows_per_batch: int = 4096
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Validate the options now."""
        for option in ("include", "exclude"):
            object.__setattr__(self, option, as_patterns(getattr(self, option), option,
                                                         "reconstruct"))
        if self.rows_per_batch < 1:
            raise PassError(f"reconstruct: rows_per_batch must be positive, not "
                            f"{self.rows_per_batch}")
        if self.ridge is not None and not self.ridge >= 0:
            raise PassError(f"reconstruct: ridge must be ≥ 0, not {self.ridge}")
        if self.batch_size < 1:
            raise PassError(f"reconstruct: batch_size must be positive, not {self.batch_size}")

    def requires(self, model: Model, ctx: Context) -> None:
        """Needs calibration inputs and the teacher."""
        if ctx.data is None:
            raise PreconditionError("reconstruct needs calibration data: pass data=... / "
                                    "--data FILE")
        if ctx.teacher() is None:
            raise PreconditionError("reconstruct needs the original model as the teacher "
                                    "(ctx.teacher(); optimize() provides it)")

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Refit every eligible layer, wave by wave in topological order."""
        teacher_shapes = ctx.teacher().analysis(analyses.shapes)
        layers, skipped = [], {}
        for pattern in (*self.include, *self.exclude):
            if not any(matches(n, [pattern]) for n in model.graph.nodes):
                raise PassError(f"reconstruct: pattern '{pattern}' names no node")
        for node in model.graph.nodes:
            if node.op in _KINDS:
                if not selected(node, self.include, self.exclude):
                    skipped[node_label(node)] = "left out by include/exclude"
                    continue
                found = _KINDS[node.op].make(node, teacher_shapes, self.rows_per_batch)
                if isinstance(found, str):
                    skipped[node_label(node)] = found
                else:
                    layers.append(found)
        stats = {"layers": 0, "skipped": skipped, "error": {}, "ridge": {}, "waves": 0}
        if not layers:
            stats["reason"] = "no Conv/Gemm/MatMul whose output the teacher also has"
            return PassResult(False, stats)
        _check_inputs(ctx.teacher(), model)
        stats["samples"] = self._collect(ctx.teacher(), _TeacherRows.for_layers(layers),
                                         ctx, 0, "teacher")
        for wave in _waves(model, layers):
            samples = self._collect(_upto(model, wave), _StudentRows.for_layers(wave), ctx,
                                    stats["waves"] + 1, f"wave {stats['waves'] + 1}")
            if samples != stats["samples"]:
                raise DataError(_reread(f"{ctx.data.origin}: {stats['samples']} samples for "
                                        f"the teacher, {samples} now", stats["waves"] + 1))
            for layer in wave:
                error, ridge = layer.refit(model, self.ridge)
                stats["error"][node_label(layer.node)] = error
                stats["ridge"][node_label(layer.node)] = ridge
            stats["waves"] += 1
        stats["layers"] = len(stats["error"])
        return PassResult(True, stats)

    def _collect(self, model: Model, observers: dict, ctx: Context, done: int, what: str
                 ) -> int:
        """Stream one pass over the data into `observers`; return the samples read."""
        try:
            return collect(model, list(observers), ctx.data, observers, target=ctx.target,
                           batch_size=self.batch_size,
                           progress=_named(ctx.progress, f"reconstruct: {what}")).samples
        except DataError as e:
            if not done:
                raise
            raise DataError(_reread(str(e), done)) from None


def _named(progress, title: str):
    """`progress` with its bars titled `title`."""
    return lambda description, total: progress(f"{title} ({description})", total)


def _reread(problem: str, done: int) -> str:
    """`problem` with the advice for data that cannot be read once per wave."""
    return (f"{problem} (wave {done + 1} of layers: reconstruct reads the data once per wave, "
            "so a one-shot iterator cannot feed it: give arrays, a file or a callable "
            "returning a fresh iterable)")


# --------------------------------------------------------------------------------------------
# Layers
class _Layer:
    """One layer to refit: how its inputs become rows and its solution becomes weights.

    Attributes:
        node: The layer.
        target: Name of the teacher tensor its output must match.
        channels: Teacher channels the layer still has (None: all of them, in order).
        problems: Independent least-squares problems (``group`` for Conv, else 1).
    """

    #: Channel axis of the layer's output.
    axis: ClassVar[int]

    def __init__(self, node: gs.Node, channels: np.ndarray | None, problems: int = 1,
                 rows_per_batch: int = 4096) -> None:
        self.node = node
        self.target = node.outputs[0].name
        self.channels = channels
        self.problems = problems
        self.rows_per_batch = rows_per_batch
        # Row r of a batch goes to the held-out Grams when r % HELD == 0.
        self.grams = [Gram(axis=-1, name=f"{node_label(node)}[{g}]") for g in range(problems)]
        self.held = [Gram(axis=-1, name=f"{node_label(node)}[{g}] held")
                     for g in range(problems)]
        self.energy = 0.0
        #: Per teacher batch: the rows drawn and the teacher's outputs there.
        self.kept: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.seen = 0

    @classmethod
    def make(cls, node: gs.Node, teacher_shapes: dict, rows_per_batch: int = 4096
             ) -> _Layer | str:
        """The layer, or why it cannot be refitted."""
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if not isinstance(weight, gs.Constant) or weight.values.dtype not in (np.float32,
                                                                               np.float64):
            return "the weight is not a float initializer"
        if any(reader is not node for reader in weight.outputs):
            return f"the weight '{weight.name}' is shared with another node"
        found = teacher_shapes.get(node.outputs[0].name)
        if found is None:
            return (f"the teacher has no tensor '{node.outputs[0].name}' (a pass before "
                    "renamed it)")
        width, channels = cls.width(node), kept_channels(node)
        teacher_width = found[1][cls.axis] if found[1] else None
        if channels is not None and (channels.size != width or (
                isinstance(teacher_width, int) and channels.max() >= teacher_width)):
            return "its kept-channels tag does not fit its width"
        if channels is None and isinstance(teacher_width, int) and teacher_width != width:
            return (f"{width} output channels, the teacher's '{node.outputs[0].name}' has "
                    f"{teacher_width}, and no kept-channels tag maps them")
        return cls.check(node) or cls(node, channels, cls.problems_of(node), rows_per_batch)

    @staticmethod
    def width(node: gs.Node) -> int:
        """Output channels of the layer."""
        raise NotImplementedError

    @staticmethod
    def check(node: gs.Node) -> str | None:
        """Why this layer's attributes rule it out, or None."""
        return None

    @staticmethod
    def problems_of(node: gs.Node) -> int:
        """Independent least-squares problems the layer splits into."""
        return 1

    def design(self, x: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
        """Rows `rows` (indices into the batch's rows) of each problem, bias column
        included, for a batch of inputs."""
        raise NotImplementedError

    def initial(self) -> list[np.ndarray]:
        """``W₀`` of each problem, ``[d, o]`` with the bias as the last row."""
        raise NotImplementedError

    def store(self, model: Model, solutions: list[np.ndarray]) -> None:
        """Write the solved ``[d, o]`` matrices back as weight and bias."""
        raise NotImplementedError

    def keep_targets(self, y: np.ndarray) -> None:
        """Keep the rows drawn from one batch of the teacher's outputs (see "Rows")."""
        if self.channels is not None:
            y = np.take(y, self.channels, axis=self.axis)
        y = np.moveaxis(y, self.axis, -1)
        y = y.reshape(-1, y.shape[-1])
        rows = np.arange(len(y))
        if len(y) > self.rows_per_batch:
            rng = np.random.default_rng([len(self.kept), len(y)])
            rows = np.sort(rng.choice(len(y), self.rows_per_batch, replace=False))
        y = np.array(y[rows])
        self.kept.append((rows, y))
        self.energy += float(np.square(y, dtype=np.float64).sum())

    def accumulate(self, x: np.ndarray) -> None:
        """Fold the next batch of student inputs, paired with its kept teacher rows, into
        the Grams (one row in `HELD` into the held-out ones)."""
        if self.seen >= len(self.kept):
            raise DataError(f"reconstruct: more batches for layer '{node_label(self.node)}' "
                            "than the teacher was run on")
        rows, y = self.kept[self.seen]
        self.kept[self.seen] = (rows, None)  # the batch must not outlive its step
        self.seen += 1
        held = np.arange(len(rows)) % HELD == 0
        per = y.shape[1] // self.problems
        for g, (gram, other, x_g) in enumerate(zip(self.grams, self.held,
                                                    self.design(x, rows), strict=True)):
            y_g = y[:, g * per:(g + 1) * per]
            gram.update(x_g[~held], y_g[~held])
            other.update(x_g[held], y_g[held])

    def refit(self, model: Model, ridge: float | None) -> tuple[list[float], float]:
        """Solve the normal equations, store the weights; relative error before and after,
        ``‖XW − Y‖ / ‖Y‖`` on the calibration rows, and the ridge used."""
        if ridge is None:
            ridge = min(RIDGES, key=self._held_out_error)
        solutions, before, after = [], 0.0, 0.0
        for fit, held, w0 in zip(self.grams, self.held, self.initial(), strict=True):
            xtx, xty = _sum(fit.xtx, held.xtx), _sum(fit.xty, held.xty)
            w = _solve(xtx, xty, w0, ridge)
            before += _residual(xtx, xty, w0)
            after += _residual(xtx, xty, w)
            solutions.append(w)
        self.store(model, solutions)
        energy = max(self.energy, np.finfo(np.float64).tiny)
        return ([round(math.sqrt(max(energy + e, 0.0) / energy), 6) for e in (before, after)],
                ridge)

    def _held_out_error(self, ridge: float) -> float:
        """``‖X_h W − Y_h‖² − ‖Y_h‖²`` with `W` solved on the other rows at `ridge`."""
        total = 0.0
        for fit, held, w0 in zip(self.grams, self.held, self.initial(), strict=True):
            if fit.xtx is None or held.xtx is None:
                return 0.0  # too few rows to hold any back: every ridge ties
            total += _residual(held.xtx, held.xty, _solve(fit.xtx, fit.xty, w0, ridge))
        return total


#: Every HELD-th row of a batch is held back to choose the ridge.
HELD = 5

#: Ridge strengths tried when none is given (relative to the mean diagonal of ``XᵀX``).
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _sum(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    return a if b is None else b if a is None else a + b


def _solve(xtx: np.ndarray, xty: np.ndarray, w0: np.ndarray, ridge: float) -> np.ndarray:
    """``(XᵀX + λI)⁻¹ (XᵀY + λW₀)``, ``λ = ridge · mean(diag(XᵀX))``."""
    damping = ridge * float(np.mean(np.diag(xtx)))
    try:
        return np.linalg.solve(xtx + damping * np.eye(len(xtx)), xty + damping * w0)
    except np.linalg.LinAlgError:  # singular without damping (ridge=0, dead inputs)
        return np.linalg.lstsq(xtx, xty, rcond=None)[0]


def _residual(xtx: np.ndarray, xty: np.ndarray, w: np.ndarray) -> float:
    """``‖XW − Y‖² − ‖Y‖²`` from the Grams: ``tr(WᵀXᵀXW) − 2·tr(WᵀXᵀY)``."""
    return float(np.sum(w * (xtx @ w)) - 2 * np.sum(w * xty))


def _with_ones(rows: np.ndarray) -> np.ndarray:
    return np.concatenate([rows, np.ones((rows.shape[0], 1), rows.dtype)], axis=1)


def _bias_values(node: gs.Node, width: int) -> np.ndarray:
    """The bias (input 2) broadcast to `width`, zeros if absent."""
    if len(node.inputs) > 2 and not node.inputs[2].is_empty():
        return np.broadcast_to(np.asarray(node.inputs[2].values, np.float64).reshape(-1),
                               (width,)).copy()
    return np.zeros(width)


def _store_bias(model: Model, node: gs.Node, values: np.ndarray, dtype: np.dtype) -> None:
    """Write the bias as input 2 (kept shape if it had one of `values`' size, else ``[N]``)."""
    if len(node.inputs) > 2 and not node.inputs[2].is_empty():
        old = node.inputs[2].values
        shape = old.shape if old.size == values.size else values.shape
        set_constant(model, node, 2, values.reshape(shape).astype(dtype))
    else:
        name = node.inputs[1].name.removesuffix("weight") + "bias"
        node.inputs.append(model.constant(name, values.astype(dtype)))


class _Conv(_Layer):
    """Conv: im2col rows, one problem per group."""

    axis = 1

    @staticmethod
    def width(node):
        return node.inputs[1].values.shape[0]

    @staticmethod
    def check(node):
        if len(node.inputs) > 2 and not node.inputs[2].is_empty() and not isinstance(
                node.inputs[2], gs.Constant):
            return "the bias is not constant"
        return None

    @staticmethod
    def problems_of(node):
        return int(node.attrs.get("group", 1))

    def design(self, x, rows):
        weight = self.node.inputs[1].values
        kernel = weight.shape[2:]
        patches = _patches(np.asarray(x), kernel, self.node.attrs, rows)  # [rows, C, Πk]
        per = weight.shape[1]
        return [_with_ones(patches[:, g * per:(g + 1) * per].reshape(patches.shape[0], -1))
                for g in range(self.problems)]

    def initial(self):
        weight = np.asarray(self.node.inputs[1].values, np.float64)
        bias = _bias_values(self.node, weight.shape[0])
        per = weight.shape[0] // self.problems
        return [np.vstack([weight[g * per:(g + 1) * per].reshape(per, -1).T,
                           bias[None, g * per:(g + 1) * per]]) for g in range(self.problems)]

    def store(self, model, solutions):
        weight = self.node.inputs[1].values
        stacked = np.concatenate(solutions, axis=1)  # [d + 1, Cout]
        set_constant(model, self.node, 1,
                     stacked[:-1].T.reshape(weight.shape).astype(weight.dtype))
        _store_bias(model, self.node, stacked[-1], weight.dtype)


def _conv_pads(attrs: dict, spatial: Sequence[int], extents: Sequence[int]) -> list[int]:
    """Begin pads then end pads, from ``pads`` or ``auto_pad``."""
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    n = len(spatial)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        strides = attrs.get("strides", [1] * n)
        total = [max((-(-s // st) - 1) * st + e - s, 0)
                 for s, st, e in zip(spatial, strides, extents, strict=True)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        return small + big if auto == "SAME_UPPER" else big + small
    if auto == "VALID":
        return [0] * (2 * n)
    return list(attrs.get("pads", [0] * (2 * n)))


def _patches(x: np.ndarray, kernel: Sequence[int], attrs: dict, rows: np.ndarray
             ) -> np.ndarray:
    """im2col at `rows` of ``N·Πout`` (in (n, output position) order): ``[rows, C, Πk]``.

    The padded input's sliding windows of the dilated kernel extent, taken every `stride`
    positions and every `dilation` inside the window, are the receptive fields.
    """
    n = len(kernel)
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    pads = _conv_pads(attrs, x.shape[2:], extents)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)])
    windows = sliding_window_view(padded, extents, axis=tuple(range(2, 2 + n)))
    windows = windows[(slice(None), slice(None))
                      + tuple(slice(None, None, s) for s in strides)
                      + tuple(slice(None, None, d) for d in dilations)]  # [N, C, *out, *k]
    windows = np.moveaxis(windows, 1, 1 + n)  # [N, *out, C, *k], a view
    picked = windows[np.unravel_index(rows, windows.shape[:1 + n])]  # gathers `rows` only
    return picked.reshape(len(rows), x.shape[1], math.prod(kernel))


class _Gemm(_Layer):
    """Gemm ``αAB + βC``: rows are samples; solves for ``αB`` and ``βC``."""

    axis = 1

    @staticmethod
    def width(node):
        weight = node.inputs[1].values
        return weight.shape[0 if node.attrs.get("transB", 0) else 1]

    @staticmethod
    def check(node):
        if node.attrs.get("transA", 0):
            return "transA is set"
        if float(node.attrs.get("alpha", 1.0)) == 0:
            return "alpha is 0"
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and not bias.is_empty():
            if not isinstance(bias, gs.Constant):
                return "the bias C is not constant"
            if bias.values.size not in (1, _Gemm.width(node)):
                return f"the bias C has shape {bias.values.shape}: it varies by row"
        return None

    @property
    def biased(self) -> bool:
        return float(self.node.attrs.get("beta", 1.0)) != 0

    def _effective(self) -> np.ndarray:
        weight = np.asarray(self.node.inputs[1].values, np.float64)
        weight = weight.T if self.node.attrs.get("transB", 0) else weight
        return float(self.node.attrs.get("alpha", 1.0)) * weight

    def design(self, x, rows):
        x = np.asarray(x).reshape(x.shape[0], -1)[rows]
        return [_with_ones(x) if self.biased else x]

    def initial(self):
        weight = self._effective()
        if not self.biased:
            return [weight]
        bias = float(self.node.attrs.get("beta", 1.0)) * _bias_values(self.node,
                                                                      weight.shape[1])
        return [np.vstack([weight, bias[None]])]

    def store(self, model, solutions):
        (w,) = solutions
        weight = self.node.inputs[1].values
        if self.biased:
            _store_bias(model, self.node, w[-1] / float(self.node.attrs.get("beta", 1.0)),
                        weight.dtype)
            w = w[:-1]
        w = w / float(self.node.attrs.get("alpha", 1.0))
        set_constant(model, self.node, 1,
                     (w.T if self.node.attrs.get("transB", 0) else w).astype(weight.dtype))


class _MatMul(_Layer):
    """MatMul ``A·W`` with a constant 2-D ``W``: rows are samples × positions, no bias."""

    axis = -1

    @staticmethod
    def width(node):
        return node.inputs[1].values.shape[-1]

    @staticmethod
    def check(node):
        return None if node.inputs[1].values.ndim == 2 else "the weight is not 2-D"

    def design(self, x, rows):
        return [np.asarray(x).reshape(-1, x.shape[-1])[rows]]

    def initial(self):
        return [np.asarray(self.node.inputs[1].values, np.float64)]

    def store(self, model, solutions):
        weight = self.node.inputs[1].values
        set_constant(model, self.node, 1, solutions[0].astype(weight.dtype))


_KINDS: dict[str, type[_Layer]] = {"Conv": _Conv, "Gemm": _Gemm, "MatMul": _MatMul}


# --------------------------------------------------------------------------------------------
# Collection
class _TeacherRows:
    """Observer of a teacher tensor: every layer targeting it keeps its drawn rows."""

    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = layers

    def update(self, batch: np.ndarray) -> None:
        for layer in self.layers:
            layer.keep_targets(batch)

    @staticmethod
    def tensor(layer: _Layer) -> str:
        """The tensor this kind of observer watches for `layer`."""
        return layer.target

    @classmethod
    def for_layers(cls, layers: Sequence[_Layer]) -> dict[str, _TeacherRows]:
        """One observer per watched tensor, for every layer watching it."""
        by: dict[str, list[_Layer]] = {}
        for layer in layers:
            by.setdefault(cls.tensor(layer), []).append(layer)
        return {name: cls(group) for name, group in by.items()}


class _StudentRows(_TeacherRows):
    """Observer of a student tensor: every layer of the wave reading it accumulates."""

    def update(self, batch: np.ndarray) -> None:
        for layer in self.layers:
            layer.accumulate(batch)

    @staticmethod
    def tensor(layer: _Layer) -> str:
        """The layer's input in the student."""
        return layer.node.inputs[0].name


def _upto(model: Model, wave: Sequence[_Layer]) -> Model:
    """A copy of `model` computing only the wave's inputs (its outputs: those tensors), so a
    wave runs the part of the graph before it, not the whole model."""
    probe = model.copy()
    tensors = probe.graph.tensors()
    inputs = {t.name for t in probe.graph.inputs}
    names = list(dict.fromkeys(layer.node.inputs[0].name for layer in wave))
    computed = [tensors[n] for n in names if n not in inputs]
    if computed:
        probe.graph.outputs = computed
        dead_code(probe.graph)
    return probe


def _waves(model: Model, layers: list[_Layer]) -> list[list[_Layer]]:
    """Layers in waves: each wave's layers have no layer of a later wave upstream."""
    view = analyses.nx_view(model)
    position = {id(n): i for i, n in enumerate(model.graph.nodes)}
    upstream = {id(layer): nx.ancestors(view, position[id(layer.node)]) for layer in layers}
    pending, waves = list(layers), []
    while pending:
        waiting = {position[id(layer.node)] for layer in pending}
        wave = [layer for layer in pending if not upstream[id(layer)] & waiting]
        waves.append(wave)
        pending = [layer for layer in pending if layer not in wave]
    return waves


def _check_inputs(teacher: Model, student: Model) -> None:
    """The teacher must read only inputs the student has (both run on the same feeds).

    Raises:
        PassError: the teacher reads an input the student does not have.
    """
    missing = ({t.name for t in teacher.graph.inputs}
               - {t.name for t in student.graph.inputs})
    if missing:
        raise PassError(f"the teacher reads inputs {sorted(missing)} the model does not have; "
                        "reconstruct compares two models with the same inputs")


__all__ = ["Reconstruct"]
