"""Per-channel statistics of chosen activations on the pipeline's data.

The accuracy passes (smoothquant, absorb-bias, bias-correction) each need a per-channel
statistic of a few activations — abs-max, minimum, mean — measured on ``ctx.data`` with the
model as it is at that point of the pipeline. This runs one `collect` probe with a
`PerChannel` observer per tensor, so memory is O(channels) per tensor and the caller's model
is untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnxpress.errors import PreconditionError
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context
from onnxpress.passes.calibrate.observers import PerChannel
from onnxpress.runtime.collect import collect


def require_data(ctx: Context, pass_name: str) -> None:
    """Raise the precondition error of a pass that measures activations on ``ctx.data``."""
    if ctx.data is None:
        raise PreconditionError(f"{pass_name} measures activations on sample inputs: pass "
                                "data=... / --data FILE")


def channel_statistics(model: Model, ctx: Context, axes: Mapping[str, int], *,
                       batch_size: int = 32) -> dict[str, PerChannel]:
    """`PerChannel` statistics of each tensor in `axes` (name → channel axis) over ``ctx.data``.

    Args:
        model: The model as it is now; not modified.
        ctx: The pipeline context (data, progress).
        axes: Tensor name → its channel axis.
        batch_size: Samples per inference batch; does not change the statistics beyond
            float rounding of the sums.
    """
    observers = {name: PerChannel(axis, name) for name, axis in axes.items()}
    if observers:
        # On the cpu whatever the target: float statistics depend on the provider only
        # through rounding, and the cpu provider is always there.
        collect(model, list(observers), ctx.data, observers, target="cpu",
                batch_size=batch_size, progress=ctx.progress)
    return observers
