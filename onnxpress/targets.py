"""Targets: the backend a model is compiled for, and what it runs fast.

A `Target` names the onnxruntime execution providers that run the model and the package that
provides them, and holds the backend's quantization placement rules as an op table: for each
op type, which inputs get Q/DQ as activations, which input is the weight and its per-channel
axis, whether the bias is stored int32, and whether the output is quantized. Passes read the
table; they never hard-code a backend's rules.

- ``cpu`` follows onnxruntime's QDQ node-unit selectors (reference rules R-A1..A6): a unit is
  fused into an int8 kernel only if every real input comes from a DequantizeLinear and every
  output edge goes to a QuantizeLinear (Conv, Add, Concat, pools); MatMul / Gemm fuse with or
  without the output Q (MatMulIntegerToFloat / QGemm); data-movement ops fuse only when input
  and output share scale and zero point.
- ``tensorrt`` follows TensorRT's explicit-quantization rules (R-B1..B5): symmetric int8
  everywhere, Q/DQ on both inputs of weighted ops, no Q on their outputs, float bias.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxpress.errors import TargetError

#: How a quantized op's output is treated: always Q'd (the unit needs it to fuse), Q'd only
#: when a reader is quantized too, never, or Q'd with the input's parameters (data movement).
OutputRule = Literal["always", "if-read", "never", "same-as-input"]

#: How an op is treated inside an attention / LayerNorm block (`attention_blocks`): as
#: anywhere else, as a weights-only product (activation input and weight in int8, float
#: output: onnxruntime's MatMulIntegerToFloat / QGemm), or kept float.
InAttention = Literal["as-is", "weights-only", "float"]

#: Ops that mark an attention / LayerNorm block. Their inputs and the tensors around them
#: hold ranges int8 cannot share with the rest (residual stream, masks, softmax logits).
ATTENTION_MARKERS = frozenset({"LayerNormalization", "Softmax", "SkipLayerNormalization",
                               "Attention", "MultiHeadAttention", "SimplifiedLayerNormalization",
                               "RMSNormalization"})


@dataclass(frozen=True)
class QRule:
    """How one op type is quantized on a target.

    Attributes:
        activations: Indices of the inputs quantized as activations (None: all inputs), or
            a function of the node giving them.
        weight: Index of the constant weight input, if any.
        weight_axis: Per-channel axis of the weight, or a function of the node giving it.
        bias: Index of a bias input stored as int32 (scale s_x * s_w), if the target wants it.
        output: How the output is treated (see `OutputRule`).
        skip: A function of the node returning why the backend gains nothing from quantizing
            it (the node then stays float), or None.
        in_attention: How the op is treated inside an attention / LayerNorm block.
    """

    activations: tuple[int, ...] | Callable[[gs.Node], tuple[int, ...]] | None = (0,)
    weight: int | None = None
    weight_axis: int | Callable[[gs.Node], int] | None = None
    bias: int | None = None
    output: OutputRule = "always"
    skip: Callable[[gs.Node], str | None] | None = None
    in_attention: InAttention = "float"

    def inputs(self, node: gs.Node) -> list[int]:
        """Indices of `node`'s activation inputs to quantize (present, non-constant ones)."""
        if callable(self.activations):
            indices = self.activations(node)
        else:
            indices = range(len(node.inputs)) if self.activations is None else self.activations
        return [i for i in indices if i < len(node.inputs) and i != self.weight
                and isinstance(node.inputs[i], gs.Variable) and not node.inputs[i].is_empty()]

    def axis(self, node: gs.Node) -> int | None:
        """The weight's per-channel axis for `node`."""
        return self.weight_axis(node) if callable(self.weight_axis) else self.weight_axis


def _gemm_axis(node: gs.Node) -> int:
    """Gemm computes A·B (or A·Bᵀ with transB): output channels are B's axis 1 (or 0)."""
    return 0 if node.attrs.get("transB", 0) else 1


def _residual_input(node: gs.Node) -> tuple[int, ...]:
    """The skip input of a residual Add (R-B3): TensorRT fuses Conv + Add when the branch
    coming from the Conv stays unquantized, and the *other* input's precision decides the
    fused output's. A branch counts as a conv branch if it reaches a weighted op through
    BatchNormalization only; with two conv branches, the second input is the skip."""
    def from_weighted(tensor: gs.Tensor) -> bool:
        node = tensor.inputs[0] if tensor.inputs else None
        while node is not None and node.op == "BatchNormalization":
            node = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        return node is not None and node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul")

    skips = tuple(i for i, t in enumerate(node.inputs[:2]) if not from_weighted(t))
    return skips[:1] if skips else (1,)


