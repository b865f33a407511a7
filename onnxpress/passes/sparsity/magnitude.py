"""Unstructured magnitude pruning of Conv / Gemm / MatMul weights.

For a target sparsity ``s`` the pass zeroes the ``k = round(s·n)`` entries of smallest
``|w|`` (Han et al. 2015):

- ``scope="layer"``: per weight, ``n`` its size, so every layer ends at sparsity ``k/n``;
- ``scope="global"``: over all selected weights at once, ``n`` their total size, so one
  magnitude threshold is shared and layers with small weights lose more.

Ties are broken by position — a stable sort of ``|w|`` (flattened, weights concatenated in
graph order for the global scope) ranks equal magnitudes by index and the earlier ones are
pruned first — so exactly ``k`` entries are zeroed and the result is deterministic. The count
of zeros is then exactly ``k``, unless a weight held more zeros than that to start with.

Only input 1 of Conv / Gemm / MatMul is pruned, when it is a constant float initializer of
rank ≥ 2 (`onnxpress.passes.sparsity.weights`): never a bias, never a 1-D tensor. A weight
shared by several nodes is pruned once. Zeros alone do not speed up dense kernels; they shrink
the compressed file, and they are the starting point of sparse runtimes and of
reconstruction (`reconstruct`).

Lossy: outputs change; the digits model's accuracy after 30 % is pinned by the tests.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnxpress.errors import PassError
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.sparsity.weights import (
    WEIGHTED_OPS,
    Weight,
    as_patterns,
    find_weights,
    select,
)

SCOPES = ("global", "layer")

#: Protobuf cannot serialize a model past 2 GB, so larger ones get no zipped size.
MAX_SERIALIZED = (1 << 31) - 1


def zipped_size(model: Model) -> int | None:
    """Bytes of the serialized model after zlib (what pruning's zeros save on disk), or None
    for a model too large to serialize in one piece."""
    if model.nbytes >= MAX_SERIALIZED:
        return None
    return len(zlib.compress(model.to_onnx().SerializeToString()))


def smallest(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the `k` smallest of `magnitudes`, equal ones taken in index order."""
    return np.argsort(magnitudes.ravel(), kind="stable")[:k]


@dataclass(frozen=True)
class PruneMagnitude(Pass):
    """Zero the smallest-magnitude entries of Conv / Gemm / MatMul weights.

    Attributes:
        sparsity: Fraction of entries to zero, in (0, 1).
        scope: "global" (one threshold over all selected weights) or "layer" (the same
            fraction in each weight).
        exclude: Weight names, node names (globs) or op types to leave dense, e.g.
            ``("/head/*",)`` for a classifier. A pattern that names nothing warns.
        op_types: The op types whose weights are pruned (a subset of Conv, Gemm, MatMul).
    """

    name: ClassVar[str] = "prune-magnitude"
    exact: ClassVar[bool] = False

    sparsity: float = 0.5
    scope: str = "global"
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = WEIGHTED_OPS

    def __post_init__(self) -> None:
        """Validate the options before any model is touched."""
        if not 0 < self.sparsity < 1:
            raise PassError(f"{self.name}: sparsity must be in (0, 1), not {self.sparsity}")
        if self.scope not in SCOPES:
            raise PassError(f"{self.name}: scope must be one of {', '.join(SCOPES)}, not "
                            f"{self.scope!r}")
        object.__setattr__(self, "exclude", as_patterns(self.exclude, "exclude", self.name))
        op_types = as_patterns(self.op_types, "op_types", self.name)
        unknown = sorted(set(op_types) - set(WEIGHTED_OPS))
        if unknown or not op_types:
            raise PassError(f"{self.name}: op_types must be a non-empty subset of "
                            f"{', '.join(WEIGHTED_OPS)}; got {list(op_types)}")
        object.__setattr__(self, "op_types", op_types)

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Prune the selected weights in place (same initializers, same names).

        Stats: ``sparsity`` (zeros / entries over the pruned weights), ``layers``
        (``{weight: sparsity}``), ``zipped_bytes_before`` / ``_after`` (zlib of the serialized
        model), ``excluded`` and ``skipped`` (``{weight: reason}``).
        """
        found, skipped = find_weights(model, self.op_types)
        chosen = select(found, exclude=self.exclude, owner=self.name)
        kept = {id(w) for w in chosen}
        excluded = [w.name for w in found if id(w) not in kept]
        if not chosen:
            return PassResult(False, {"reason": f"no {'/'.join(self.op_types)} weight to prune "
                                                "(see skipped and excluded)",
                                      "excluded": excluded, "skipped": skipped})
        before = zipped_size(model)
        pruned = self._prune(chosen)
        for weight, values in zip(chosen, pruned, strict=True):
            weight.tensor.values = values
        zeros = {w.name: int(v.size - np.count_nonzero(v)) for w, v in
                 zip(chosen, pruned, strict=True)}
        total = sum(v.size for v in pruned)
        return PassResult(True, {
            "sparsity": sum(zeros.values()) / total,
            "layers": {w.name: zeros[w.name] / w.values.size for w in chosen},
            "zipped_bytes_before": before,
            "zipped_bytes_after": zipped_size(model),
            "excluded": excluded,
            "skipped": skipped,
        })

    def _prune(self, weights: list[Weight]) -> list[np.ndarray]:
        """The pruned copies of `weights`' arrays, in order."""
        arrays = [w.values for w in weights]
        if self.scope == "layer":
            doomed = [smallest(np.abs(a), round(self.sparsity * a.size)) for a in arrays]
        else:
            sizes = [a.size for a in arrays]
            flat = smallest(np.concatenate([np.abs(a).ravel() for a in arrays]),
                            round(self.sparsity * sum(sizes)))
            starts = np.cumsum([0, *sizes])
            doomed = [flat[(flat >= lo) & (flat < hi)] - lo
                      for lo, hi in itertools.pairwise(starts)]
        pruned = []
        for array, indices in zip(arrays, doomed, strict=True):
            out = array.copy().reshape(-1)
            out[indices] = 0
            pruned.append(out.reshape(array.shape))
        return pruned
