"""Weight-only quantization: MatMul / Gemm weights and embedding tables as 4- or 8-bit blocks.

Activations stay float; only constant weights shrink. Every weight is viewed as ``[N, K]``
(rows = output channels or table rows, K = the reduction axis: `blockwise`) and quantized
block-wise along K, by round-to-nearest or by GPTQ (`gptq`, from ``H = XᵀX`` of the layer's
inputs, streamed through the `Gram` observer):

    MatMul   y = x · C           C is [K, N]:  W = Cᵀ
    Gemm     y = x · op(C) + c   op(C) = Cᵀ with transB (W = C), else C (W = Cᵀ)
    Gather   y = C[indices]      C is [V, D]:  W = C  (blocks along each row)

Emission depends on the target:

- ``cpu`` / ``cuda`` (onnxruntime's kernels) — ``com.microsoft.MatMulNBits(x, B, scales,
  zero_points)`` with ``B`` the packed ``[N, n_blocks, B·bits/8]`` bytes (no opset change);
  a Gemm's bias ``β·c`` becomes an ``Add``. Gemm with ``transA`` or ``α ≠ 1`` is left float
  (reported in ``skipped``). Embeddings on ``cpu`` become ``com.microsoft.GatherBlockQuantized``
  (float32 scales; onnxruntime 1.32's CUDA kernel takes float16/bfloat16 scales only, so on
  ``cuda`` tables take the standard form below).
- any other target (``tensorrt``) — the standard form: the integers as a ``uint4`` / ``uint8``
  initializer in the weight's own layout, one ``DequantizeLinear(block_size, axis = the K
  axis)`` feeding every reader, which is unchanged. This needs opset 21; the model is
  converted and checked first (`onnxpress.ir.opset.require_opset`).

Tied weights — one table read by a Gather and, transposed, by a Gemm (``transB``) or a
MatMul through ``Transpose`` — are quantized once with one orientation and stored once: in the
standard form one DequantizeLinear feeds both readers; with onnxruntime's ops the Gather reads
MatMulNBits' own ``[V, n_blocks, blob]`` bytes (``GatherBlockQuantized`` on 3-D data, then a
Reshape back to ``[..., D]``); only the small scale arrays are duplicated, because the two ops
want them in different shapes. Tied tables are rounded to nearest (GPTQ would minimise the
matrix product's error and move the embedding rows).

Lossy: outputs move by the weight rounding error; `runtime.compare` measures by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxpress.errors import PreconditionError
from onnxpress.ir import analyses
from onnxpress.ir.edit import dead_code, insert_before, replace_uses, toposort
from onnxpress.ir.model import Model
from onnxpress.ir.opset import require_opset
from onnxpress.ir.select import matches
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.calibrate.observers import Gram
from onnxpress.passes.quantize.blockwise import BlockQuantized, check, pack, round_to_nearest
from onnxpress.passes.quantize.gptq import gptq_quantize
from onnxpress.passes.quantize.static import QDQ_OPS
from onnxpress.runtime.collect import collect

MS_DOMAIN = "com.microsoft"
#: Ops that mean the model already holds quantized weights.
QUANTIZED_OPS = QDQ_OPS | {"MatMulNBits", "GatherBlockQuantized"}
#: DequantizeLinear's `block_size` and the 4-bit integer types.
BLOCKED_DQ_OPSET = 21
METHODS = ("rtn", "gptq")
FORMATS = ("auto", "matmulnbits", "qdq")


@dataclass
class _Use:
    """One reader of a constant weight, and how the constant maps onto ``[N, K]``.

    Attributes:
        node: The MatMul / Gemm / Gather (for a MatMul through Transpose: the MatMul).
        kind: "matmul" (MatMul or Gemm) or "gather".
        rows_first: Whether the constant is already ``[N, K]`` (else it is ``[K, N]``).
        transpose: The Transpose node between the constant and a tied MatMul, if any.
    """

    node: gs.Node
    kind: str
    rows_first: bool
    transpose: gs.Node | None = None


@dataclass
class _Weight:
    """A constant and the uses this pass rewrites."""

    constant: gs.Constant
    uses: list[_Use] = field(default_factory=list)

    @property
    def rows_first(self) -> bool:
        return self.uses[0].rows_first

    @property
    def matrix(self) -> np.ndarray:
        """The weight as ``[N, K]``."""
        values = np.asarray(self.constant.values)
        return values if self.rows_first else values.T

    @property
    def tied(self) -> bool:
        return len({u.kind for u in self.uses}) > 1


def _float_matrix(tensor: gs.Tensor) -> bool:
    return (isinstance(tensor, gs.Constant) and np.asarray(tensor.values).ndim == 2
            and np.asarray(tensor.values).dtype in (np.float32, np.float64))


def _matmul_use(node: gs.Node) -> tuple[gs.Constant, _Use] | str | None:
    """The constant weight of a MatMul / Gemm and its orientation, a skip reason, or None."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is not None and not isinstance(weight, gs.Constant) and weight.inputs:
        source = weight.inputs[0]
        if (source.op == "Transpose" and list(source.attrs.get("perm", [1, 0])) == [1, 0]
                and _float_matrix(source.inputs[0]) and node.op == "MatMul"):
            return source.inputs[0], _Use(node, "matmul", True, source)
    if weight is None or not _float_matrix(weight):
        return None
    if node.op == "Gemm":
        if node.attrs.get("transA", 0) or float(node.attrs.get("alpha", 1.0)) != 1.0:
            return "Gemm with transA or alpha != 1"
        return weight, _Use(node, "matmul", bool(node.attrs.get("transB", 0)))
    return weight, _Use(node, "matmul", False)