def _tiny_conv(node: gs.Node) -> str | None:
    """TensorRT's int8 convolution kernels need channel counts it can tile (R-B4): below 16
    channels, unless a multiple of 8, Q/DQ only adds reformatting (ModelOpt's rule)."""
    weight = node.inputs[1]
    if not isinstance(weight, gs.Constant):
        return None
    # Conv weights are (out, in/g, …), ConvTranspose (in, out/g, …): both counts, either way.
    counts = (weight.values.shape[0], weight.values.shape[1] * int(node.attrs.get("group", 1)))
    if any(c < 16 and c % 8 for c in counts):
        return f"channels {counts}: too few for int8 tensor-core tiles"
    return None


def _gemv(node: gs.Node) -> str | None:
    """A matrix-vector product (a weight dimension of 1) has no tensor-core benefit (R-B4)."""
    weight = node.inputs[1]
    if isinstance(weight, gs.Constant) and 1 in weight.values.shape[-2:]:
        return f"GEMV-shaped weight {tuple(weight.values.shape)}"
    return None


def _square(node: gs.Node) -> str | None:
    """``x * x`` (a GELU cubic, a variance): the product's range is the square of the input's,
    so its small values — the ones that matter — vanish in 8 bits."""
    if len(node.inputs) == 2 and node.inputs[0] is node.inputs[1]:
        return "squares its input: int8 loses the small values"
    return None


def attention_blocks(graph: gs.Graph) -> set[int]:
    """The nodes (by ``id``) inside attention / LayerNorm blocks: the markers themselves
    (`ATTENTION_MARKERS`, and LayerNorms written out as ``Reduce* → … → Sqrt``) and every node
    on a path from one marker to another — the residual stream of a transformer, its
    attention, masks and feed-forward layers.

    Per node, not per graph: a Softmax in a detector head, or a classifier's final Softmax,
    marks only itself (nothing lies between it and another marker), so the convolutions of a
    CNN stay convolutions however many Softmaxes the graph has; the conv stem of a hybrid
    recognizer is upstream of every marker and stays outside too.
    """
    nodes = graph.nodes
    index = {id(n): i for i, n in enumerate(nodes)}
    readers: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, node in enumerate(nodes):
        for tensor in node.inputs:
            for p in tensor.inputs:
                if id(p) in index:
                    readers[index[id(p)]].append(i)
    marker_set = {i for i, n in enumerate(nodes) if n.op in ATTENTION_MARKERS or _written_norm(n)}
    if not marker_set:
        return set()
    # after[i]: a marker is upstream of i; before[i]: a marker is downstream of i.
    after, before = [False] * len(nodes), [False] * len(nodes)
    for i in range(len(nodes)):  # graph.nodes is in topological order
        if after[i] or i in marker_set:
            for j in readers[i]:
                after[j] = True
    for i in reversed(range(len(nodes))):
        if any(before[j] or j in marker_set for j in readers[i]):
            before[i] = True
    return {id(nodes[i]) for i in range(len(nodes))
            if i in marker_set or (after[i] and before[i])}


def _written_norm(node: gs.Node) -> bool:
    """A Sqrt (or Reciprocal) of a reduction: the denominator of a LayerNorm written out."""
    if node.op not in ("Sqrt", "Reciprocal") or not node.inputs:
        return False
    frontier, seen = [node.inputs[0]], 0
    while frontier and seen < 4:  # Sqrt(ReduceMean(...) + eps): a step or two back
        tensor = frontier.pop()
        seen += 1
        for p in tensor.inputs:
            if p.op.startswith("Reduce"):
                return True
            if p.op in ("Add", "Div", "Mul", "Cast"):
                frontier.extend(t for t in p.inputs if isinstance(t, gs.Variable))
    return False


_DATA_MOVEMENT = QRule(output="same-as-input")

CPU_RULES = MappingProxyType({
    "Conv": QRule(weight=1, weight_axis=0, bias=2, output="always", in_attention="as-is"),
    "Gemm": QRule(weight=1, weight_axis=_gemm_axis, bias=2, output="if-read",
                  in_attention="weights-only"),
    "MatMul": QRule(weight=1, weight_axis=1, output="if-read", in_attention="weights-only"),
    "Add": QRule(activations=(0, 1)),
    "Mul": QRule(activations=(0, 1), skip=_square),
    "Concat": QRule(activations=None),
    "GlobalAveragePool": QRule(),
    "AveragePool": QRule(),
    # onnxruntime's QLinearSigmoid / QLinearLeakyRelu (measured fused on x86): SiLU written
    # as x * Sigmoid(x) then runs Conv → Sigmoid → Mul in int8 end to end.
    "Sigmoid": QRule(),
    "LeakyRelu": QRule(),
    "MaxPool": _DATA_MOVEMENT,
    "Reshape": _DATA_MOVEMENT,
    "Flatten": _DATA_MOVEMENT,
    "Transpose": _DATA_MOVEMENT,
    "Squeeze": _DATA_MOVEMENT,
    "Unsqueeze": _DATA_MOVEMENT,
    "Resize": _DATA_MOVEMENT,
})

