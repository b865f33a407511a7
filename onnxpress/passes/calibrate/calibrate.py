"""Calibrate: measure the range of each activation a quantizer will need, changing nothing.

The pass runs a probe copy of the model over ``ctx.data`` (`onnxpress.runtime.collect`),
streams every batch into one observer per tensor, turns each observer into a ``(min, max)``
range and stores the `CalibrationTable` in ``ctx.calibration`` for the quantizers:

- ``minmax``: the observed extrema (`MinMax`), exact; outliers stretch the range.
- ``percentile``: ``|x|`` clipped at its ``percentile``-th percentile (99.999 by default, as
  onnxruntime; 99.99 clips more).
- ``entropy``: TensorRT's KL-divergence threshold over 128 quantized bins.
- ``mse``: the threshold minimizing the expected squared error of symmetric int8.

The last three come from one `Histogram` of ``bins`` bins per tensor, so memory is
O(tensors × bins) and the ranges do not depend on ``batch_size`` or data order; the math is in
`onnxpress.passes.calibrate.observers`. Every clipped range is ``(-t, t)`` clamped into the
observed ``[min, max]``, so a ReLU output gets ``(0, t)``.

Which tensors: those of the quantization plan (`tensors_to_calibrate`), or an explicit
``tensors=`` list. A table already in the context (``optimize(..., calibration=...)``, a
saved JSON table or a TensorRT cache) is reused: only the tensors it lacks are measured and
added (the stats say how many were reused).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from onnxpress.errors import PassError, PreconditionError, TargetError
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, PassResult
from onnxpress.passes.calibrate.observers import Histogram, MinMax
from onnxpress.passes.calibrate.table import CalibrationTable, TensorRange
from onnxpress.passes.quantize.plan import plan
from onnxpress.runtime.collect import collect
from onnxpress.targets import TARGETS, Target, get_target

METHODS = ("minmax", "percentile", "entropy", "mse")

#: Levels of the int8 grid's positive half, for the entropy search (TensorRT's 128).
QUANTIZED_BINS = 128

def tensors_to_calibrate(model: Model, target: Target) -> list[str]:
    """The activations static quantization for `target` may need ranges for: the tensors of
    the widest quantization plan (`quantize/plan.py`: nothing declined as unprofitable,
    attention blocks treated like the rest), so calibration and Q/DQ insertion never
    disagree. Every narrower plan of quantize-static's options (the defaults, ``exclude``,
    ``op_types``, the fallbacks of mixed-precision) wraps a subset of these tensors.

    Raises:
        PreconditionError: the target has no int8 path to calibrate for.
    """
    if not target.quantization:
        raise PreconditionError(f"target '{target.name}' has no fused int8 kernels in "
                                "onnxruntime to calibrate for; quantize for 'tensorrt' or "
                                "'cpu' instead (run_on='cpu' runs the probe on the CPU)")
    return plan(model, target, skip_unprofitable=False, attention=False).tensors()


@dataclass(frozen=True)
class Calibrate(Pass):
    """Measure activation ranges on ``ctx.data`` into ``ctx.calibration``.

    Attributes:
        method: "minmax", "percentile", "entropy" or "mse".
        percentile: Percentile of ``|x|`` kept by method "percentile", in (0, 100].
        bins: Histogram bins (power of two ≥ 256) for the histogram methods.
        batch_size: Samples per inference batch; does not change the ranges.
        tensors: Tensor names to calibrate (None: `tensors_to_calibrate`).
        save: Path to write the table as JSON (None: keep it in the context only).
        max_outputs: Tensors per probe run, to bound memory on large models (None: all).
        memory_mb: Bound on the activations one probe run fetches, in MiB: the batch shrinks
            (and the tensors split over several probes) to stay under it; the ranges do not
            change. None: no bound.
        run_on: Target whose onnxruntime providers run the probe (None: the pipeline's), e.g.
            "cpu" to calibrate for TensorRT on a machine without it.
    """

    name: ClassVar[str] = "calibrate"
    exact: ClassVar[bool] = True

    method: str = "minmax"
    percentile: float = 99.999
    bins: int = 2048
    batch_size: int = 32
    tensors: tuple[str, ...] | None = None
    save: str | None = None
    max_outputs: int | None = None
    memory_mb: int | None = 256
    run_on: str | None = None

    def __post_init__(self) -> None:
        """Validate the options now, so a bad one fails before any data is read."""
        if self.method not in METHODS:
            raise PassError(f"calibrate: unknown method '{self.method}'; use one of "
                            f"{', '.join(METHODS)}")
        if not 0 < self.percentile <= 100:
            raise PassError(f"calibrate: percentile must be in (0, 100], not {self.percentile}")
        if self.bins < 2 * QUANTIZED_BINS or self.bins & (self.bins - 1):
            raise PassError(f"calibrate: bins must be a power of two ≥ {2 * QUANTIZED_BINS}, "
                            f"not {self.bins}")
        if self.batch_size < 1 or (self.max_outputs is not None and self.max_outputs < 1):
            raise PassError("calibrate: batch_size and max_outputs must be positive")
        if self.tensors is not None:
            if isinstance(self.tensors, str):
                raise PassError("calibrate: tensors must be a list of names, not one string")
            object.__setattr__(self, "tensors", tuple(self.tensors))
        if self.save is not None:
            object.__setattr__(self, "save", str(self.save))
        if self.run_on is not None and self.run_on not in TARGETS:
            raise PassError(f"calibrate: run_on must be one of {', '.join(TARGETS)}, not "
                            f"{self.run_on!r}")

    def requires(self, model: Model, ctx: Context) -> None:
        """Calibration needs sample inputs and an installed provider to run them."""
        if ctx.data is None:
            raise PreconditionError("calibrate needs data: pass data=... / --data FILE")
        try:
            self._runner(ctx).check_available()
        except TargetError as e:
            raise PreconditionError(f"{e}; or run calibration elsewhere, e.g. "
                                    "Calibrate(run_on='cpu'): ranges depend on the provider "
                                    "only through float rounding") from None

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Collect statistics, compute the ranges, set ``ctx.calibration`` (and save it)."""
        start = time.perf_counter()
        wanted = (list(self.tensors) if self.tensors is not None
                  else tensors_to_calibrate(model, ctx.target))
        known = ctx.calibration
        tensors = [t for t in wanted if known is None or t not in known]
        if not tensors:
            return PassResult(changed=False, stats={"reused": len(wanted), "tensors": 0})
        observers = {name: self._observer(name) for name in tensors}
        collected = collect(model, tensors, ctx.data, observers, target=self._runner(ctx),
                            batch_size=self.batch_size, max_outputs=self.max_outputs,
                            max_bytes=None if self.memory_mb is None else self.memory_mb << 20,
                            progress=ctx.progress)
        options = {"percentile": self.percentile} if self.method == "percentile" else {}
        if self.method != "minmax":
            options["bins"] = self.bins
        measured = {name: TensorRange(*self._range(observer), observer.summary())
                    for name, observer in observers.items()}
        table = (CalibrationTable(self.method, measured, options) if known is None
                 else CalibrationTable(known.method, {**known.ranges, **measured},
                                       known.options))
        ctx.calibration = table
        if self.save is not None:
            table.save(self.save)
        return PassResult(changed=False, stats={
            "method": self.method, "tensors": len(tensors), "reused": len(wanted) - len(tensors),
            "samples": collected.samples,
            "batches": collected.batches, "probes": collected.probes,
            "seconds": round(time.perf_counter() - start, 3)})

    def _runner(self, ctx: Context) -> Target:
        return get_target(self.run_on) if self.run_on is not None else ctx.target

    def _observer(self, tensor: str) -> MinMax | Histogram:
        return MinMax(tensor) if self.method == "minmax" else Histogram(self.bins, tensor)

    def _range(self, observer: MinMax | Histogram) -> tuple[float, float]:
        if self.method == "minmax":
            return observer.minmax()
        if self.method == "percentile":
            return observer.percentile(self.percentile)
        if self.method == "entropy":
            return observer.entropy(QUANTIZED_BINS)
        return observer.mse()
