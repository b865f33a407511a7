"""onnxruntime sessions for a model and a target.

Providers are always passed explicitly (onnxruntime otherwise warns or picks one silently),
and a target whose provider is missing fails with the package to install.
"""

from __future__ import annotations

import onnxruntime as ort

from onnxpress.errors import ModelLoadError
from onnxpress.ir.io import ModelLike, load
from onnxpress.ir.model import Model
from onnxpress.targets import Target, get_target

LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def serialized(model: ModelLike) -> bytes:
    """The model as ONNX bytes (paths are read, everything else exported)."""
    if isinstance(model, bytes):
        return model
    if not isinstance(model, Model):
        model = load(model)
    return model.to_onnx().SerializeToString()


def session(model: ModelLike, target: Target | str = "cpu", *, threads: int | None = None,
            optimize: bool | str = True) -> ort.InferenceSession:
    """An onnxruntime InferenceSession for `model` on `target`.

    Args:
        model: A `Model`, path, ModelProto, bytes or gs.Graph.
        target: "cpu", "cuda", "tensorrt" or a `Target`.
        threads: Intra-op threads (None: onnxruntime's default, one per core).
        optimize: onnxruntime's graph optimization level: True or "all" (ORT_ENABLE_ALL),
            "extended", "basic", or False / "off" — calibration and numeric verification need
            the graph run as written.

    Raises:
        TargetError: the target's provider is not installed.
        ModelLoadError: onnxruntime rejects the model.
    """
    target = get_target(target)
    target.check_available()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures surface as exceptions
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = LEVELS[{True: "all", False: "off"}.get(optimize, optimize)]
    try:
        return ort.InferenceSession(serialized(model), options, providers=list(target.providers))
    except Exception as e:  # onnxruntime raises its own unrelated exception types
        raise ModelLoadError(f"onnxruntime cannot load the model: {e}") from None
