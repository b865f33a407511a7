"""Low-rank factorization of Gemm / MatMul weights by truncated SVD.

A product ``y = x·W`` with a constant ``W[K, N]`` becomes two, ``y = (x·A)·B`` with
``A[K, r]`` and ``B[r, N]``. Multiply-adds per row of ``x`` go from ``K·N`` to ``r·(K + N)``
and parameters likewise, so a layer is factorized only when

    r < K·N / (K + N)

(reference §D.4, R-D6); otherwise it is left as it is and the stats say why. Fewer FLOPs is
not always less time — two thin GEMMs can be slower than one square one — so R-D6's latency
check belongs to ``onnxpress bench`` on the target.

**Plain SVD** minimizes ``‖W − A·B‖_F`` (Eckart–Young): with ``W = U Σ Vᵀ``,
``A = U_r Σ_r^{1/2}`` and ``B = Σ_r^{1/2} V_rᵀ`` — the root of ``Σ`` split evenly so neither
factor's range grows, which matters for a later float16 or int8 conversion.

**Data-aware SVD** (``data_aware=True``) minimizes the error of the layer's *output* on the
calibration inputs ``X`` (rows = samples × positions, columns = the ``K`` input features):

    ‖X·W − X·A·B‖_F² = tr((W − AB)ᵀ XᵀX (W − AB)) = ‖S·(W − AB)‖_F²,   S = (XᵀX)^{1/2}

so the best rank-``r`` ``A·B`` is ``S⁻¹·trunc_r(S·W)``: with ``S·W = U Σ Vᵀ``,
``A = S⁻¹ U_r Σ_r^{1/2}`` and ``B = Σ_r^{1/2} V_rᵀ``, and the dropped singular values of
``S·W`` are exactly the output error (SVD-LLM, arXiv 2403.07378, with the symmetric root in
place of a Cholesky factor). Input directions the data never excites cost nothing in that
objective, so ``XᵀX`` (normalized by its row count) is damped by ``DAMP × mean(diag)·I``: ``S``
stays invertible and those directions fall back to the plain SVD's treatment. ``XᵀX`` is
streamed by `onnxpress.passes.calibrate.observers.Gram` over ``ctx.data``, once, on the model
as it is before this pass (every layer sees unfactorized inputs).

**Rank.** ``rank_ratio`` gives ``r = round(rank_ratio · min(K, N))``; ``energy`` the smallest
``r`` with ``Σ_{i<r} σ_i² ≥ energy · Σ_i σ_i²`` (the ``σ`` of ``S·W`` when data-aware: the
fraction of output energy kept). ``r`` never exceeds the numerical rank (``σ_i > σ_1 ·
max(K, N) · eps``, numpy's ``matrix_rank`` tolerance), so 1.0 means "lossless", and is then
rounded up to a multiple of ``round_to`` (8 or 16 suit GEMM kernels).

**Graph.** The original node keeps its name and output and becomes the second product; a new
node computing ``h = x·A`` is inserted before it:

- MatMul: ``h = MatMul(x, A)``, then ``MatMul(h, B)``; a bias Add after it is untouched.
- Gemm ``y = α·op(x)·op(W) + β·C``: ``W`` is read as ``[K, N]`` whatever ``transB``, then
  ``h = Gemm(x, A; α, transA)`` and ``y = Gemm(h, B, C; β)``, so the bias stays in a Gemm.

A weight shared by several nodes is factorized once and its readers share ``A`` and ``B``;
data-aware, their Gram matrices are summed (the objective is the sum of their output errors).

Lossy: outputs move by the dropped singular values; at the numerical rank they are kept to
float precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import PassError, PreconditionError
from onnxpress.ir.edit import insert_before
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.calibrate.observers import Gram
from onnxpress.passes.sparsity.weights import Weight, as_patterns, find_weights, select
from onnxpress.runtime.collect import collect

#: Damping of the normalized Gram matrix, relative to its mean diagonal (SparseGPT's 1 %).
DAMP = 0.01


@dataclass(frozen=True)
class Factors:
    """A weight's rank-``r`` factorization ``W[K, N] ≈ A·B``, or why there is none.

    Attributes:
        rank: ``r``.
        a: ``A[K, r]`` (None when the layer is left alone).
        b: ``B[r, N]`` (None when the layer is left alone).
        kept_energy: ``Σ_{i<r} σ_i² / Σ σ_i²`` of the factorized matrix.
        reason: Why the layer is left alone, if it is.
    """

    rank: int
    a: np.ndarray | None
    b: np.ndarray | None
    kept_energy: float
    reason: str | None = None


@dataclass(frozen=True)
class LowRank(Pass):
    """Factorize constant Gemm / MatMul weights ``W[K, N]`` into ``A[K, r]·B[r, N]``.

    Give exactly one of `rank_ratio` and `energy`.

    Attributes:
        rank_ratio: ``r = round(rank_ratio · min(K, N))``, in (0, 1].
        energy: Fraction of ``Σσ²`` to keep, in (0, 1]; the rank is chosen per layer.
        data_aware: Whiten by the layer inputs' ``XᵀX`` from ``ctx.data`` so the output
            error, not the weight error, is minimized.
        include: Weight names, node names (globs) or op types to factorize (empty: all).
            A pattern that names nothing is an error.
        exclude: Weight names, node names (globs) or op types to leave alone.
        round_to: Round ``r`` up to a multiple of this.
        batch_size: Samples per inference batch when collecting ``XᵀX``.
    """

    name: ClassVar[str] = "lowrank"
    exact: ClassVar[bool] = False

    rank_ratio: float | None = None
    energy: float | None = None
    data_aware: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    round_to: int = 1
    batch_size: int = 32

    def __post_init__(self) -> None:
        """Validate the options before any model is touched."""
        given = {k: v for k, v in (("rank_ratio", self.rank_ratio), ("energy", self.energy))
                 if v is not None}
        if len(given) != 1:
            raise PassError(f"{self.name}: give exactly one of rank_ratio and energy, not "
                            f"{given or 'neither'}")
        ((option, value),) = given.items()
        if not 0 < value <= 1:
            raise PassError(f"{self.name}: {option} must be in (0, 1], not {value}")
        if self.round_to < 1 or self.batch_size < 1:
            raise PassError(f"{self.name}: round_to and batch_size must be positive")
        for option in ("include", "exclude"):
            object.__setattr__(self, option, as_patterns(getattr(self, option), option,
                                                         self.name))

    def requires(self, model: Model, ctx: Context) -> None:
        """The data-aware variant needs calibration inputs."""
        if self.data_aware and ctx.data is None:
            raise PreconditionError(f"{self.name}(data_aware=True) needs calibration data to "
                                    "measure the layers' inputs: pass data=... / --data FILE, "
                                    "or use data_aware=False")

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Factorize every selected layer where it pays.

        Stats: ``factorized`` (nodes rewritten), ``ranks`` and ``kept_energy`` (per weight),
        ``params_saved``, ``flops_saved_per_row`` (2 × multiply-adds saved per row of the
        inputs, e.g. per token), ``flops_saved_fraction`` (of the selected layers' FLOPs) and
        ``skipped`` (``{weight: reason}``).
        """
        found, skipped = find_weights(model, ("Gemm", "MatMul"))
        matrices = []
        for weight in found:
            if weight.values.ndim == 2:
                matrices.append(weight)
            else:
                skipped[weight.name] = f"batched rank-{weight.values.ndim} MatMul weight"
        chosen = select(matrices, include=self.include, exclude=self.exclude, owner=self.name)
        if not chosen:
            return PassResult(False, {"reason": "no constant 2-D Gemm / MatMul weight to "
                                                "factorize", "skipped": skipped})
        grams = self._grams(model, chosen, ctx) if self.data_aware else {}
        ranks, energies = {}, {}
        saved = before = factorized = params = 0
        for weight in chosen:
            k, n = _matrix(weight).shape
            before += k * n * len(weight.nodes)
            factors = self._factorize(weight, grams.get(weight.name))
            if factors.reason is not None:
                skipped[weight.name] = factors.reason
                continue
            dtype = weight.values.dtype
            a = model.constant(f"{weight.name}_lowrank_a", factors.a.astype(dtype))
            b = model.constant(f"{weight.name}_lowrank_b", factors.b.astype(dtype))
            for node in weight.nodes:
                _rewrite(model, node, a, b)
            ranks[weight.name], energies[weight.name] = factors.rank, factors.kept_energy
            params += k * n - factors.rank * (k + n)
            saved += (k * n - factors.rank * (k + n)) * len(weight.nodes)
            factorized += len(weight.nodes)
        stats = {"factorized": factorized, "ranks": ranks, "kept_energy": energies,
                 "params_saved": params, "flops_saved_per_row": 2 * saved,
                 "flops_saved_fraction": saved / before, "skipped": skipped}
        if not factorized:
            stats["reason"] = "no selected layer pays at the requested rank (see skipped)"
        return PassResult(factorized > 0, stats)

    # ----------------------------------------------------------------------------------------
    def _factorize(self, weight: Weight, gram: np.ndarray | None) -> Factors:
        """The factors of `weight` as a ``[K, N]`` matrix, whitened by `gram` if given."""
        w = _matrix(weight).astype(np.float64)
        k, n = w.shape
        target, inverse_root = w, None
        if gram is not None:
            root, inverse_root = _damped_roots(gram)
            target = root @ w
        u, s, vt = np.linalg.svd(target, full_matrices=False)
        energy = np.cumsum(s * s)
        r = self._rank(s, energy, k, n, weight.values.dtype)
        kept = float(energy[r - 1] / energy[-1]) if energy[-1] > 0 else 1.0
        if r >= k * n / (k + n):
            return Factors(r, None, None, kept, (
                f"rank {r} ≥ K·N/(K+N) = {k * n / (k + n):.1f} for W[{k}, {n}]: two factors "
                "would not save FLOPs or parameters"))
        half = np.sqrt(s[:r])
        a = u[:, :r] * half
        if inverse_root is not None:
            a = inverse_root @ a
        return Factors(r, a, half[:, None] * vt[:r], kept)

    def _rank(self, s: np.ndarray, energy: np.ndarray, k: int, n: int, dtype: np.dtype) -> int:
        """The rank the options ask for, capped by the numerical rank, rounded up."""
        if self.rank_ratio is not None:
            r = round(self.rank_ratio * min(k, n))
        else:
            r = int(np.searchsorted(energy, self.energy * energy[-1])) + 1
        numerical = int(np.count_nonzero(s > s[0] * max(k, n) * np.finfo(dtype).eps))
        r = max(1, min(r, numerical))
        return min(-(-r // self.round_to) * self.round_to, min(k, n))

    def _grams(self, model: Model, weights: list[Weight], ctx: Context
               ) -> dict[str, np.ndarray]:
        """``XᵀX / rows`` of each weight's inputs, summed over its readers."""
        axes: dict[str, int] = {}
        for weight in weights:
            for node in weight.nodes:
                x = node.inputs[0]
                # Gemm(transA=1) reads x as [K, M]: the features are axis 0.
                axis = 0 if node.op == "Gemm" and node.attrs.get("transA", 0) else -1
                if axes.setdefault(x.name, axis) != axis:
                    raise PassError(f"{self.name}: '{x.name}' is read transposed by one layer "
                                    "and not by another; exclude one of them")
        observers = {name: Gram(axis, name) for name, axis in axes.items()}
        collect(model, list(observers), ctx.data, observers, target=ctx.target,
                batch_size=self.batch_size, progress=ctx.progress)
        grams = {}
        for weight in weights:
            readers = [observers[node.inputs[0].name] for node in weight.nodes]
            grams[weight.name] = (sum(o.xtx for o in readers)
                                  / max(sum(o.count for o in readers), 1))
        return grams


def _matrix(weight: Weight) -> np.ndarray:
    """The weight as ``[K, N]``: its reduction axis first (transposes a Gemm transB=1
    weight)."""
    return np.moveaxis(weight.values, weight.axis, 0)


def _damped_roots(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``S = (G + λI)^{1/2}`` and ``S⁻¹``, ``λ = DAMP · mean(diag G)``, by one eigh."""
    values, vectors = np.linalg.eigh(gram)
    # eigh of a PSD matrix can return tiny negative eigenvalues; they are rounding.
    damp = DAMP * max(float(np.mean(np.diag(gram))), np.finfo(np.float64).tiny)
    roots = np.sqrt(np.maximum(values, 0.0) + damp)
    return (vectors * roots) @ vectors.T, (vectors / roots) @ vectors.T


def _rewrite(model: Model, node: gs.Node, a: gs.Constant, b: gs.Constant) -> None:
    """Make `node` compute ``(x·A)·B``: a new node ``h = x·A`` before it, `node` reading
    ``(h, B)`` with its output, name, bias and β unchanged."""
    hint = f"{node.name or node.op}_lowrank"
    h = model.variable(hint, dtype=a.values.dtype)
    attrs = {}
    if node.op == "Gemm":
        # α and op(x) go to the first product; the second is a plain h·B (+ β·C).
        attrs = {key: node.attrs.pop(key) for key in ("alpha", "transA") if key in node.attrs}
        node.attrs.pop("transB", None)
    first = model.node(node.op, [node.inputs[0], a], [h], hint=hint, attrs=attrs)
    insert_before(model.graph, node, [first])
    node.inputs[0] = h
    node.inputs[1] = b
