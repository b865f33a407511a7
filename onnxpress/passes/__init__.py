"""Passes: every transformation onnxpress applies, registered by name on import."""

from onnxpress.passes.base import Context, Pass, PassResult, get, registered, resolve
from onnxpress.passes.calibrate import Calibrate
from onnxpress.passes.cleanup.constants import FoldConstants
from onnxpress.passes.cleanup.dead_code import EliminateDeadCode
from onnxpress.passes.cleanup.identity import EliminateIdentity
from onnxpress.passes.cleanup.pipeline import Cleanup
from onnxpress.passes.fusion.activations import FuseActivations
from onnxpress.passes.fusion.batchnorm import FuseBatchNorm
from onnxpress.passes.fusion.gelu import FuseGelu
from onnxpress.passes.fusion.gemm import FuseGemm
from onnxpress.passes.fusion.layernorm import FuseLayerNorm
from onnxpress.passes.fusion.pad import FusePad
from onnxpress.passes.fusion.pipeline import Fuse
from onnxpress.passes.fusion.transpose import FuseTransposes
from onnxpress.passes.lowrank import LowRank
from onnxpress.passes.manager import DumpAfterEach, PassManager
from onnxpress.passes.quantize.bias_correction import BiasCorrection
from onnxpress.passes.quantize.dynamic import QuantizeDynamic
from onnxpress.passes.quantize.equalize import AbsorbBias, Equalize
from onnxpress.passes.quantize.fp8 import QuantizeFP8
from onnxpress.passes.quantize.sensitivity import MixedPrecision
from onnxpress.passes.quantize.smoothquant import SmoothQuant
from onnxpress.passes.quantize.static import QuantizeStatic
from onnxpress.passes.quantize.weight_only import QuantizeWeights
from onnxpress.passes.sequence import Sequence
from onnxpress.passes.sparsity.channels import PruneChannels
from onnxpress.passes.sparsity.guarded import PruneGuarded
from onnxpress.passes.sparsity.magnitude import PruneMagnitude
from onnxpress.passes.sparsity.reconstruct import Reconstruct
from onnxpress.passes.sparsity.semi_structured import Sparsify2to4
from onnxpress.report import PassRecord, Report

__all__ = [
    "AbsorbBias", "BiasCorrection", "Calibrate", "Cleanup", "Context", "DumpAfterEach",
    "EliminateDeadCode", "EliminateIdentity", "Equalize", "FoldConstants", "Fuse",
    "FuseActivations", "FuseBatchNorm", "FuseGelu", "FuseGemm", "FuseLayerNorm", "FusePad",
    "FuseTransposes", "LowRank", "MixedPrecision", "Pass", "PassManager", "PassRecord",
    "PassResult", "PruneChannels", "PruneGuarded", "PruneMagnitude", "QuantizeDynamic",
    "QuantizeFP8", "QuantizeStatic", "QuantizeWeights", "Reconstruct", "Report", "Sequence",
    "SmoothQuant", "Sparsify2to4", "get", "registered", "resolve",
]
