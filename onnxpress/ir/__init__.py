"""The IR: onnx-graphsurgeon graphs inside a `Model`, with safe editing helpers."""

from onnxpress.ir import edit
from onnxpress.ir.io import load, save
from onnxpress.ir.model import Model

__all__ = ["Model", "edit", "load", "save"]
