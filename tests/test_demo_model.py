"""The embedded digits model: exact passes keep its accuracy exactly."""

import numpy as np
import pytest

import onnxpress as ox
from onnxpress import demo
from onnxpress.testing import run


def _predictions(model) -> np.ndarray:
    return run(model, {"input": demo.test_data().arrays["input"]})[0].argmax(axis=1)


@pytest.mark.parametrize("passes", [["cleanup"], ["fuse"]], ids=str)
def test_exact_pipelines_keep_every_prediction(passes):
    original = _predictions(demo.model_path())
    optimized = ox.optimize(demo.model_path(), passes, verify="numeric")
    np.testing.assert_array_equal(_predictions(optimized), original)
    verified = [r.verified for _, r in optimized.report.walk() if r.changed and not r.children]
    # every change was compared (cleanup finds nothing to change in the demo model)
    assert set(verified) <= {"numeric"} and bool(verified) == optimized.report.records[0].changed
    accuracy = float(np.mean(original == demo.test_labels()))
    assert accuracy == pytest.approx(demo.facts()["fp32_test_top1"])
