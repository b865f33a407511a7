"""Raise a model's default-domain opset when, and only when, no node changes meaning.

A fusion may need an op newer than the model's opset (LayerNormalization is 17, Gelu 20,
Mish 18). Raising the opset import is safe exactly when every node means at the new version
what it meant at the old one. The oracle is ``onnx.version_converter``: its per-op adapters
encode what changed between versions (RoiAlign's coordinate mode in 16, BatchNormalization's
outputs in 14, …). If converting a copy leaves every node exactly as it was, only the opset
import (and, if needed, the IR version) changes; otherwise nothing changes and the caller gets
the reason. The converted model is never adopted: its rewrites are not ours to vouch for.
"""

from __future__ import annotations

import onnx
import onnx.version_converter

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