TENSORRT_RULES = MappingProxyType({
    "Conv": QRule(weight=1, weight_axis=0, output="never", skip=_tiny_conv, in_attention="as-is"),
    "ConvTranspose": QRule(weight=1, weight_axis=1, output="never", skip=_tiny_conv,
                           in_attention="as-is"),
    "Gemm": QRule(weight=1, weight_axis=_gemm_axis, output="never", skip=_gemv,
                  in_attention="as-is"),
    "MatMul": QRule(weight=1, weight_axis=1, output="never", skip=_gemv, in_attention="as-is"),
    "Add": QRule(activations=_residual_input, output="never"),
})


@dataclass(frozen=True)
class Target:
    """A backend: its name, its onnxruntime providers (in priority order) and their package.

    Attributes:
        name: "cpu", "cuda" or "tensorrt".
        providers: onnxruntime execution providers, most preferred first.
        package: The pip package that ships `providers[0]`, named in errors.
    """

    name: str
    providers: tuple[str, ...]
    package: str
    quantization: Mapping[str, QRule] = field(default_factory=dict)
    activation_dtype: type = np.uint8
    symmetric_activations: bool = False
    #: Whether the runtime multiplies uint8 activations by int8 weights in saturating 16-bit
    #: pairs on this machine (x86 without VNNI): then weights use 7 bits (`weight_bits`).
    saturating_u8s8: Callable[[], bool] = lambda: False
    #: Whether an op without weights fuses only when every input comes from an int8 unit
    #: (onnxruntime's QDQ selectors: ``DQ → op → Q`` with all inputs dequantized). TensorRT
    #: places Q/DQ on chosen inputs instead (R-B3: the skip input of a residual Add).
    int8_islands: bool = False

    @property
    def weight_bits(self) -> int:
        """Bits of int8 weights that the target's kernels multiply exactly.

        onnxruntime's u8s8 kernels on x86 without VNNI (AVX2's ``vpmaddubsw``) add two
        uint8×int8 products in a saturating int16: 255·127·2 = 64,770 overflows it, and the
        digits CNN measured 98.3 % instead of 99.3 % top-1 that way. With 7-bit weights
        (255·63·2 = 32,130) nothing saturates — onnxruntime's own `reduce_range`.
        """
        return 7 if self.saturating_u8s8() else 8

    @property
    def onnxruntime_kernels(self) -> bool:
        """Whether onnxruntime's own kernels run the graph (so its contrib ops are fine);
        TensorRT compiles the graph itself and leaves contrib ops to a slower fallback."""
        return self.providers[0] != "TensorrtExecutionProvider"

    def check_available(self) -> None:
        """Raise `TargetError` naming the package to install if the provider is missing."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.providers[0] not in available:
            raise TargetError(
                f"target '{self.name}' needs onnxruntime's {self.providers[0]}, which this "
                f"installation lacks (available: {', '.join(available)}); install "
                f"'{self.package}' instead of 'onnxruntime'")


@functools.cache
def x86_without_vnni() -> bool:
    """Whether this is an x86 CPU whose int8 dot products lack VNNI (AVX-512 VNNI, AVX-VNNI
    or AMX), read from /proc/cpuinfo's flags (Linux) or numpy's CPU feature table."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    vnni = {"avx512_vnni", "avx_vnni", "amx_int8"}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return not vnni & set(line.split(":", 1)[1].split())
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return not any(features.get(f) for f in ("AVX512_VNNI", "AVX512_CLX", "AVX_VNNI"))


TARGETS = {
    # uint8 activations: on x86 onnxruntime fuses int8 activations only after converting them
    # to uint8 itself, and measured slower than FP32 when given int8 (issue #4's figures).
    "cpu": Target("cpu", ("CPUExecutionProvider",), "onnxruntime", CPU_RULES, np.uint8, False,
                  saturating_u8s8=x86_without_vnni, int8_islands=True),
    # onnxruntime's CUDA EP has no fused int8 Conv/MatMul (R-A7): quantize for tensorrt instead.
    "cuda": Target("cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"), "onnxruntime-gpu"),
    "tensorrt": Target("tensorrt", ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                    "CPUExecutionProvider"), "onnxruntime-gpu (with TensorRT)",
                       TENSORRT_RULES, np.int8, True),
}


def get_target(target: Target | str) -> Target:
    """A `Target` from an object or its name.

    Raises:
        TargetError: for an unknown name, listing the known ones.
    """
    if isinstance(target, Target):
        return target
    try:
        return TARGETS[target]
    except KeyError:
        raise TargetError(f"unknown target '{target}'; known targets: {', '.join(TARGETS)}"
                          ) from None
