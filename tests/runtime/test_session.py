"""onnxruntime sessions: targets, options and errors, on a real onnxruntime."""

import numpy as np
import onnxruntime as ort
import pytest

from onnxpress.errors import ModelLoadError, TargetError
from onnxpress.runtime.session import session
from onnxpress.testing import make_model

MODEL = make_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }""")


@pytest.mark.parametrize("given", ["model", "path", "bytes"])
def test_session_runs_the_model_from_any_form(given, tmp_path):
    forms = {"model": lambda: MODEL, "path": lambda: MODEL.save(tmp_path / "m.onnx"),
             "bytes": lambda: MODEL.to_onnx().SerializeToString()}
    x = np.array([[-1, 0, 2]], dtype=np.float32)
    (y,) = session(forms[given]()).run(None, {"x": x})
    np.testing.assert_array_equal(y, [[0, 0, 2]])


def test_threads_and_optimization_level_reach_onnxruntime():
    options = session(MODEL, threads=1, optimize=False).get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError, match="unknown target 'tpu'; known targets: cpu, cuda"):
        session(MODEL, "tpu")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="CUDA is available here")
def test_cuda_without_its_provider_names_the_package_to_install():
    with pytest.raises(TargetError, match="install 'onnxruntime-gpu'"):
        session(MODEL, "cuda")


def test_model_onnxruntime_rejects_raises_model_load_error():
    custom = make_model("""<ir_version: 8, opset_import: ["": 17, "com.example": 1]>
        g (float[N] x) => (float[N] y) { y = com.example.Foo(x) }""")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load the model.*Foo"):
        session(custom)
