"""The development zoo's real exports load, check, run, and survive cleanup unchanged.

Each model of `zoo_real.ZOO_MODELS` (committed under ``tests/models/zoo``): onnxpress loads
it, ``onnx.checker`` accepts it, onnxruntime runs it on its held-out inputs with outputs of
the declared shape and finite values, the FP32 model is still what was trained (its task
metric against itself is 1 and outputs are not constant), and ``optimize(path,
["cleanup"])`` keeps every output within rtol 1e-4 / atol 1e-5 of the original — the
exact-pass property on real exports (Constant-node weights, OneHot, LSTM, quantized ops,
static batch 1).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from zoo_real import ZOO_MODELS, ZooModel

import onnxpress as ox
from onnxpress.runtime.data import DataSource
from onnxpress.testing import assert_same_outputs, run

#: Eval samples used per model here (the benchmark uses all of them).
N_TEST = 8


def _feeds(zm: ZooModel, model: ox.Model) -> list[dict[str, np.ndarray]]:
    """The first N_TEST eval samples in batches the model accepts (1 for a static batch)."""
    arrays = {k: v[:N_TEST] for k, v in zm.evaluation().items()}
    static = all(isinstance(t.shape[0], int) for t in model.graph.inputs)
    return list(DataSource.from_arrays(arrays).batches(1 if static else N_TEST))


@pytest.fixture(params=sorted(ZOO_MODELS), scope="module")
def zoo_model(request) -> ZooModel:
    zm = ZOO_MODELS[request.param]
    if not zm.available():
        pytest.skip(f"{zm.path} or its data is not built: python models/build_zoo.py {zm.name}")
    return zm


def test_loads_checks_and_runs(zoo_model: ZooModel) -> None:
    model = ox.load(zoo_model.path)
    onnx.checker.check_model(onnx.load(zoo_model.path), full_check=True)
    assert [t.name for t in model.graph.outputs] == list(zoo_model.outputs)
    for feed in _feeds(zoo_model, model):
        for (name, kind), out in zip(zoo_model.outputs.items(), run(model, feed), strict=True):
            assert np.isfinite(out).all(), name
            assert out.shape[0] == len(next(iter(feed.values())))
            assert out.std() > 1e-3, f"{name} is constant: the model is not trained"
            if kind == "map":
                assert 0 <= out.min() and out.max() <= 1


def test_calibration_data_fits(zoo_model: ZooModel) -> None:
    model = ox.load(zoo_model.path)
    source = DataSource.from_npz(zoo_model.calib_path).check(model)
    evals = DataSource.from_npz(zoo_model.eval_path).check(model)
    # Large inputs keep as many samples as fit in a 2 MB file (models/build_zoo.py): yolo 8.
    assert len(source) >= 8 and len(evals) >= 8
    # Held-out means held out: no eval sample equals a calibration sample.
    (calib,), (held,) = source.arrays.values(), evals.arrays.values()
    n = min(16, len(held))
    assert not any((held[:n, None] == calib[None]).reshape(n, len(calib), -1).all(-1).any(1))


def test_cleanup_keeps_outputs(zoo_model: ZooModel) -> None:
    cleaned = ox.optimize(zoo_model.path, ["cleanup"])
    reference = ox.load(zoo_model.path)
    assert_same_outputs(reference, cleaned, _feeds(zoo_model, reference))
