"""Which quantized node units onnxruntime really fused into int8 kernels.

Q/DQ in a file is a request, not a result: onnxruntime fuses a unit ``DQ → op → Q`` into an
int8 kernel only when its selectors accept it, and an unfused unit runs as dequantize, float
op, quantize — slower than plain FP32. This module asks onnxruntime: it builds a session with
``ORT_ENABLE_EXTENDED`` (the level at which QDQ units are fused; the layout transforms of
``ENABLE_ALL`` only rename the kernels), saves the optimized graph, and counts

- fused: nodes running quantized kernels (QLinear*, QGemm, MatMulIntegerToFloat, …), and
  data-movement ops that now read and write integers directly;
- unfused: float compute ops still reading a DequantizeLinear output.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxpress.ir.io import ModelLike
from onnxpress.runtime.session import serialized
from onnxpress.targets import Target, get_target

INT8_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearSoftmax", "QLinearWhere", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "MatMulInteger", "ConvInteger", "MatMulNBits", "NhwcQLinearConv",
})
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


@dataclass(frozen=True)
class FusionReport:
    """Counts of fused int8 kernels and unfused float ops fed by DequantizeLinear."""

    fused: Counter = field(default_factory=Counter)
    unfused: Counter = field(default_factory=Counter)
    #: Names of the float compute nodes still reading a DequantizeLinear output (onnxruntime
    #: keeps the names of the nodes it leaves alone), so a quantizer can keep them float.
    unfused_nodes: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        """Fraction of quantized units that run as int8 kernels (1.0 when none are left)."""
        total = sum(self.fused.values()) + sum(self.unfused.values())
        return sum(self.fused.values()) / total if total else 1.0

    def summary(self) -> str:
        """One line: the ratio and the op counts."""
        fused = ", ".join(f"{op}×{n}" for op, n in sorted(self.fused.items())) or "none"
        unfused = ", ".join(f"{op}×{n}" for op, n in sorted(self.unfused.items())) or "none"
        return f"{self.ratio:.0%} fused (int8 kernels: {fused}; float ops on DQ: {unfused})"


def fusion_report(model: ModelLike, target: Target | str = "cpu") -> FusionReport:
    """Ask onnxruntime which quantized units of `model` it fused on `target`."""
    target = get_target(target)
    target.check_available()
    with tempfile.TemporaryDirectory(prefix="onnxpress-fusion-") as folder:
        path = Path(folder) / "optimized.onnx"
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures surface as exceptions
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(path)
        ort.InferenceSession(serialized(model), options, providers=list(target.providers))
        optimized = onnx.load(str(path))
    return _count(optimized.graph)


def _count(graph: onnx.GraphProto) -> FusionReport:
    producers = {out: node for node in graph.node for out in node.output}
    fused, unfused, names = Counter(), Counter(), []
    for node in graph.node:
        if node.op_type in INT8_KERNELS:
            fused[node.op_type] += 1
        elif node.op_type not in QDQ and any(
                producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                and _dequantizes_activation(producers[i], producers) for i in node.input):
            unfused[node.op_type] += 1
            names.append(node.name)
    return FusionReport(fused, unfused, tuple(names))


def _dequantizes_activation(dq: onnx.NodeProto, producers: dict) -> bool:
    """A DQ of a runtime value (not of a constant weight, which fused kernels also keep for
    MatMulNBits-style ops and which is cheap to dequantize once)."""
    return dq.input[0] in producers
