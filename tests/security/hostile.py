"""Builders of hostile inputs shared by the security tests (threat model: conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx


def store_externally(tensor: onnx.TensorProto, folder: Path, location: str,
                     offset: int = 0) -> onnx.TensorProto:
    """Move `tensor`'s bytes to ``folder/location`` at `offset` and point the tensor there."""
    data = tensor.raw_data or onnx.numpy_helper.from_array(
        onnx.numpy_helper.to_array(tensor)).raw_data
    path = folder / location
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * offset + data)
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(len(data)))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def weights(n: int = 300, value: float = 1.0) -> np.ndarray:
    """A float32 weight vector large enough (> 1 KiB) to be stored externally."""
    return np.full(n, value, np.float32)


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``onnxpress argv…`` run in this process."""
    from onnxpress.cli import main

    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line_error(status: int, err: str, *fragments: str) -> None:
    """Assert exit status 2 and exactly one ``onnxpress: error:`` line holding `fragments`."""
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("onnxpress: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def digest(*paths: Path) -> list[bytes]:
    """The contents of `paths`, to prove that a run left them alone."""
    return [Path(p).read_bytes() for p in paths]
