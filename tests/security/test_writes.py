"""Items 2-4 and 15 of issue 11: no write replaces an input, a file the input reads, another
output of the run, a folder or a special file; write errors name the output."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from security.hostile import cli, digest, one_line_error
from zoo import ZOO

import onnxpress as ox
from onnxpress import demo
from onnxpress.errors import SaveError

CALIB = demo.model_path().with_name("digits_calib.npz")


@pytest.fixture
def digits(tmp_path):
    """A private copy of the demo model and of its calibration data."""
    model = shutil.copy(demo.model_path(), tmp_path / "digits.onnx")
    data = shutil.copy(CALIB, tmp_path / "calib.npz")
    return tmp_path / model.name, tmp_path / data.name


def _calibrate(model, data, table, out):
    return ["optimize", model, "-o", out, "--passes", "calibrate", "--data", data,
            "--save-calibration", table]


@pytest.mark.parametrize("target", ["model", "data", "output", "hard link to the model",
                                    "symlink to the data", "folder"])
def test_save_calibration_never_overwrites_what_the_run_reads_or_writes(
        capsys, digits, tmp_path, target):
    model, data = digits
    out = tmp_path / "out.onnx"
    os.link(model, tmp_path / "hard.onnx")
    os.symlink(data, tmp_path / "data-link.npz")
    (tmp_path / "folder").mkdir()
    table = {"model": model, "data": data, "output": out,
             "hard link to the model": tmp_path / "hard.onnx",
             "symlink to the data": tmp_path / "data-link.npz",
             "folder": tmp_path / "folder"}[target]
    before = digest(model, data)
    status, _, err = cli(capsys, *_calibrate(model, data, table, out))
    one_line_error(status, err, str(table))
    assert digest(model, data) == before
    assert not out.exists()


def test_save_calibration_as_a_pass_option_is_guarded_too(capsys, digits, tmp_path):
    model, data = digits
    before = digest(model, data)
    status, _, err = cli(capsys, "optimize", model, "-o", tmp_path / "out.onnx", "--passes",
                         f"calibrate:save='{data}'", "--data", data)
    one_line_error(status, err, "calib.npz", "--data")
    assert digest(model, data) == before


def test_save_calibration_to_a_new_file_works(capsys, digits, tmp_path):
    model, data = digits
    status, _, err = cli(capsys, *_calibrate(model, data, tmp_path / "t.json",
                                             tmp_path / "out.onnx"))
    assert status == 0, err
    assert (tmp_path / "t.json").read_text().startswith("{")


def _external_source(tmp_path):
    """A model whose weights live in ``weights.bin`` beside it (as other tools write it)."""
    proto = ZOO["gemm"]().to_onnx()
    onnx.save_model(proto, tmp_path / "src.onnx", save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    return tmp_path / "src.onnx", tmp_path / "weights.bin"


def test_output_onto_the_inputs_external_data_is_refused(capsys, tmp_path):
    model, weights = _external_source(tmp_path)
    before = digest(model, weights)
    status, _, err = cli(capsys, "optimize", model, "-o", weights)
    one_line_error(status, err, "weights.bin", "external data")
    with pytest.raises(SaveError, match="external data"):
        ox.load(model).save(weights)
    assert digest(model, weights) == before
    assert ox.load(model).source_files == {model.resolve(), weights.resolve()}


def _data_files(folder, name):
    return sorted(p.name for p in folder.glob(f"{name}.*.data"))


def test_old_data_files_are_removed_only_when_nothing_reads_them(tmp_path):
    path = ZOO["gemm"]().save(tmp_path / "m.onnx", external_data=True)
    (first,) = _data_files(tmp_path, "m.onnx")
    (tmp_path / "m.onnx.data").write_bytes(b"not ours")  # another tool's name: never touched
    loaded = ox.load(path)
    for c in loaded.constants():
        c.values = c.values * 2
    loaded.save(path, overwrite=True, external_data=True)
    assert first in _data_files(tmp_path, "m.onnx")  # `loaded` was read from it: kept
    fresh = ox.load(path)
    for c in fresh.constants():
        c.values = c.values * 2
    fresh.save(path, overwrite=True, external_data=True)
    names = _data_files(tmp_path, "m.onnx")
    assert first not in names and len(names) == 2  # the one `fresh` read, and the new one
    ZOO["gemm"]().save(path, overwrite=True, external_data=True)
    assert len(_data_files(tmp_path, "m.onnx")) == 1
    assert (tmp_path / "m.onnx.data").read_bytes() == b"not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.onnx", "m.onnx.data", *_data_files(tmp_path, "m.onnx")])


def _device_or_fifo(tmp_path, kind):
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    else:
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private /dev/null
        except PermissionError:
            pytest.skip("creating a device node needs root")
    return path


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_special_files_are_never_replaced(capsys, digits, tmp_path, kind):
    model, data = digits
    special = _device_or_fifo(tmp_path, kind)
    mode = os.lstat(special).st_mode
    status, _, err = cli(capsys, "optimize", model, "-o", special)
    one_line_error(status, err, "not a regular file")
    status, _, err = cli(capsys, *_calibrate(model, data, special, tmp_path / "o.onnx"))
    one_line_error(status, err, "not a regular file")
    with pytest.raises(SaveError, match="not a regular file"):
        ox.load(model).save(special)
    assert os.lstat(special).st_mode == mode


def test_disk_full_error_names_the_output_not_the_staging_folder(digits, tmp_path):
    """A file-size limit makes every write past 64 KiB fail with EFBIG, as a full disk would."""
    model, _ = digits
    out = tmp_path / "out.onnx"
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "from onnxpress.cli import main\n"
        f"sys.exit(main(['optimize', {str(model)!r}, '-o', {str(out)!r}]))\n")
    assert model.stat().st_size > 65536
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True,
                          text=True, cwd=Path(__file__).parents[2], timeout=120)
    assert done.returncode == 2, done.stderr
    one_line_error(done.returncode, done.stderr, f"{out}: cannot write it")
    assert ".onnxpress-" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "digits.onnx"]
