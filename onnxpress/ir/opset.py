"""Raise a model's default-domain opset when, and only when, no node changes meaning.

A fusion may need an op newer than the model's opset (LayerNormalization is 17, Gelu 20,
Mish 18). Raising the opset import is safe exactly when every node means at the new version
what it meant at the old one. The oracle is ``onnx.version_converter``: its per-op adapters
encode what changed between versions (RoiAlign's coordinate mode in 16, BatchNormalization's
outputs in 14, …). If converting a copy leaves every node exactly as it was, only the opset
import (and, if needed, the IR version) changes; otherwise nothing changes and the caller gets
the reason. The converted model is never adopted: its rewrites are not ours to vouch for.

`require_opset` is for encodings that exist only from a given opset on (float8 Q/DQ from 19,
``DequantizeLinear`` with ``block_size`` and 4-bit types from 21): there the converter's
rewrites are wanted — ``ReduceMean`` / ``ReduceL2`` take ``axes`` as an input from 18 on, and
a tool that only bumps the number leaves an ``axes`` attribute that onnxruntime rejects
(onnxruntime's own MatMulNBits quantizer does this to MiniLM). It adopts the converted model
only after the full ONNX checker (every node against its schema at the new opset, strict shape
inference) accepts it; otherwise the model is left as it was and the error names the cause.
"""

from __future__ import annotations

import onnx
import onnx.version_converter

from onnxpress.errors import PassError
from onnxpress.ir.model import Model


def raise_opset(model: Model, version: int) -> str | None:
    """Raise the default-domain opset of `model` to `version` if no node changes meaning.

    Returns:
        None if the opset was raised (or already high enough), else why it was not.
    """
    if model.opset >= version:
        return None
    before = model.to_onnx()
    try:
        after = onnx.version_converter.convert_version(before, version)
    except Exception as e:  # the converter raises RuntimeError, ValueError, onnx errors …
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"onnx.version_converter cannot convert opset {model.opset} to {version}: {first}"
    # Subgraphs are compared as part of their If / Loop / Scan node's attributes.
    old, new = before.graph.node, after.graph.node
    if len(old) != len(new):
        return (f"opset {model.opset} to {version} changes the graph ({len(old)} nodes become "
                f"{len(new)})")
    rewritten = [f"{a.op_type} '{a.name}'" for a, c in zip(old, new, strict=True)
                 if a != c]
    if rewritten:
        shown = ", ".join(rewritten[:5]) + (" …" if len(rewritten) > 5 else "")
        return (f"{len(rewritten)} node(s) change meaning from opset {model.opset} to {version} "
                f"({shown}); convert the model to opset {version} first")
    model.opsets[""] = version
    # An opset needs an IR version that knows it; keep the source's when it suffices.
    needed = onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid(d, v) for d, v in model.opsets.items()], ignore_unknown=True)
    model.ir_version = max(model.ir_version, needed)
    return None


def require_opset(model: Model, version: int, why: str) -> bool:
    """Raise the default-domain opset of `model` to at least `version`, in place.

    Args:
        model: The model; changed only when its opset is lower and conversion succeeds.
        version: The opset needed.
        why: What needs it, for the error message ("DequantizeLinear block_size").

    Returns:
        Whether the opset was raised.

    Raises:
        PassError: the converter or the checker failed; the model is unchanged.
    """
    if model.opset >= version:
        return False
    proto = model.to_onnx()
    try:
        converted = onnx.version_converter.convert_version(proto, version)
        converted.ir_version = max(proto.ir_version, onnx.helper.find_min_ir_version_for(
            list(converted.opset_import), ignore_unknown=True))
        onnx.checker.check_model(converted, full_check=True)
    except (RuntimeError, ValueError, IndexError, onnx.checker.ValidationError,
            onnx.shape_inference.InferenceError) as e:
        raise PassError(
            f"{why} needs opset {version}, and converting this model from opset "
            f"{model.opset} failed: {str(e).splitlines()[0][:300]}; convert the model "
            f"yourself (onnx.version_converter) or choose an encoding that keeps opset "
            f"{model.opset}") from None
    converted_model = Model.from_onnx(converted, source=model.source)
    model.adopt(converted_model)
    model.ir_version = converted.ir_version
    return True
