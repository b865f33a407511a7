"""Item 6 of issue 11: a save killed at any point leaves the old model or the new one, never a
mix; SIGTERM cleans its staging folder; a SIGKILL leaves at most one, removed by the next save.

Each kill happens in a child process: `os.replace` is wrapped so that the process SIGKILLs
itself right before its N-th call (1: naming the data file in staging, 2: publishing the data
file, 3: publishing the model) or, for N = 4, right after the last one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from zoo import ZOO

import onnxpress as ox
from onnxpress.testing import run

ROOT = Path(__file__).parents[2]
FEED = {"x": np.linspace(-1, 1, 96, dtype=np.float32).reshape(2, 3, 4, 4)}

CHILD = """
import os, signal, sys
import numpy as np
import onnxpress as ox
sys.path.insert(0, {tests!r})
from zoo import ZOO
kill_at = {kill_at}
calls = 0
real = os.replace
def replace(a, b):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real(a, b)
    if calls == 3 and kill_at == 4:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
model = ZOO["gemm"]()
for c in model.constants():
    c.values = -7 * c.values  # same layout, other values
model.graph.nodes[-1].attrs["alpha"] = 0.5  # and another graph
model.save({path!r}, external_data=True)
"""


def _new_model():
    model = ZOO["gemm"]()
    for c in model.constants():
        c.values = -7 * c.values
    model.graph.nodes[-1].attrs["alpha"] = 0.5
    return model


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".onnxpress-"))


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])
def test_sigkill_at_any_step_leaves_old_or_new_never_a_mix(tmp_path, kill_at):
    path = ZOO["gemm"]().save(tmp_path / "m.onnx", external_data=True)
    old, new = run(ZOO["gemm"](), FEED)[0], run(_new_model(), FEED)[0]
    assert not np.allclose(old, new)
    script = CHILD.format(tests=str(ROOT / "tests"), kill_at=kill_at, path=str(path))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=120,
                          check=False)
    assert done.returncode == -signal.SIGKILL
    got = run(ox.load(path), FEED)[0]
    np.testing.assert_array_equal(got, old if kill_at <= 3 else new)
    assert len(_leftovers(tmp_path)) <= 1
    # The next save removes the dead process's staging folder and unreferenced data files.
    ZOO["gemm"]().save(tmp_path / "m.onnx", external_data=True, overwrite=True)
    assert _leftovers(tmp_path) == []
    assert len(list(tmp_path.glob("m.onnx.*.data"))) == 1
    np.testing.assert_array_equal(run(ox.load(path), FEED)[0], old)


def test_sigterm_during_a_save_cleans_the_staging_folder(tmp_path):
    """SIGTERM while the model is being written into staging: exit 143, destination
    untouched, nothing left over."""
    source = ZOO["gemm"]().save(tmp_path / "in.onnx")
    out = ZOO["conv_bn_relu"]().save(tmp_path / "out.onnx")
    before = out.read_bytes()
    script = (
        "import sys, time\n"
        "from onnxpress.ir import external\n"
        "real = external.write_inline\n"
        "def slow(proto, f):\n"
        "    real(proto, f)\n"
        "    print('writing', flush=True); time.sleep(60)\n"
        "external.write_inline = slow\n"
        "from onnxpress.cli import main\n"
        f"sys.exit(main(['optimize', {str(source)!r}, '-o', {str(out)!r}]))\n")
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while "writing" not in child.stdout.readline():
            assert time.monotonic() < deadline and child.poll() is None
        assert len(_leftovers(tmp_path)) == 1  # the save is staged right now
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGTERM
    assert err.strip() == "onnxpress: terminated"
    assert _leftovers(tmp_path) == []
    assert out.read_bytes() == before
