"""Fold a zero-valued constant Pad into the ``pads`` of the Conv or AveragePool that reads it.

Conv and AveragePool first pad their input with zeros on the spatial axes, by ``p`` (a begin
and an end per axis), and then slide their window. Zero padding adds up, since
``zeropad(zeropad(x, q), p) = zeropad(x, p + q)``, so:

    Conv(Pad(x, q, value=0), pads=p) = Conv(x, pads=p + q)

This holds when ``q`` is zero on the batch and channel axes (the op pads only spatial axes)
and ``q >= 0`` (a negative pad crops, and ``pads`` cannot crop). For AveragePool it also needs
``count_include_pad=1``. The explicit Pad's zeros count as data in the divisor, so folded
padding must count too, and onnxruntime refuses pool pads as large as the kernel, so the
sums must stay below it. MaxPool pads with -inf, not zero, so a zero Pad never folds into it.
The reader's ``auto_pad`` must be NOTSET: SAME_UPPER / SAME_LOWER derive pads from the input
size, which removing the Pad changes, and VALID ignores ``pads``.

Pad is read in every opset form by `onnxpress.ir.ops.pad_operands`: the ``pads`` / ``value``
attributes before opset 11, the ``pads`` and optional ``constant_value`` inputs from opset 11
(initializers or Constant nodes), and the optional ``axes`` input from opset 18, which lists
the axes ``pads`` covers (negative axes count from the end, so the rank comes from shape
inference). Only mode "constant" folds.

Exact: the reader sees the same zero-padded tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnxpress.ir import analyses, ops
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import Match, Reject, Rule, apply_rules
from onnxpress.passes.base import Context, Pass, PassResult


class PadConv(Rule):
    """Conv(Pad(x)) becomes Conv(x) with the Pad's spatial pads added to its own."""

    op_type: ClassVar[str] = "Conv"

    def pattern(self, op, x):
        pad = op.Pad(x, more_inputs=True, label="pad")
        return getattr(op, self.op_type)(pad, more_inputs=True, label="reader")

    def check(self, m: Match) -> Reject | None:
        """Accept a zero constant Pad of spatial axes feeding a reader without auto_pad."""
        pads = _merged_pads(m)
        return pads if isinstance(pads, Reject) else None

    def rewrite(self, m, b):
        reader = m.reader
        return b.op(reader.op, m.x, *reader.inputs[1:],
                    attrs={**reader.attrs, "pads": _merged_pads(m)})


class PadAveragePool(PadConv):
    """AveragePool(Pad(x)) with count_include_pad=1 becomes AveragePool(x) with wider pads."""

    op_type: ClassVar[str] = "AveragePool"

    def check(self, m: Match) -> Reject | None:
        """Also require counted padding and folded pads below the kernel size.

        onnxruntime rejects a pool whose window can lie entirely in the padding.
        """
        if not m.reader.attrs.get("count_include_pad", 0):
            return Reject("count_include_pad=0: the Pad's zeros would stop counting", m.reader)
        pads = _merged_pads(m)
        if isinstance(pads, Reject):
            return pads
        kernel = list(m.reader.attrs["kernel_shape"])
        if any(p >= k for p, k in zip(pads, kernel + kernel, strict=True)):
            return Reject(f"folded pads {pads} reach the kernel size {kernel}", m.reader)
        return None


def _merged_pads(m: Match) -> list[int] | Reject:
    """The reader's ``pads`` plus the Pad's spatial pads, or why they cannot be merged."""
    auto_pad = m.reader.attrs.get("auto_pad", "NOTSET")
    if auto_pad != "NOTSET":
        return Reject(f"auto_pad={auto_pad}: it derives its own pads", m.reader)
    extra = _spatial_pads(m)
    if isinstance(extra, Reject):
        return extra
    own = np.asarray(m.reader.attrs.get("pads", np.zeros_like(extra)), np.int64)
    return [int(p) for p in own + extra]


def _spatial_pads(m: Match) -> np.ndarray | Reject:
    """The Pad's spatial pads as ``[begins…, ends…]`` (the reader's layout), or why not."""
    mode = m.pad.attrs.get("mode", "constant")
    if mode != "constant":
        return Reject(f"mode is {mode}, only constant padding folds", m.pad)
    try:
        pads, value, axes = ops.pad_operands(m.pad)
    except ops.DynamicOperand as e:
        return Reject(str(e), m.pad)
    if np.any(value != 0):
        return Reject(f"the value is {value}, not zero", m.pad)
    if axes is None:
        rank, axes = len(pads) // 2, np.arange(len(pads) // 2)
    elif ops.rank(m.x) is not None:
        rank = ops.rank(m.x)
    else:
        return Reject("axes given but the rank of its input is unknown", m.pad)
    begins, ends = np.zeros(rank, np.int64), np.zeros(rank, np.int64)
    begins[axes % rank], ends[axes % rank] = pads[:len(axes)], pads[len(axes):]
    if begins[:2].any() or ends[:2].any():
        return Reject("it pads the batch or channel axis", m.pad)
    if (begins < 0).any() or (ends < 0).any():
        return Reject("it crops (negative pads)", m.pad)
    return np.concatenate([begins[2:], ends[2:]])


@dataclass(frozen=True)
class FusePad(Pass):
    """Fold zero constant Pads into the pads of the Conv or AveragePool reading them."""

    name: ClassVar[str] = "fuse-pad"

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Fold every eligible Pad in the main graph."""
        model.analysis(analyses.shapes)
        counts = apply_rules(model, [PadConv(), PadAveragePool()])
        return PassResult(any(counts.values()), counts)
