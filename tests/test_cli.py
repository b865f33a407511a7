"""The onnxpress command, run through `main([...])`: outputs, files and exit statuses."""

import shutil
from pathlib import Path

import onnx
import pytest

from onnxpress import demo
from onnxpress.cli import main
from onnxpress.passes import resolve
from onnxpress.recipes import RECIPE_TARGETS, RECIPES
from onnxpress.testing import make_model

DEMO_DATA = str(demo.model_path().with_name("digits_test.npz"))
DEMO_LABELS = str(demo.model_path().with_name("digits_test_labels.npy"))


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """Tables as wide as they need, so long tmp paths are not folded over lines."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def digits(tmp_path):
    """A private copy of the demo model, so a test that writes cannot touch the package."""
    return str(shutil.copy(demo.model_path(), tmp_path / "digits.onnx"))


@pytest.fixture
def redundant(tmp_path):
    """A model cleanup shrinks: two Identity nodes around a Relu."""
    model = make_model("""<ir_version: 8, opset_import: ["": 17]>
        g (float[N, 3] x) => (float[N, 3] y) {
            a = Identity(x)
            b = Relu(a)
            y = Identity(b)
        }""")
    return str(model.save(tmp_path / "redundant.onnx"))


def run(capsys, *argv):
    """Exit status, stdout and stderr of ``onnxpress argv…``."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, err, *fragments):
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("onnxpress: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_inspect_describes_the_model(capsys, digits):
    status, out, err = run(capsys, "inspect", digits)
    assert status == 0 and err == ""
    for expected in ["ir_version  8", "ai.onnx 17", "[batch, 1, 8, 8]", "[batch, 10]",
                     "BatchNormalization │ 7", "36,794", "nodes       27"]:
        assert expected in out


def test_optimize_writes_a_checked_model_and_leaves_the_input_alone(capsys, redundant,
                                                                    tmp_path):
    original = Path(redundant).read_bytes()
    out_path = tmp_path / "out.onnx"
    status, out, err = run(capsys, "optimize", redundant, "-o", out_path, "--passes",
                           "cleanup", "--verify", "numeric")
    assert status == 0, err
    onnx.checker.check_model(str(out_path), full_check=True)
    assert [n.op_type for n in onnx.load(out_path).graph.node] == ["Relu"]
    assert Path(redundant).read_bytes() == original
    assert "cleanup" in out and "3 → 1" in out and f"wrote {out_path}" in out


def test_optimize_runs_a_recipe_by_default(capsys, redundant, tmp_path):
    status, out, _ = run(capsys, "optimize", redundant, "-o", tmp_path / "out.onnx")
    assert status == 0 and "cleanup" in out


def test_optimize_refuses_to_overwrite_its_input_unless_asked(capsys, redundant):
    original = Path(redundant).read_bytes()
    status, _, err = run(capsys, "optimize", redundant, "-o", redundant)
    assert_one_line_error(status, err, "--overwrite")
    assert Path(redundant).read_bytes() == original
    status, _, err = run(capsys, "optimize", redundant, "-o", redundant, "--overwrite")
    assert status == 0, err
    assert len(onnx.load(redundant).graph.node) == 1


def test_bench_puts_two_models_side_by_side(capsys, digits, redundant, tmp_path):
    optimized = tmp_path / "digits.opt.onnx"
    assert run(capsys, "optimize", digits, "-o", optimized)[0] == 0
    status, out, err = run(capsys, "bench", digits, optimized, "--runs", 3, "--warmup", 1,
                           "--batch", 2, "--threads", 1, "--data", DEMO_DATA)
    assert status == 0, err
    assert "digits.opt.onnx" in out and "1.00×" in out
    assert "batch 2, 1 intra-op threads, median of 3 runs after 1 warm-up" in out


def test_compare_prints_errors_and_accuracy(capsys, digits):
    status, out, err = run(capsys, "compare", digits, digits, "--data", DEMO_DATA,
                           "--labels", DEMO_LABELS)
    assert status == 0, err
    accuracy = f"{demo.facts()['fp32_test_top1']:.2%}"
    assert f"reference {accuracy}, candidate {accuracy}" in out
    assert "inf" in out and "100.00%" in out


def test_compare_without_data_uses_random_samples_and_says_so(capsys, digits):
    status, out, err = run(capsys, "compare", digits, digits)
    assert status == 0 and "16 samples" in out
    assert err.startswith("note: comparing on 16 random samples")


def test_demo_compares_the_original_with_each_recipe(capsys):
    status, out, err = run(capsys, "demo", "--runs", 2)
    assert status == 0, err
    accuracy = f"{demo.facts()['fp32_test_top1']:.2%}"
    shown = [name for name in RECIPES if name not in RECIPE_TARGETS]
    exact = [name for name in shown if all(resolve(p).exact for p in RECIPES[name])]
    assert "fp32 original" in out and all(name in out for name in shown)
    # The original and every exact recipe: same accuracy, full agreement with the original.
    assert out.count(accuracy) >= 1 + len(exact) and out.count("100.00%") >= 1 + len(exact)


def test_demo_files_fit_each_other():
    test = demo.test_data()
    assert len(test) == len(demo.test_labels()) == demo.facts()["n_test"]
    assert demo.test_labels().dtype.kind == "i"
    assert len(demo.calibration_data()) > 0


@pytest.mark.parametrize("case", ["missing file", "not onnx", "truncated", "unknown pass",
                                  "unknown option", "labels without data", "missing data",
                                  "labels not npy"])
def test_bad_input_ends_with_one_line_and_status_2(capsys, case, digits, tmp_path):
    junk, truncated = tmp_path / "junk.onnx", tmp_path / "truncated.onnx"
    junk.write_bytes(b"this is not an ONNX model\n")
    truncated.write_bytes(Path(digits).read_bytes()[:5000])
    out = tmp_path / "out.onnx"
    argv, fragment = {
        "missing file": (["inspect", tmp_path / "nope.onnx"], "nope.onnx: no such file"),
        "not onnx": (["inspect", junk], "junk.onnx: not an ONNX model"),
        "truncated": (["optimize", truncated, "-o", out], "truncated.onnx: not an ONNX"),
        "unknown pass": (["optimize", digits, "-o", out, "--passes", "cleanup,nope"],
                         "unknown pass 'nope'; known passes:"),
        "unknown option": (["bench", digits, "--runs", "0"], "expected a positive integer"),
        "labels without data": (["compare", digits, digits, "--labels", DEMO_LABELS],
                                "--labels needs --data"),
        "missing data": (["compare", digits, digits, "--data", tmp_path / "none.npz"],
                         "none.npz: no such file"),
        "labels not npy": (["compare", digits, digits, "--data", DEMO_DATA, "--labels", junk],
                           "junk.onnx: not a readable .npy file of labels"),
    }[case]
    status, _, err = run(capsys, *argv)
    assert_one_line_error(status, err, fragment)
    assert not out.exists()


def test_debug_adds_the_traceback(capsys, tmp_path):
    status, _, err = run(capsys, "--debug", "inspect", tmp_path / "nope.onnx")
    assert status == 2 and "Traceback" in err
    assert err.splitlines()[-1] == f"onnxpress: error: {tmp_path / 'nope.onnx'}: no such file"


def test_no_command_is_a_usage_error(capsys):
    status, _, err = run(capsys)
    assert_one_line_error(status, err, "COMMAND")


def test_help_exits_cleanly(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "optimize" in out


def test_inspect_prunable_lists_the_channel_groups(capsys, digits):
    status, out, err = run(capsys, "inspect", digits, "--prunable")
    assert status == 0, err
    groups = [line for line in out.splitlines() if line.strip().startswith("group ")]
    assert groups and any("frozen" in line for line in groups)  # the logits Gemm's group
