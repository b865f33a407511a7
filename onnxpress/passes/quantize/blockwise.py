"""Block-wise integer grids for weights: parameters, rounding, dequantization and nibble packing.

A weight is seen as a matrix ``W`` of shape ``[N, K]``: one row per output channel (a
MatMul's column, an embedding table's row) and ``K`` the reduction axis (a MatMul's input
features, an embedding's width). Each row is cut along ``K`` into ``ceil(K / B)`` blocks of
``B`` values (the last one zero-padded), and each block ``b`` of row ``n`` gets its own scale
``s`` and zero point ``z`` on the unsigned ``bits``-bit grid ``q ∈ [0, 2^bits − 1]``:

    q = clamp(round(w / s) + z, 0, 2^bits − 1),        w ≈ (q − z) · s

- symmetric: ``z = 2^(bits−1)`` (8 for 4 bits, 128 for 8), ``s = max|w| / (2^(bits−1) − 1)``
  — the narrow range, so ``±max|w|`` are both exact;
- asymmetric: the block's range ``[lo, hi]`` widened to contain 0, ``s = (hi − lo) / (2^bits
  − 1)``, ``z = round(−lo / s)``.

``clip_search`` shrinks each block's range by the ratio in `CLIP_RATIOS` that minimizes the
block's squared rounding error (outliers otherwise waste the few levels 4 bits have).

This unsigned layout is the one onnxruntime's ``MatMulNBits`` and ``GatherBlockQuantized``
read (``B`` as ``[N, n_blocks, B·bits/8]`` bytes, two 4-bit values per byte, the first in the
low nibble; zero points packed the same way along the blocks) and, unpacked, the ``uint4`` /
``uint8`` data of a standard ``DequantizeLinear`` with ``block_size`` (opset 21).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxpress.passes.quantize.qdq import MIN_SCALE

#: Supported widths: MatMulNBits and DequantizeLinear's uint4 / uint8.
BITS = (4, 8)

#: Range ratios tried by the clip search (1.0 = the plain min/max range).
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


@dataclass(frozen=True)
class BlockQuantized:
    """A weight quantized block-wise along its reduction axis.

    Attributes:
        q: Integer values, uint8 ``[N, n_blocks, block_size]`` (``K`` padded with zeros).
        scale: float32 ``[N, n_blocks]``.
        zero_point: uint8 ``[N, n_blocks]``.
        bits: 4 or 8.
        k: The unpadded reduction length ``K``.
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    k: int

    @property
    def block_size(self) -> int:
        """Values per block."""
        return self.q.shape[2]

    @property
    def n_blocks(self) -> int:
        """Blocks per row."""
        return self.q.shape[1]

    @property
    def values(self) -> np.ndarray:
        """The integer values as ``[N, K]`` (padding dropped)."""
        return self.q.reshape(self.q.shape[0], -1)[:, :self.k]

    def dequantize(self) -> np.ndarray:
        """``(q − z) · s`` as float32 ``[N, K]``: what the runtime computes with."""
        w = (self.q.astype(np.float32) - self.zero_point[..., None]) * self.scale[..., None]
        return w.reshape(w.shape[0], -1)[:, :self.k]

    def packed(self) -> np.ndarray:
        """The values as MatMulNBits' ``B``: uint8 ``[N, n_blocks, block_size·bits/8]``."""
        return pack(self.q, self.bits)

    def packed_zero_points(self) -> np.ndarray:
        """Zero points as MatMulNBits wants them: uint8 ``[N · ceil(n_blocks·bits/8)]``."""
        return pack(self.zero_point, self.bits).reshape(-1)


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned `bits`-bit values along the last axis into bytes (low nibble first).

    An odd last axis is padded with a zero nibble. 8-bit values are returned as uint8.
    """
    values = values.astype(np.uint8)
    if bits == 8:
        return values
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    return values[..., 0::2] | (values[..., 1::2] << 4)


def unpack(packed: np.ndarray, bits: int, length: int) -> np.ndarray:
    """Inverse of `pack`: the first `length` values along the last axis."""
    if bits == 8:
        return packed[..., :length]
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1)
    return nibbles.reshape(*packed.shape[:-1], -1)[..., :length]


def blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """``[N, K]`` as float64 ``[N, n_blocks, block_size]``, zero-padded along K."""
    n, k = weight.shape
    n_blocks = -(-k // block_size)
    padded = np.zeros((n, n_blocks * block_size), np.float64)
    padded[:, :k] = weight
    return padded.reshape(n, n_blocks, block_size)


def grid(values: np.ndarray, bits: int, symmetric: bool, *,
         clip_search: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of each block (reduced over the last axis of `values`).

    Args:
        values: ``[..., block_size]`` blocks.
        bits: 4 or 8.
        symmetric: Zero point at the middle of the grid.
        clip_search: Shrink each block's range by the `CLIP_RATIOS` entry with the least
            squared rounding error.

    Returns:
        float32 scales and uint8 zero points of shape ``values.shape[:-1]``.
    """
    best_scale = best_zero = best_error = None
    for ratio in CLIP_RATIOS if clip_search else CLIP_RATIOS[:1]:
        scale, zero = _grid(values, bits, symmetric, ratio)
        if not clip_search:
            return scale, zero
        error = np.sum((dequantize(quantize(values, scale[..., None], zero[..., None], bits),
                                   scale[..., None], zero[..., None]) - values) ** 2, axis=-1)
        if best_error is None:
            best_scale, best_zero, best_error = scale, zero, error
            continue
        better = error < best_error
        best_scale = np.where(better, scale, best_scale)
        best_zero = np.where(better, zero, best_zero)
        best_error = np.where(better, error, best_error)
    return best_scale, best_zero


