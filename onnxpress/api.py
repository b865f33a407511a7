"""`optimize()`: the one-call entry point.

It normalizes what the user gave (a path, ModelProto, gs.Graph or Model; passes as objects or
registry names; data as a path, arrays or an iterable), copies the model once so the user's
object and file are never touched, builds the `Context` (with the untouched copy as the
reference model) and runs the `PassManager`. The result carries `.report`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from onnxpress.ir.io import ModelLike, load
from onnxpress.ir.model import Model
from onnxpress.passes.base import Context, Pass, resolve
from onnxpress.passes.calibrate.table import CalibrationTable
from onnxpress.passes.manager import Instrument, PassManager, Verify
from onnxpress.runtime.data import as_data_source
from onnxpress.targets import Target, get_target


def optimize(model: ModelLike, passes: Sequence[Pass | str] = ("cleanup",), *, data=None,
             target: Target | str = "cpu", verify: Verify = "structure",
             instruments: Sequence[Instrument] = (), progress=None,
             calibration: CalibrationTable | str | os.PathLike | None = None) -> Model:
    """Run `passes` on a copy of `model` and return the optimized copy.

    Args:
        model: A path, bytes, onnx.ModelProto, gs.Graph or `Model`; never modified.
        passes: Pass objects or registry names (a recipe is just such a list).
        data: Sample inputs: a `.npz` path, a folder of `.npy`, a dict of arrays, an iterable
            of feed dicts or a `DataSource`. Checked against the model's inputs.
        target: "cpu", "cuda", "tensorrt" or a `Target`.
        verify: "off", "structure" (after every pass that changed the model) or "numeric"
            (also compare outputs before/after every exact pass with onnxruntime).
        instruments: Hooks run around each pass (e.g. `DumpAfterEach`).
        progress: A progress sink for long passes (see `Context.progress`).
        calibration: A `CalibrationTable` or the path of a saved one (onnxpress JSON or a
            TensorRT cache) for the quantizers; a calibrate pass then measures only the
            tensors it lacks.

    Returns:
        The optimized `Model`, with `.report` describing every pass run.
    """
    if isinstance(passes, str | Pass):
        passes = [passes]
    pipeline = [resolve(p) for p in passes]
    working = load(model)
    ctx = Context(target=get_target(target),
                  data=as_data_source(data, working) if data is not None else None,
                  reference_loader=lambda: load(model))
    if progress is not None:
        ctx.progress = progress
    if calibration is not None:
        ctx.calibration = (calibration if isinstance(calibration, CalibrationTable)
                           else CalibrationTable.read(calibration))
    working.report = PassManager(pipeline, verify=verify, instruments=instruments).run(working, ctx)
    return working
