"""`onnxpress optimize` with the quantization recipes, run through `main([...])`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxpress import demo
from onnxpress.cli import main
from onnxpress.passes.calibrate.table import CalibrationTable
from onnxpress.runtime.compare import compare

CALIBRATION = demo.model_path().with_name("digits_calib.npz")


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """Tables as wide as they need, so long tmp paths are not folded over lines."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def files(tmp_path):
    """Private copies named as in the issue: demo.onnx and calib.npz."""
    model = shutil.copy(demo.model_path(), tmp_path / "demo.onnx")
    data = shutil.copy(CALIBRATION, tmp_path / "calib.npz")
    return Path(model), Path(data)


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def zero_points(path: Path) -> list[np.ndarray]:
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    return [inits[n.input[2]] for n in proto.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_int8_cpu_with_entropy_saves_the_table_and_prints_the_fusion(capsys, files):
    model, data = files
    out, table = model.with_name("out.onnx"), model.with_name("table.json")
    before = model.read_bytes()
    status, stdout, stderr = run(capsys, "optimize", model, "-o", out, "--recipe", "int8-cpu",
                                 "--data", data, "--calibration", "entropy",
                                 "--save-calibration", table, "--allow-slower")
    assert status == 0, stderr
    assert model.read_bytes() == before  # the input file is never changed
    loaded = CalibrationTable.load(table)
    assert loaded.method == "entropy" and loaded.options["bins"] == 2048
    assert "input" in loaded and len(loaded) >= 13  # the plan's tensors (tensors_to_calibrate)
    assert all(np.isfinite([r.min, r.max]).all() and r.min <= r.max
               for r in loaded.ranges.values())
    assert "method=entropy" in stdout
    assert "onnxruntime: 100% fused" in stdout and "QLinearConv×7" in stdout
    assert f"wrote {out}" in stdout
    result = compare(demo.model_path(), out, demo.test_data(), labels=demo.test_labels())
    assert result.reference_accuracy - result.candidate_accuracy <= 0.005
    assert any(z.dtype == np.uint8 for z in zero_points(out))


def test_saved_table_matches_what_the_model_was_quantized_with(capsys, files):
    model, data = files
    out, table = model.with_name("out.onnx"), model.with_name("table.json")
    assert run(capsys, "optimize", model, "-o", out, "--recipe", "int8-cpu", "--data", data,
               "--save-calibration", table, "--allow-slower")[0] == 0
    loaded = CalibrationTable.load(table)
    assert loaded.method == "percentile"  # the recipe's own method when not overridden
    proto = onnx.load(str(out))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    (q,) = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"]
    lo, hi = loaded["input"]
    np.testing.assert_allclose(inits[q.input[1]], (max(hi, 0) - min(lo, 0)) / 255, rtol=1e-6)


def test_int8_tensorrt_has_only_zero_zero_points(capsys, files):
    model, data = files
    out = model.with_name("trt.onnx")
    status, stdout, stderr = run(capsys, "optimize", model, "-o", out, "--recipe",
                                 "int8-tensorrt", "--data", data)
    assert status == 0, stderr
    zps = zero_points(out)
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert not {op for op in ops if op.startswith("QLinear") or op.endswith("Integer")}
    assert "onnxruntime:" not in stdout  # no CPU fusion summary for a TensorRT build


def test_dynamic_int8_needs_no_data(capsys, files):
    model, _ = files
    out = model.with_name("dyn.onnx")
    status, stdout, stderr = run(capsys, "optimize", model, "-o", out, "--recipe",
                                 "dynamic-int8")
    assert status == 0, stderr
    assert "DynamicQuantizeMatMul" in stdout


def test_int8_cpu_without_data_is_one_clear_error(capsys, files):
    model, _ = files
    status, _, stderr = run(capsys, "optimize", model, "-o", model.with_name("o.onnx"),
                            "--recipe", "int8-cpu")
    assert status == 2 and stderr.count("\n") == 1
    assert stderr.startswith("onnxpress: error: ") and "calibrate needs data" in stderr
    assert not model.with_name("o.onnx").exists()


def test_calibration_data_for_another_model_is_one_clear_error(capsys, files, tmp_path):
    model, _ = files
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 1, 8, 8), np.float32))
    status, _, stderr = run(capsys, "optimize", model, "-o", tmp_path / "o.onnx", "--recipe",
                            "int8-cpu", "--data", wrong)
    assert status == 2 and stderr.count("\n") == 1 and "missing ['input']" in stderr


def test_nan_in_calibration_data_is_one_clear_error(capsys, files, tmp_path):
    model, _ = files
    bad = tmp_path / "nan.npz"
    images = np.load(CALIBRATION)["input"][:16].copy()
    images[2, 0, 0, 0] = np.nan
    np.savez(bad, input=images)
    status, _, stderr = run(capsys, "optimize", model, "-o", tmp_path / "o.onnx", "--recipe",
                            "int8-cpu", "--data", bad)
    assert status == 2 and stderr.count("\n") == 1 and "NaN" in stderr


def test_quantizing_for_cuda_is_one_clear_error(capsys, files, tmp_path):
    model, data = files
    status, _, stderr = run(capsys, "optimize", model, "-o", tmp_path / "o.onnx",
                            "--passes", "quantize-static", "--target", "cuda", "--data", data)
    assert status == 2 and stderr.count("\n") == 1 and "cuda" in stderr


def test_a_saved_table_is_reused_with_calibration_table(capsys, files):
    model, data = files
    out, table = model.with_name("out.onnx"), model.with_name("table.json")
    assert run(capsys, "optimize", model, "-o", out, "--recipe", "int8-cpu", "--data", data,
               "--save-calibration", table, "--allow-slower")[0] == 0
    first = onnx.load(str(out)).graph
    again = model.with_name("again.onnx")
    status, stdout, stderr = run(capsys, "optimize", model, "-o", again, "--recipe",
                                 "int8-cpu", "--data", data, "--calibration-table", table,
                                 "--allow-slower")
    assert status == 0, stderr
    assert "reused" in stdout
    assert onnx.load(str(again)).graph == first  # the same ranges: the same model


def test_the_latency_guard_says_why_it_refuses(capsys, files):
    model, data = files
    status, _, stderr = run(capsys, "optimize", model, "-o", model.with_name("o.onnx"),
                            "--passes", "fuse,calibrate,mixed-precision:max_latency_ratio=0.01",
                            "--data", data)
    assert status == 2 and "does not pay here" in stderr and "--allow-slower" in stderr
    assert not model.with_name("o.onnx").exists()
