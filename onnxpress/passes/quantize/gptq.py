"""GPTQ rounding: quantize a weight column by column, pushing each rounding error onward.

For a layer ``y = W x`` (``W`` is ``[N, K]``) and its inputs ``X`` (``[rows, K]``), the
output error of a quantized ``Ŵ`` is

    E(Ŵ) = ‖X (W − Ŵ)ᵀ‖²  =  Σ_n (w_n − ŵ_n) H (w_n − ŵ_n)ᵀ,      H = XᵀX

(the `Gram` observer's ``XᵀX``). Round-to-nearest minimises each weight's error alone; GPTQ
(Frantar et al., 2022, after Optimal Brain Surgeon) quantizes the K columns one at a time and,
after rounding column ``j``, moves the not-yet-quantized columns to absorb its error:

    δ = (w_j − ŵ_j) / U_jj,        W[:, j+1:] −= δ ⊗ U[j, j+1:]

where ``U`` is the upper Cholesky factor of ``H⁻¹`` (``H⁻¹ = UᵀU``): the row of ``U`` is the
OBS update restricted to the remaining columns, so one factorisation serves every step.
Details that make it work in practice:

- damping: ``H + λ·I`` with ``λ = percdamp · mean(diag H)`` keeps the factorisation stable
  when inputs are correlated or rank-deficient; inputs never seen (``H_jj = 0``) are set to
  zero weight, their column has no effect on the output;
- act-order: columns with the largest ``H_jj`` (the most active inputs) go first, while many
  columns remain to absorb their error. Their blocks' scales are then fixed up front from the
  original weights ("static groups"), so the blocks stay contiguous in ``K`` — the layout
  ``MatMulNBits`` and ``DequantizeLinear(block_size)`` read;
- without act-order, each block's scale is chosen when its first column is reached, from the
  weights as the earlier errors left them;
- lazy batches: updates inside a batch of columns (a multiple of the block size) are applied
  immediately, those to later columns once per batch as one matrix product.

Numpy only; `gptq_quantize` is independent of any graph, so static int8 can call it with
``block_size = K`` (one block per output channel).
"""

from __future__ import annotations

import numpy as np

from onnxpress.passes.quantize.blockwise import (
    BlockQuantized,
    blocks,
    check,
    dequantize,
    grid,
    quantize,
)

#: Columns per lazy batch (rounded up to a multiple of the block size).
LAZY_COLUMNS = 128


def output_error(weight: np.ndarray, approximation: np.ndarray, hessian: np.ndarray) -> float:
    """``‖X (W − Ŵ)ᵀ‖²`` from ``H = XᵀX``: the squared output error the rounding causes."""
    delta = np.asarray(weight, np.float64) - np.asarray(approximation, np.float64)
    return float(np.einsum("nk,kl,nl->", delta, hessian, delta))


def gptq_quantize(weight: np.ndarray, hessian: np.ndarray, bits: int, block_size: int,
                  symmetric: bool, *, percdamp: float = 0.01, act_order: bool = True,
                  clip_search: bool = True) -> BlockQuantized:
    """Quantize ``[N, K]`` `weight` block-wise with GPTQ's error compensation.

    Args:
        weight: ``[N, K]``, rows are output channels; K is the axis `hessian` spans.
        hessian: ``XᵀX`` of the layer's inputs, ``[K, K]`` (any positive multiple).
        bits: 4 or 8.
        block_size: Values per block along K (a power of two >= 16).
        symmetric: Symmetric grid (zero point 2^(bits-1)).
        percdamp: Damping, as a fraction of the mean diagonal of `hessian`.
        act_order: Quantize columns in decreasing order of ``diag(H)``.
        clip_search: Choose each block's clipping ratio by least squared error.

    Returns:
        The quantized weight, in the same layout as `round_to_nearest`'s.

    Raises:
        ValueError: shapes that do not match, or an unsupported width / block size.
    """
    check(bits, block_size)
    weight = np.asarray(weight, np.float64)
    n, k = weight.shape
    if np.shape(hessian) != (k, k):
        raise ValueError(f"hessian is {np.shape(hessian)}, the weight needs ({k}, {k})")
    w = blocks(weight, block_size).reshape(n, -1)  # [N, K padded]
    n_blocks, padded = w.shape[1] // block_size, w.shape[1]
    h = np.zeros((padded, padded))
    h[:k, :k] = hessian
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scale = np.zeros((n, n_blocks), np.float32)
    zero = np.zeros((n, n_blocks), np.uint8)
    if act_order:
        scale, zero = grid(w.reshape(n, n_blocks, block_size), bits, symmetric,
                           clip_search=clip_search)
        perm = np.argsort(-np.diag(h), kind="stable")
    else:
        perm = np.arange(padded)
    w, h = w[:, perm], h[np.ix_(perm, perm)]
    h[np.diag_indices(padded)] += percdamp * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor: H⁻¹ = UᵀU
    q = np.zeros((n, padded), np.uint8)
    group = perm // block_size
    lazy = -(-LAZY_COLUMNS // block_size) * block_size
    for i1 in range(0, padded, lazy):
        i2 = min(i1 + lazy, padded)
        w1, errors = w[:, i1:i2].copy(), np.zeros((n, i2 - i1))
        for i in range(i2 - i1):
            j, g = i1 + i, group[i1 + i]
            if not act_order and j % block_size == 0:
                # The block starts here and lies inside this batch: w1 holds it as updated.
                s, z = grid(w1[:, i:i + block_size][:, None, :], bits, symmetric,
                            clip_search=clip_search)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            column = w1[:, i]
            q[:, j] = quantize(column, scale[:, g], zero[:, g], bits)
            error = (column - dequantize(q[:, j], scale[:, g], zero[:, g])) / u[j, j]
            w1[:, i:] -= np.outer(error, u[j, j:i2])
            errors[:, i] = error
        w[:, i2:] -= errors @ u[i1:i2, i2:]
    natural = np.empty_like(q)
    natural[:, perm] = q
    return BlockQuantized(natural.reshape(n, n_blocks, block_size), scale, zero, bits, k)
