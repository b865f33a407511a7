"""The IR: onnx-graphsurgeon graphs inside a `Model`, with safe editing helpers."""

from onnxpress.ir import edit
from onnxpress.ir.io import load, save
from onnxpress.ir.model import Model
from onnxpress.ir.pattern import (
    Builder,
    Const,
    Match,
    Or,
    Reject,
    Rule,
    RuleError,
    apply_rules,
    explain,
    find,
)

__all__ = ["Builder", "Const", "Match", "Model", "Or", "Reject", "Rule", "RuleError",
           "apply_rules", "edit", "explain", "find", "load", "save"]
