"""Raising a model's default-domain opset, with every node converted and checked.

Some encodings exist only from a given opset on (float8 Q/DQ from 19, ``DequantizeLinear``
with ``block_size`` and int4 types from 21). Changing ``opset_import`` alone is not enough:
ops whose signature changed must be rewritten too — ``ReduceMean`` / ``ReduceL2`` take
``axes`` as an input from 18 on, and a tool that only bumps the number leaves an ``axes``
attribute that onnxruntime rejects (onnxruntime's own MatMulNBits quantizer does this to
MiniLM). `require_opset` converts with ``onnx.version_converter`` (the adapters maintained with
the op schemas), then runs the full ONNX checker (every node against its schema at the new
opset, strict shape inference) before the model is touched; a model it cannot convert is
left as it was and the error names the cause.
"""

from __future__ import annotations

import onnx
import onnx.version_converter

from onnxpress.errors import PassError
from onnxpress.ir.model import Model


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
