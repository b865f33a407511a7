"""Fuse a 2-D MatMul with a constant weight and the constant bias Add after it into one Gemm.

Gemm computes ``Y = alpha * A' @ B' + beta * C`` (``A'``, ``B'`` optionally transposed), with
``C`` broadcast unidirectionally to ``[M, N]``. With ``alpha = beta = 1`` and no transposes:

    Add(MatMul(x, W), bias) = x @ W + bias = Gemm(x, W, bias)

for ``x: [M, K]``, ``W: [K, N]`` and a bias that broadcasts to ``[1, N]`` — ``[N]``, ``[1, N]``
or a scalar. Gemm's ``A`` must be a matrix, so the rewrite needs ``x`` to be exactly 2-D (ranks
from ONNX shape inference; ``M`` may be dynamic). The bias must not widen the result: a bias
``[M, N]`` or of rank 3 would make Add's output differ from Gemm's. The commuted form
``Add(bias, MatMul(x, W))`` is found by the rule driver.

MatMul with an N-D ``x`` (transformers' ``[batch, seq, K]``) is left as MatMul + Add and
counted as ``kept_nd`` (with those whose rank shape inference could not tell, e.g. behind a
com.microsoft op it has no schema for): onnxoptimizer does the same, while OnnxSlim wraps it in
Reshape → Gemm(transB=1, weight transposed) → Reshape, which flips the weight's output-channel
axis from 1 to 0 under the quantization and sparsity passes that run later (rule R-C4).

Exact: Gemm computes the same sum of products and the same bias addition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnxpress.ir import analyses, ops
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import Const, Match, Reject, Rule, apply_rules, find
from onnxpress.passes.base import Context, Pass, PassResult


class MatMulAddToGemm(Rule):
    """Add(MatMul(x [M, K], W [K, N]), bias [N] | [1, N]) becomes Gemm(x, W, bias)."""

    def pattern(self, op, x):
        matmul = op.MatMul(x, Const("w"), label="matmul")
        return op.Add(matmul, Const("bias"), label="add")

    def check(self, m: Match) -> Reject | None:
        """Accept constant float operands of Gemm's shapes and a 2-D ``x``."""
        rank = ops.rank(m.x)
        if rank != 2:
            return Reject(f"x '{m.x.name}' has rank {rank or 'unknown'}, Gemm needs 2")
        return _operands_problem(m)

    def rewrite(self, m, b):
        return b.op("Gemm", m.x, m.tensor("w"), m.tensor("bias"))


class _KeptND(MatMulAddToGemm):
    """MatMul + Add with an ``x`` not known to be 2-D, which `FuseGemm` leaves alone.

    Used with `find` only, to count them; never rewritten.
    """

    def check(self, m: Match) -> Reject | None:
        if ops.rank(m.x) == 2:
            return Reject("x is 2-D")
        return _operands_problem(m)


def _operands_problem(m: Match) -> Reject | None:
    """Why ``W`` and ``bias`` cannot be Gemm's ``B`` and ``C``, or None."""
    if m.w.ndim != 2:
        return Reject(f"the weight has shape {m.w.shape}, Gemm needs [K, N]")
    if not ops.is_float(m.w.dtype) or m.bias.dtype != m.w.dtype:
        return Reject(f"types {m.w.dtype} and {m.bias.dtype}: Gemm needs one float type")
    row = (1, m.w.shape[1])
    try:
        widens = np.broadcast_shapes(m.bias.shape, row) != row
    except ValueError:
        widens = True
    if widens:
        return Reject(f"the bias has shape {m.bias.shape}, Gemm needs one broadcastable to "
                      f"{list(row)}")
    return None


@dataclass(frozen=True)
class FuseGemm(Pass):
    """Turn 2-D MatMul + bias Add into Gemm; leave the others (counted as ``kept_nd``)."""

    name: ClassVar[str] = "fuse-gemm"

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Fuse every eligible pair; count the pairs left in place for their rank."""
        model.analysis(analyses.shapes)
        counts = apply_rules(model, [MatMulAddToGemm()])
        return PassResult(any(counts.values()),
                          {**counts, "kept_nd": len(find(model, _KeptND()))})
