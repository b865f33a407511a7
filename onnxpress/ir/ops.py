"""ONNX operand forms, read in one place: constants, optional inputs, axes, Pad and Slice.

The same operand has several spellings across opsets and exporters, and every pass that reads
it must understand all of them the same way:

- a **constant** is an initializer or the output of a ``Constant`` node (``value`` tensor, or
  the ``value_float(s)`` / ``value_int(s)`` scalar forms; strings and sparse tensors are left
  alone);
- an **optional input** is absent when the node has fewer inputs *or* when its name is empty
  (``Pad(x, pads, , axes)``);
- **axes** are an attribute before the opset that moved them to an input (ReduceSum and
  Squeeze / Unsqueeze 13, the other reductions 18), an input after; negative axes count from
  the end, so normalising them needs the rank;
- **Pad** reads ``pads`` / ``value`` attributes before opset 11 and ``pads``, optional
  ``constant_value`` and (opset 18) ``axes`` inputs after;
- **Slice** reads ``starts`` / ``ends`` / ``axes`` attributes before opset 10 (no steps) and
  inputs after, ``axes`` defaulting to ``0 … len(starts) - 1`` and ``steps`` to ones.

An operand given but computed at run time is not "absent": readers raise `DynamicOperand`
naming it, so a pass can say why it left a node alone instead of guessing a default.
`FLOAT_DTYPES` is the one list of floating-point element types (fp16, bf16, fp32, fp64) the
passes accept.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxpress.ir.edit import producer

#: Floating-point element types (numpy dtypes; bfloat16 as onnx maps it, via ml_dtypes).
FLOAT_DTYPES = frozenset(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)) for t in (
    onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE))

_SCALAR_ATTRS = {
    "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
    "value_ints": np.int64,
}


class DynamicOperand(ValueError):
    """An operand a static reading needs is computed at run time (the message names it)."""


def is_float(dtype: object) -> bool:
    """Whether `dtype` (numpy dtype, type or None) is one of `FLOAT_DTYPES`."""
    return dtype is not None and np.dtype(dtype) in FLOAT_DTYPES


def constant_node_value(node: gs.Node) -> np.ndarray | None:
    """The numeric value of a Constant node; None for other nodes and for the forms onnxpress
    leaves alone (strings, sparse tensors)."""
    if node.op != "Constant" or node.domain not in (None, "", "ai.onnx"):
        return None
    for key, value in node.attrs.items():
        if key == "value" and isinstance(value, gs.Constant):
            array = np.asarray(value.values)
            return array if array.dtype.kind in "biuf" or is_float(array.dtype) else None
        if key in _SCALAR_ATTRS:
            return np.asarray(value, dtype=_SCALAR_ATTRS[key])
    return None


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None otherwise."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    return constant_node_value(node) if node is not None else None


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input `index` of `node`, or None when it is absent (missing or empty name)."""
    if index < len(node.inputs) and not node.inputs[index].is_empty():
        return node.inputs[index]
    return None


def operand(node: gs.Node, index: int, attr: str | None = None) -> np.ndarray | None:
    """The constant value of input `index`, else of attribute `attr` (the older opset form).

    Returns:
        The value, or None when neither is given.

    Raises:
        DynamicOperand: The input is given but not constant.
    """
    tensor = optional_input(node, index)
    if tensor is not None:
        value = constant_value(tensor)
        if value is None:
            raise DynamicOperand(f"the {node.op}'s input {index} '{tensor.name}' is not constant")
        return value
    return _attribute(node, attr) if attr is not None else None


def _attribute(node: gs.Node, name: str) -> np.ndarray | None:
    return np.asarray(node.attrs[name]) if name in node.attrs else None


def rank(tensor: gs.Tensor) -> int | None:
    """The rank of `tensor` if known (shape inference for activations)."""
    shape = static_dims(tensor)
    return None if shape is None else len(shape)


def static_dims(tensor: gs.Tensor) -> tuple | None:
    """The dims of `tensor` (ints, or strings / None for dynamic ones); None if unknown."""
    shape = tensor.values.shape if isinstance(tensor, gs.Constant) else tensor.shape
    return None if shape is None else tuple(shape)


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of `tensor` if every dimension is a known non-negative int, else None."""
    dims = static_dims(tensor)
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return dims


def dtype(tensor: gs.Tensor) -> np.dtype | None:
    """The element type of `tensor` (an initializer's values, or the annotated type)."""
    return np.asarray(tensor.values).dtype if isinstance(tensor, gs.Constant) else tensor.dtype


def axes(node: gs.Node, data_rank: int | None = None, index: int = 1) -> list[int] | None:
    """The ``axes`` of `node` (attribute or input `index`), negatives normalised if the rank
    of the data is known; None when no axes are given.

    Raises:
        DynamicOperand: The axes input is computed at run time.
    """
    value = operand(node, index, "axes")
    if value is None:
        return None
    found = [int(a) for a in value.reshape(-1)]
    return [a % data_rank for a in found] if data_rank is not None else found


class PadOperands(NamedTuple):
    """A Pad's operands: ``pads`` (begins then ends), the fill ``value``, ``axes`` or None
    (the pads cover every axis)."""

    pads: np.ndarray
    value: np.ndarray
    axes: np.ndarray | None


def pad_operands(node: gs.Node) -> PadOperands:
    """The operands of a Pad in attribute (opset < 11) or input form.

    Raises:
        DynamicOperand: pads, constant_value or axes is computed at run time.
    """
    if "pads" in node.attrs or len(node.inputs) == 1:  # before opset 11
        return PadOperands(np.asarray(node.attrs.get("pads", ()), np.int64).reshape(-1),
                           np.asarray(node.attrs.get("value", 0.0)), None)
    named = {1: "pads", 2: "constant_value", 3: "axes"}
    values = {}
    for index, what in named.items():
        try:
            values[what] = operand(node, index)
        except DynamicOperand:
            raise DynamicOperand(f"the Pad's {what} input is not constant") from None
    pads, value, pad_axes = values["pads"], values["constant_value"], values["axes"]
    return PadOperands(
        np.zeros(0, np.int64) if pads is None else pads.astype(np.int64).reshape(-1),
        np.zeros(()) if value is None else value,
        None if pad_axes is None else pad_axes.astype(np.int64).reshape(-1))


class SliceOperands(NamedTuple):
    """A Slice's operands, one entry per sliced axis (defaults filled in)."""

    starts: np.ndarray
    ends: np.ndarray
    axes: np.ndarray
    steps: np.ndarray


def slice_operands(node: gs.Node) -> SliceOperands | None:
    """The operands of a Slice in attribute (opset < 10) or input form; None if starts or
    ends are not given.

    Raises:
        DynamicOperand: an operand is computed at run time.
    """
    if "starts" in node.attrs:  # before opset 10: attributes, no steps
        starts, ends, slice_axes = (_attribute(node, a) for a in ("starts", "ends", "axes"))
        steps = None
    else:
        starts, ends, slice_axes, steps = (operand(node, i) for i in (1, 2, 3, 4))
    if starts is None or ends is None:
        return None
    starts, ends = starts.reshape(-1).astype(np.int64), ends.reshape(-1).astype(np.int64)
    return SliceOperands(
        starts, ends,
        np.arange(len(starts)) if slice_axes is None else slice_axes.reshape(-1).astype(np.int64),
        np.ones(len(starts), np.int64) if steps is None else steps.reshape(-1).astype(np.int64))