def _grid(values: np.ndarray, bits: int, symmetric: bool,
          ratio: float) -> tuple[np.ndarray, np.ndarray]:
    levels = 2**bits - 1
    lo = np.minimum(values.min(axis=-1), 0.0) * ratio
    hi = np.maximum(values.max(axis=-1), 0.0) * ratio
    if symmetric:
        scale = np.maximum(-lo, hi) / (2 ** (bits - 1) - 1)
        zero = np.full(scale.shape, 2 ** (bits - 1), np.float64)
    else:
        scale = (hi - lo) / levels
        zero = np.clip(np.round(-lo / np.maximum(scale, MIN_SCALE)), 0, levels)
    return np.maximum(scale, MIN_SCALE).astype(np.float32), zero.astype(np.uint8)


def quantize(values: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Round `values` onto the grid (broadcasting `scale` and `zero`); uint8 result."""
    q = np.round(values / scale.astype(np.float64)) + zero
    return np.clip(q, 0, 2**bits - 1).astype(np.uint8)


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """``(q − z) · s`` in float64 (broadcasting)."""
    return (q.astype(np.float64) - zero) * scale.astype(np.float64)


def check(bits: int, block_size: int) -> None:
    """Raise ValueError unless the runtimes can read this width and block size."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16 (MatMulNBits' rule), got "
                         f"{block_size}")


def round_to_nearest(weight: np.ndarray, bits: int, block_size: int, symmetric: bool, *,
                     clip_search: bool = True) -> BlockQuantized:
    """Quantize ``[N, K]`` `weight` block-wise by rounding each value to the nearest level.

    Args:
        weight: ``[N, K]``, rows are output channels (or table rows).
        bits: 4 or 8.
        block_size: Values per block along K (a power of two >= 16).
        symmetric: Symmetric grid (zero point 2^(bits-1)).
        clip_search: Choose each block's clipping ratio by least squared error.
    """
    check(bits, block_size)
    b = blocks(np.asarray(weight), block_size)
    scale, zero = grid(b, bits, symmetric, clip_search=clip_search)
    q = quantize(b, scale[..., None], zero[..., None], bits)
    return BlockQuantized(q, scale, zero, bits, weight.shape[1])
