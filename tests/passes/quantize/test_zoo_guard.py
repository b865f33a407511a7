"""int8-cpu on every zoo model: within budget and not slower than FP32, or a clear refusal.

The first wave's failures were silent: a detector left float at 1.0× latency, a byte-level
classifier collapsed to 4 % agreement, both reported as success. Here each real zoo model
(`zoo_real.ZOO_MODELS`) goes through the recipe, and exactly one of two things may happen:

- it succeeds, and then on the model's *held-out* inputs (never seen by calibration or the
  guard) every output keeps cosine ≥ 0.98 and class outputs top-1 agreement ≥ 0.98 against
  FP32, the guard's recorded latency ratio is within its limit, and the report says how much
  onnxruntime fused;
- it stops with `GuardError`, whose message carries the measured numbers.

(The guard's own budget is 0.99 on its held-back calibration samples; 0.98 on unseen data
leaves room for sampling, not for collapse.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from zoo_real import ZOO_MODELS

import onnxpress as ox
from onnxpress.errors import GuardError
from onnxpress.recipes import RECIPES
from onnxpress.runtime.compare import compare
from onnxpress.runtime.guard import Reference

BUILT = sorted(name for name, zm in ZOO_MODELS.items() if zm.available())


@pytest.mark.parametrize("name", BUILT)
def test_int8_cpu_is_within_budget_and_pays_or_refuses_with_numbers(name):
    zm = ZOO_MODELS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = ox.optimize(zm.path, RECIPES["int8-cpu"], data=zm.calibration())
        except GuardError as e:
            message = str(e)
            assert ("cosine" in message and "misses the accuracy budget" in message) or (
                "does not pay here" in message and "x the float model's latency" in message)
            return
    record = model.report["mixed-precision"]
    assert record.stats["latency_vs_float"] <= 1.05
    assert "fused" in record.stats.get("onnxruntime", "fused")
    fp32 = ox.load(zm.path)
    feeds = [{k: v[i:i + 1] for k, v in zm.evaluation().items()}
             for i in range(len(next(iter(zm.evaluation().values()))))]
    measured = Reference(fp32, feeds).measure(model)
    assert all(o.cosine >= 0.98 for o in measured.outputs), measured.summary()
    assert all(o.top1_agreement >= 0.98 for o in measured.outputs
               if o.name in measured.class_like), measured.summary()
    assert compare(zm.path, model, zm.evaluation()).samples == len(feeds)
    assert np.isfinite([o.snr_db for o in measured.outputs]).all()
