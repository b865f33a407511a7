"""`fuse`: cleanup and every exact fusion, repeated to a fixed point.

Each round runs `cleanup` first, then the fusions in `FUSIONS` order:

- cleanup turns Constant nodes into initializers (rules then see exporters' weights) and
  removes the Identity / Dropout / no-op Reshape an exporter may leave between a Conv and its
  BatchNormalization;
- fuse-transposes and fuse-gemm run before fuse-batchnorm because they create the producers BN
  folds into: a cancelled Transpose pair puts BN right after its Conv, and MatMul + bias Add
  becomes a Gemm that BN folds into. fuse-batchnorm turns a BN with no such producer into
  Mul + Add at once, and nothing folds that pair back into a weight;
- fuse-batchnorm's MatMul case yields MatMul + Add, which fuse-gemm fuses in the next round;
- the Pad, LayerNorm, GELU and activation fusions neither create nor consume those producers.

Rounds repeat until one changes nothing (see `onnxpress.passes.sequence`). Every inner pass
is exact, so `fuse` is too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from onnxpress.passes.base import Pass
from onnxpress.passes.cleanup.pipeline import Cleanup
from onnxpress.passes.fusion.activations import FuseActivations
from onnxpress.passes.fusion.batchnorm import FuseBatchNorm
from onnxpress.passes.fusion.gelu import FuseGelu
from onnxpress.passes.fusion.gemm import FuseGemm
from onnxpress.passes.fusion.layernorm import FuseLayerNorm
from onnxpress.passes.fusion.pad import FusePad
from onnxpress.passes.fusion.transpose import FuseTransposes
from onnxpress.passes.sequence import Composite

#: The fusions of one round, in order (after cleanup).
FUSIONS: tuple[Pass, ...] = (FuseTransposes(), FuseGemm(), FuseBatchNorm(), FusePad(),
                             FuseLayerNorm(), FuseGelu(), FuseActivations())


@dataclass(frozen=True)
class Fuse(Composite):
    """Run cleanup and every exact fusion until nothing changes."""

    name: ClassVar[str] = "fuse"
    max_rounds: int = 8

    def children(self) -> tuple[Pass, ...]:
        """cleanup, then `FUSIONS`."""
        return (Cleanup(), *FUSIONS)