@dataclass(frozen=True)
class QuantizeWeights(Pass):
    """Store MatMul / Gemm weights (and embedding tables) as 4- or 8-bit blocks.

    Attributes:
        bits: 4 or 8.
        block_size: Values per block along the reduction axis (a power of two >= 16).
        symmetric: Symmetric grid (zero point 2^(bits-1)); asymmetric otherwise.
        method: "rtn" (round to nearest) or "gptq" (needs data: it collects ``XᵀX``).
        embeddings: Also quantize Gather tables (per row, in blocks along the row).
        embedding_bits: Width of the tables (default: `bits`).
        exclude: Node names, op types or glob patterns to keep float.
        percdamp: GPTQ damping, a fraction of the mean diagonal of ``XᵀX``.
        act_order: GPTQ in decreasing order of input activity.
        clip_search: Per-block clipping ratio by least squared error.
        accuracy_level: MatMulNBits' ``accuracy_level`` (0: unset; 4 quantizes activations to
            int8 inside the kernel: faster, but has flipped argmaxes, microsoft/onnxruntime#29849).
        format: "auto" (by target), "matmulnbits" (onnxruntime's ops) or "qdq" (standard).
        batch_size: Samples per batch when collecting ``XᵀX``.
    """

    name: ClassVar[str] = "quantize-weights"
    exact: ClassVar[bool] = False
    bits: int = 4
    block_size: int = 32
    symmetric: bool = False
    method: str = "rtn"
    embeddings: bool = True
    embedding_bits: int | None = None
    exclude: tuple[str, ...] = ()
    percdamp: float = 0.01
    act_order: bool = True
    clip_search: bool = True
    accuracy_level: int = 0
    format: str = "auto"
    batch_size: int = 32

    def __post_init__(self) -> None:
        """Reject options no runtime can read, before any model is touched."""
        check(self.bits, self.block_size)
        check(self.embedding_bits or self.bits, self.block_size)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got '{self.method}'")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got '{self.format}'")

    def requires(self, model: Model, ctx: Context) -> None:
        """GPTQ needs sample inputs to measure ``XᵀX``."""
        if self.method == "gptq" and ctx.data is None:
            raise PreconditionError("quantize-weights with method='gptq' needs sample inputs "
                                    "for XᵀX: give data=... (--data FILE), or method='rtn'")

    def emitted_format(self, ctx: Context) -> str:
        """"matmulnbits" on targets whose onnxruntime kernels run the graph, else "qdq"."""
        if self.format != "auto":
            return self.format
        return "matmulnbits" if ctx.target.onnxruntime_kernels else "qdq"

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Quantize every eligible weight in place."""
        if any(n.op in QUANTIZED_OPS for n in model.graph.nodes):
            return PassResult(False, {"skipped": "model is already quantized"})
        fmt = self.emitted_format(ctx)
        weights, skipped = self._weights(model)
        if not weights:
            return PassResult(False, {"skipped": skipped} if skipped else {})
        gather_block = ctx.target.name == "cpu"
        raised = False
        if fmt == "qdq" or (not gather_block and any(u.kind == "gather" for w in weights
                                                     for u in w.uses)):
            raised = require_opset(model, BLOCKED_DQ_OPSET, "DequantizeLinear with block_size")
            if raised:  # the conversion rebuilt the graph: find the weights in the new one
                weights, skipped = self._weights(model)
        if any(w.tied for w in weights):
            model.analysis(analyses.shapes)  # the Gather's index rank, before any edit
        hessians = self._hessians(model, weights, ctx) if self.method == "gptq" else {}
        before = sum(int(np.asarray(w.constant.values).nbytes) for w in weights)
        after = 0
        for weight in weights:
            quantized = self._quantize(weight, hessians)
            if fmt == "qdq":
                after += self._emit_dequantize(model, weight, quantized)
            else:
                after += self._emit_contrib(model, weight, quantized, gather_block)
        dead_code(model.graph)
        toposort(model.graph)
        stats = {"format": fmt, "bits": self.bits, "block_size": self.block_size,
                 "method": self.method, "weight_bytes": before, "quantized_bytes": after,
                 "opset_raised": raised}
        for weight in weights:
            for use in weight.uses:
                stats[use.node.op] = stats.get(use.node.op, 0) + 1
        stats["tied"] = sum(w.tied for w in weights)
        if skipped:
            stats["skipped"] = skipped
        return PassResult(True, stats)

    # ----------------------------------------------------------------------------------------
    # Selection
    def _excluded(self, node: gs.Node) -> bool:
        return matches(node, self.exclude)

    def _weights(self, model: Model) -> tuple[list[_Weight], dict[str, str]]:
        """The constants to quantize with their uses, in graph order, and the nodes skipped."""
        found: dict[int, _Weight] = {}
        skipped: dict[str, str] = {}
        for node in model.graph.nodes:
            if self._excluded(node):
                continue
            if node.op in ("MatMul", "Gemm"):
                use = _matmul_use(node)
            elif node.op == "Gather" and self.embeddings and _float_matrix(node.inputs[0]) \
                    and int(node.attrs.get("axis", 0)) == 0:
                odd = node.inputs[0].values.shape[1] % 2 and (self.embedding_bits or self.bits) == 4
                use = ("4-bit rows of odd width" if odd
                       else (node.inputs[0], _Use(node, "gather", True)))
            else:
                continue
            if isinstance(use, str):
                skipped[node.name] = use
                continue
            if use is None:
                continue
            constant, how = use
            weight = found.setdefault(id(constant), _Weight(constant))
            if weight.uses and weight.rows_first != how.rows_first:
                skipped[node.name] = (f"reads '{constant.name}' in another orientation than "
                                      f"'{weight.uses[0].node.name}'")
                continue
            weight.uses.append(how)
        return list(found.values()), skipped

    # ----------------------------------------------------------------------------------------
    # Quantization
    def _hessians(self, model: Model, weights: list[_Weight], ctx: Context
                  ) -> dict[str, np.ndarray]:
        """``XᵀX`` of every input read by a MatMul / Gemm weight, in one pass over the data."""
        names = list(dict.fromkeys(u.node.inputs[0].name for w in weights if not w.tied
                                   for u in w.uses if u.kind == "matmul"))
        if not names:
            return {}
        grams = {name: Gram(axis=-1, name=name) for name in names}
        collect(model, names, ctx.data, grams, target="cpu", batch_size=self.batch_size,
                progress=ctx.progress)
        return {name: gram.xtx for name, gram in grams.items()}

    def _quantize(self, weight: _Weight, hessians: dict[str, np.ndarray]) -> BlockQuantized:
        gather = any(u.kind == "gather" for u in weight.uses)
        bits = (self.embedding_bits or self.bits) if gather else self.bits
        matrix = weight.matrix
        # A block longer than the row would only store padding: the smallest power of two
        # (>= 16) that covers K instead.
        block = min(self.block_size, max(16, 1 << (matrix.shape[1] - 1).bit_length()))
        if hessians and not gather:
            # A weight read by several layers: the sum of their objectives.
            hessian = sum(hessians[u.node.inputs[0].name] for u in weight.uses)
            return gptq_quantize(matrix, hessian, bits, block, self.symmetric,
                                 percdamp=self.percdamp, act_order=self.act_order,
                                 clip_search=self.clip_search)
        return round_to_nearest(matrix, bits, block, self.symmetric,
                                clip_search=self.clip_search)

    # ----------------------------------------------------------------------------------------
    # Emission: standard DequantizeLinear
    def _emit_dequantize(self, model: Model, weight: _Weight, q: BlockQuantized) -> int:
        """One blocked DequantizeLinear in the constant's layout, feeding every use."""
        int_type = onnx.TensorProto.UINT4 if q.bits == 4 else onnx.TensorProto.UINT8
        values, scale, zero = q.values, q.scale, q.zero_point
        if not weight.rows_first:
            values, scale, zero = values.T, scale.T, zero.T
        hint = weight.constant.name
        data = _typed_constant(model, f"{hint}_q", values, int_type)
        zp = _typed_constant(model, f"{hint}_zp", zero, int_type)
        out = model.variable(f"{hint}_dq", dtype=np.float32, shape=list(values.shape))
        node = model.node("DequantizeLinear", [data, model.constant(f"{hint}_scale", scale), zp],
                          [out], hint=f"{hint}_dq",
                          attrs={"axis": 1 if weight.rows_first else 0,
                                 "block_size": q.block_size})
        readers = [u.transpose or u.node for u in weight.uses]
        first = min(readers, key=model.graph.nodes.index)
        insert_before(model.graph, first, [node])
        for reader in readers:
            for i, tensor in enumerate(reader.inputs):
                if tensor is weight.constant:
                    reader.inputs[i] = out
        return _bytes(values.size, q.bits) + scale.nbytes + _bytes(zero.size, q.bits)

    # ----------------------------------------------------------------------------------------
    # Emission: onnxruntime's MatMulNBits / GatherBlockQuantized
    def _emit_contrib(self, model: Model, weight: _Weight, q: BlockQuantized,
                      gather_block: bool) -> int:
        model.opsets.setdefault(MS_DOMAIN, 1)
        hint = weight.constant.name
        packed = None
        size = 0
        if any(u.kind == "matmul" for u in weight.uses):
            packed = model.constant(f"{hint}_nbits", q.packed())
            scales = model.constant(f"{hint}_scales", q.scale.reshape(-1))
            zeros = model.constant(f"{hint}_zp", q.packed_zero_points())
            size += packed.values.nbytes + scales.values.nbytes + zeros.values.nbytes
            for use in weight.uses:
                if use.kind == "matmul":
                    self._matmul_nbits(model, use, q, packed, scales, zeros)
        gathers = [u for u in weight.uses if u.kind == "gather"]
        if gathers and not gather_block:
            # onnxruntime's CUDA GatherBlockQuantized wants float16 scales: the standard form
            # (`run` raised the opset before any edit).
            return size + self._emit_dequantize(model, _Weight(weight.constant, gathers), q)
        for use in gathers:
            size += self._gather_block(model, use, q, packed, hint)
        return size

    def _matmul_nbits(self, model: Model, use: _Use, q: BlockQuantized, packed: gs.Constant,
                      scales: gs.Constant, zeros: gs.Constant) -> None:
        node = use.node
        n = q.q.shape[0]
        hint = node.name or "matmul"
        out = model.variable(f"{hint}_nbits", dtype=np.float32)
        new = [model.node("MatMulNBits", [node.inputs[0], packed, scales, zeros], [out],
                          hint=f"{hint}_nbits", domain=MS_DOMAIN,
                          attrs={"K": q.k, "N": n, "bits": q.bits, "block_size": q.block_size,
                                 "accuracy_level": self.accuracy_level})]
        bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 else None
        if bias is not None and not bias.is_empty():
            beta = float(node.attrs.get("beta", 1.0))
            if beta != 1.0:
                factor = model.constant(f"{hint}_beta", np.array(beta, np.float32))
                scaled = model.variable(f"{hint}_bias_scaled", dtype=np.float32)
                new.append(model.node("Mul", [bias, factor], [scaled], hint=f"{hint}_beta"))
                bias = scaled
            biased = model.variable(f"{hint}_biased", dtype=np.float32)
            new.append(model.node("Add", [out, bias], [biased], hint=f"{hint}_bias"))
            out = biased
        insert_before(model.graph, node, new)
        replace_uses(model.graph, node.outputs[0], out, graph_outputs=True)

    def _gather_block(self, model: Model, use: _Use, q: BlockQuantized,
                      shared: gs.Constant | None, hint: str) -> int:
        """GatherBlockQuantized on 2-D packed rows, or on MatMulNBits' 3-D bytes when tied."""
        node = use.node
        rank = None if node.inputs[1].shape is None else len(node.inputs[1].shape)
        share = shared is not None and q.k == q.n_blocks * q.block_size and rank is not None
        attrs = {"gather_axis": 0, "block_size": q.block_size, "bits": q.bits}
        out = node.outputs[0]
        if share:
            data, size = shared, 0
            scale = model.constant(f"{hint}_row_scales", q.scale[..., None])
            zero = model.constant(f"{hint}_row_zp", q.zero_point[..., None])
            attrs["quantize_axis"] = 2
            gathered = model.variable(f"{hint}_blocks", dtype=np.float32)
        else:
            data = model.constant(f"{hint}_rows", pack(q.values, q.bits))
            scale = model.constant(f"{hint}_row_scales", q.scale)
            zero = model.constant(f"{hint}_row_zp", pack(q.zero_point, q.bits))
            attrs["quantize_axis"] = 1
            gathered = model.variable(f"{hint}_gathered", dtype=np.float32)
            size = data.values.nbytes
        new = [model.node("GatherBlockQuantized", [data, node.inputs[1], scale, zero],
                          [gathered], hint=f"{node.name}_blockq", domain=MS_DOMAIN, attrs=attrs)]
        if share:
            rows = model.variable(f"{hint}_rows", dtype=np.float32)
            shape = model.constant(f"{hint}_row_shape", np.array([0] * rank + [q.k], np.int64))
            new.append(model.node("Reshape", [gathered, shape], [rows], hint=f"{hint}_unblock"))
            gathered = rows
        insert_before(model.graph, node, new)
        replace_uses(model.graph, out, gathered, graph_outputs=True)
        return size + scale.values.nbytes + zero.values.nbytes




def _typed_constant(model: Model, hint: str, values: np.ndarray, onnx_type: int) -> gs.Constant:
    """An initializer of an ONNX type numpy lacks (uint4), packed by onnx itself.

    graphsurgeon would write one byte per 4-bit value; a TensorProto built by
    ``onnx.helper.make_tensor`` and held lazily is exported as it is.
    """
    if onnx_type == onnx.TensorProto.UINT8:
        return model.constant(hint, values.astype(np.uint8))
    name = model.fresh_name(hint)
    raw = pack(np.asarray(values).reshape(-1), 4).tobytes()  # ONNX: first value, low nibble
    tensor = onnx.helper.make_tensor(name, onnx_type, list(values.shape), raw, raw=True)
    return gs.Constant(name, LazyValues(tensor))


def _bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8
