"""CalibrationTable: JSON round trip, TensorRT cache format, clear errors."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from onnxpress.passes.calibrate.table import (
    MIN_SCALE,
    CalibrationError,
    CalibrationTable,
    MissingRangeError,
    TensorRange,
)


def table() -> CalibrationTable:
    return CalibrationTable("entropy", {
        "input": TensorRange(-1 / 3, 0.1, {"count": 640, "min": -0.5, "max": 0.1, "bins": 2048,
                                           "log2_bound": 0}),
        "conv:0": (0.0, float(np.float32(6.123456))),
        "zero": (0.0, 0.0),
    }, {"bins": 2048})


def test_json_round_trip_is_lossless(tmp_path):
    original = table()
    path = original.save(tmp_path / "sub" / "calib.json")
    loaded = CalibrationTable.load(path)
    assert loaded == original
    assert loaded["input"].min == -1 / 3 and loaded["conv:0"].max == float(np.float32(6.123456))
    assert json.loads(path.read_text())["format"] == "onnxpress-calibration"
    assert [p.name for p in path.parent.iterdir()] == ["calib.json"]  # no temporary left


def test_tensorrt_cache_format(tmp_path):
    path = table().to_tensorrt_cache(tmp_path / "calib.cache", version=8601)
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    parsed = {}
    for line in lines[1:]:
        name, _, hexed = line.rpartition(": ")
        assert len(hexed) == 8
        parsed[name] = struct.unpack(">f", bytes.fromhex(hexed))[0]
    assert parsed["input"] == np.float32((1 / 3) / 127)  # amax = max(1/3, 0.1)
    assert parsed["conv:0"] == np.float32(float(np.float32(6.123456)) / 127)
    assert parsed["zero"] == np.float32(MIN_SCALE)


def test_tensorrt_cache_reads_back_as_symmetric_ranges(tmp_path):
    original = table()
    back = CalibrationTable.from_tensorrt_cache(original.to_tensorrt_cache(tmp_path / "c"))
    assert list(back) == list(original) and back.options == {"version": 8601}
    for name in original:
        assert back[name].min == -back[name].max
        np.testing.assert_allclose(back[name].amax, original[name].amax, rtol=1e-6, atol=1e-30)


def test_missing_tensor_says_what_to_do():
    t = table()
    assert "input" in t and "nope" not in t and len(t) == 3
    lo, hi = t["conv:0"]  # a range unpacks as (min, max)
    assert (lo, hi) == (t["conv:0"].min, t["conv:0"].max)
    with pytest.raises(MissingRangeError) as error:
        t["inputs"]
    message = str(error.value)
    assert isinstance(error.value, KeyError)
    assert "tensor 'inputs' has no calibrated range" in message
    assert "re-run calibrate" in message.lower() and "input" in message


@pytest.mark.parametrize("content, match", [
    (None, "no such file"),
    ("{not json", "invalid JSON"),
    ('{"format": "other"}', "not an onnxpress calibration table"),
    ('{"format": "onnxpress-calibration", "version": 99}', "version 99"),
    (('{"format": "onnxpress-calibration", "version": 1, "method": "minmax", '
      '"tensors": {"x": {"min": 2, "max": 1}}}'), "malformed.*min <= max"),
])
def test_bad_files_raise_one_clear_error(tmp_path, content, match):
    path = tmp_path / "calib.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CalibrationError, match=match):
        CalibrationTable.load(path)


def test_bad_tensorrt_caches_raise(tmp_path):
    path = tmp_path / "c"
    path.write_text("not a header\n")
    with pytest.raises(CalibrationError, match="first line"):
        CalibrationTable.from_tensorrt_cache(path)
    path.write_text("TRT-8601-EntropyCalibration2\nx: zz\n")
    with pytest.raises(CalibrationError, match=":2: expected"):
        CalibrationTable.from_tensorrt_cache(path)


def test_ranges_must_be_finite_and_ordered():
    for lo, hi in ((1.0, 0.0), (0.0, float("inf")), (float("nan"), 1.0)):
        with pytest.raises(CalibrationError, match="invalid range"):
            TensorRange(lo, hi)
