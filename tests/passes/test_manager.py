"""`PassManager`: report, structural and numeric verification, instruments, the registry.

The test-only passes below get their `name` after the class is created, so they are *not*
registered: registry-wide property tests (every exact pass × the zoo) must never pick up a pass
that breaks graphs on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import pytest
from zoo import ZOO, feed_list

import onnxpress as ox
from onnxpress.errors import PassError, PreconditionError, VerificationError
from onnxpress.ir import analyses
from onnxpress.ir.model import PIPELINE_KEY, Model
from onnxpress.passes import (
    Context,
    DumpAfterEach,
    EliminateDeadCode,
    FoldConstants,
    Pass,
    PassManager,
    PassResult,
    Sequence,
    base,
)
from onnxpress.runtime.data import DataSource
from onnxpress.targets import get_target


def _unregistered(cls: type[Pass], name: str) -> type[Pass]:
    cls.name = name  # set after class creation: __init_subclass__ did not register it
    return cls


@dataclass(frozen=True)
class _DropFirstNode(Pass):
    """Removes the first node but leaves its readers: a dangling input."""

    def run(self, model: Model, ctx: Context) -> PassResult:
        model.graph.nodes.pop(0)
        return PassResult(True, {"dropped": 1})


@dataclass(frozen=True)
class _ScaleWeights(Pass):
    """Doubles every float initializer: well formed, but the outputs move."""

    factor: float = 2.0

    def run(self, model: Model, ctx: Context) -> PassResult:
        weights = [c for c in model.constants() if c.values.dtype == np.float32]
        for c in weights:
            c.values = c.values * np.float32(self.factor)
        return PassResult(True, {"scaled": len(weights)})


@dataclass(frozen=True)
class _LossyScaleWeights(_ScaleWeights):
    exact: ClassVar[bool] = False


@dataclass(frozen=True)
class _Raises(Pass):
    def run(self, model: Model, ctx: Context) -> PassResult:
        raise ZeroDivisionError("boom")


@dataclass(frozen=True)
class _NeedsCalibration(Pass):
    def requires(self, model: Model, ctx: Context) -> None:
        if ctx.calibration is None:
            raise PreconditionError("no calibration table; run calibrate first")

    def run(self, model: Model, ctx: Context) -> PassResult:
        return PassResult(False)


@dataclass(frozen=True)
class _Nothing(Pass):
    def run(self, model: Model, ctx: Context) -> PassResult:
        return PassResult(False)


DropFirstNode = _unregistered(_DropFirstNode, "test-drop-first-node")
ScaleWeights = _unregistered(_ScaleWeights, "test-scale-weights")
LossyScaleWeights = _unregistered(_LossyScaleWeights, "test-lossy-scale-weights")
Raises = _unregistered(_Raises, "test-raises")
NeedsCalibration = _unregistered(_NeedsCalibration, "test-needs-calibration")
Nothing = _unregistered(_Nothing, "test-nothing")


def _ctx(model: Model | None = None, **kwargs) -> Context:
    data = DataSource.from_feeds(feed_list(model)) if model is not None else None
    return Context(target=get_target("cpu"), data=data, **kwargs)


def test_test_passes_are_not_registered():
    names = set(base.registered())
    assert not {p.name for p in (DropFirstNode, ScaleWeights, LossyScaleWeights, Raises,
                                 NeedsCalibration, Nothing)} & names


# --------------------------------------------------------------------------------------------
# Report
def test_report_records_time_nodes_bytes_and_stats():
    model = ZOO["layernorm_decomposed"]()
    bytes_before = model.nbytes
    report = PassManager([FoldConstants(), EliminateDeadCode(), Nothing()]).run(model, _ctx())
    assert report.names() == ["fold-constants", "eliminate-dead-code", "test-nothing"]
    fold, dead, nothing = report.records
    assert fold.changed and not dead.changed and not nothing.changed
    assert (fold.nodes_before, fold.nodes_after) == (11, 9)
    assert (dead.nodes_before, dead.nodes_after) == (9, 9)
    # Two float32 scalars (exponent, epsilon) became initializers.
    assert (fold.bytes_before, fold.bytes_after) == (bytes_before, bytes_before + 8)
    assert fold.stats == {"constant_nodes": 2, "shapes": 0, "folded_tensors": 0,
                          "kept_large": 0, "nodes_removed": 0}
    assert fold.options == {"size_limit": 1 << 20}
    assert all(isinstance(r.seconds, float) and 0 <= r.seconds < 10 for r in report.records)
    assert report["eliminate-dead-code"] is dead
    with pytest.raises(KeyError):
        report["never-ran"]
    table = report.table()
    assert "| fold-constants | yes |" in table and "11 → 9" in table
    assert "constant_nodes=2" in table
    assert [p["name"] for p in model.pipeline] == report.names()


def test_unchanged_pass_keeps_analyses_changed_pass_drops_them():
    model = ZOO["layernorm_decomposed"]()
    view = model.analysis(analyses.nx_view)
    PassManager([Nothing()]).run(model, _ctx())
    assert model.analysis(analyses.nx_view) is view
    PassManager([FoldConstants()]).run(model, _ctx())
    assert model.analysis(analyses.nx_view) is not view


def test_preserved_analyses_survive_a_change():
    @dataclass(frozen=True)
    class KeepsShapes(Pass):
        preserves: ClassVar[frozenset] = frozenset({analyses.shapes})

        def run(self, model, ctx):
            return PassResult(True)

    KeepsShapes.name = "test-keeps-shapes"
    model = ZOO["gemm"]()
    shapes = model.analysis(analyses.shapes)
    view = model.analysis(analyses.nx_view)
    PassManager([KeepsShapes()]).run(model, _ctx())
    assert model.analysis(analyses.shapes) is shapes
    assert model.analysis(analyses.nx_view) is not view


# --------------------------------------------------------------------------------------------
# Structural verification
def test_structure_verification_names_the_broken_pass():
    model = ZOO["conv_bn_relu"]()
    with pytest.raises(VerificationError) as info:
        PassManager([FoldConstants(), DropFirstNode()]).run(model, _ctx())
    message = str(info.value)
    assert "after pass 'test-drop-first-node'" in message
    assert "reads 'c'" in message  # the BatchNormalization's input lost its producer


def test_structure_verification_off():
    model = ZOO["conv_bn_relu"]()
    report = PassManager([DropFirstNode()], verify="off").run(model, _ctx())
    assert report.records[0].nodes_after == 2


def test_unknown_verify_mode():
    with pytest.raises(PassError, match="'structure'"):
        PassManager([], verify="everything")


def test_failing_pass_is_named_with_its_predecessors():
    model = ZOO["gemm"]()
    with pytest.raises(PassError) as info:
        PassManager([FoldConstants(), EliminateDeadCode(), Raises()]).run(model, _ctx())
    message = str(info.value)
    assert "pass 'test-raises'" in message
    assert "fold-constants, eliminate-dead-code" in message
    assert "ZeroDivisionError: boom" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_precondition_error_names_the_pass():
    with pytest.raises(PreconditionError, match="test-needs-calibration"):
        PassManager([NeedsCalibration()]).run(ZOO["gemm"](), _ctx())


def test_precondition_error_is_raised_before_the_pass_runs():
    model = ZOO["gemm"]()
    with pytest.raises(PreconditionError, match="run calibrate first"):
        PassManager([NeedsCalibration()]).run(model, _ctx())
    assert model.pipeline == []


# --------------------------------------------------------------------------------------------
# Numeric verification
def test_numeric_verification_catches_an_exact_pass_that_changes_outputs():
    model = ZOO["gemm"]()
    with pytest.raises(VerificationError) as info:
        PassManager([FoldConstants(), ScaleWeights()], verify="numeric").run(model, _ctx(model))
    message = str(info.value)
    assert "exact pass 'test-scale-weights' changed output #0" in message
    assert "max abs error" in message


def test_structure_verification_does_not_run_the_model():
    model = ZOO["gemm"]()
    report = PassManager([ScaleWeights()]).run(model, _ctx(model))
    assert report.records[0].changed


def test_numeric_verification_accepts_exact_passes_and_skips_lossy_ones():
    model = ZOO["reshape"]()
    passes = [FoldConstants(), LossyScaleWeights(), ox.passes.get("cleanup")(),
              EliminateDeadCode()]
    report = PassManager(passes, verify="numeric").run(model, _ctx(model))
    assert [r.changed for r in report.records] == [True, True, False, False]
    assert [r.verified for r in report.records] == ["numeric", "structure", "", ""]


def test_numeric_verification_after_a_lossy_pass_compares_with_the_new_outputs():
    model = ZOO["layernorm_decomposed"]()
    # Lossy scaling changes outputs on purpose; fold-constants after it must be compared with
    # the scaled model, not with the original.
    passes = [LossyScaleWeights(), FoldConstants()]
    report = PassManager(passes, verify="numeric").run(model, _ctx(model))
    assert report.records[1].changed and report.records[1].verified == "numeric"


def test_numeric_verification_without_data_on_a_batch_one_model():
    model = ZOO["conv_bn_relu"]()
    with pytest.raises(VerificationError, match="test-scale-weights"):
        PassManager([ScaleWeights()], verify="numeric").run(model, _ctx())


def test_numeric_verification_without_data_on_a_static_batch_of_two():
    model = ZOO["gemm"]()  # x: float[2,3,4,4]
    with pytest.raises(VerificationError, match="test-scale-weights"):
        PassManager([ScaleWeights()], verify="numeric").run(model, _ctx())


# --------------------------------------------------------------------------------------------
# Instruments
def test_dump_after_each_writes_changed_models(tmp_path):
    folder = tmp_path / "dumps"
    model = ZOO["layernorm_decomposed"]()
    PassManager([FoldConstants(), Nothing(), ScaleWeights()],
                instruments=[DumpAfterEach(folder)]).run(model, _ctx())
    assert sorted(p.name for p in folder.iterdir()) == [
        "01-fold-constants.onnx", "03-test-scale-weights.onnx"]
    first = ox.load(folder / "01-fold-constants.onnx")
    assert len(first) == 9
    onnx.checker.check_model(str(folder / "03-test-scale-weights.onnx"), full_check=True)
    assert not [p for p in tmp_path.iterdir() if p.name != "dumps"]


def test_dump_records_the_pipeline_up_to_that_pass(tmp_path):
    PassManager([FoldConstants()], instruments=[DumpAfterEach(tmp_path)]).run(
        ZOO["layernorm_decomposed"](), _ctx())
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "01-fold-constants.onnx"))
             .metadata_props}
    assert [p["name"] for p in json.loads(props[PIPELINE_KEY])["passes"]] == ["fold-constants"]


def test_instruments_see_every_pass_in_order():
    events = []

    class Recorder:
        def before(self, p, model, ctx):
            events.append(("before", p.name, len(model)))

        def after(self, p, model, ctx, record):
            events.append(("after", record.name, record.nodes_after))

    PassManager([FoldConstants(), EliminateDeadCode()], instruments=[Recorder()]).run(
        ZOO["layernorm_decomposed"](), _ctx())
    assert events == [("before", "fold-constants", 11), ("after", "fold-constants", 9),
                      ("before", "eliminate-dead-code", 9),
                      ("after", "eliminate-dead-code", 9)]


# --------------------------------------------------------------------------------------------
# Registry
def test_unknown_pass_name_lists_the_known_ones():
    with pytest.raises(PassError) as info:
        base.get("fold-everything")
    message = str(info.value)
    assert "unknown pass 'fold-everything'" in message
    for known in ("cleanup", "eliminate-dead-code", "eliminate-identity", "fold-constants"):
        assert known in message
    with pytest.raises(PassError, match="unknown pass 'nope'"):
        ox.optimize(ZOO["gemm"](), ["nope"])


def test_resolve_names_and_objects():
    assert isinstance(base.resolve("fold-constants"), FoldConstants)
    assert isinstance(base.resolve("  cleanup "), ox.passes.Cleanup)
    p = FoldConstants(size_limit=5)
    assert base.resolve(p) is p
    with pytest.raises(PassError, match="not a pass"):
        base.resolve(42)


def test_duplicate_pass_name_is_a_type_error():
    before = dict(base.registered())
    with pytest.raises(TypeError, match="'fold-constants' is taken"):
        @dataclass(frozen=True)
        class Impostor(Pass):
            name: ClassVar[str] = "fold-constants"
    assert base.registered() == before


def test_new_pass_registers_by_name():
    try:
        @dataclass(frozen=True)
        class StripNothing(Pass):
            name: ClassVar[str] = "test-strip-nothing"
            level: int = 1

            def run(self, model, ctx):
                return PassResult(False)

        assert base.get("test-strip-nothing") is StripNothing
        model = ox.optimize(ZOO["gemm"](), ["test-strip-nothing"])
        assert model.report.records[0].options == {"level": 1}
    finally:
        base._REGISTRY.pop("test-strip-nothing", None)


def test_same_class_name_in_another_module_is_still_a_duplicate():
    saved = dict(base._REGISTRY)
    try:
        with pytest.raises(TypeError):
            type("FoldConstants", (Pass,), {"name": "fold-constants",
                                            "__module__": "someone.elses.plugin",
                                            "__qualname__": "FoldConstants"})
        assert base.get("fold-constants") is FoldConstants
    finally:
        base._REGISTRY.clear()
        base._REGISTRY.update(saved)


def test_numeric_verification_runs_on_the_cpu_for_any_target():
    # Compiling for tensorrt on a machine without TensorRT must still verify exact passes.
    model = ox.optimize(ZOO["conv_bn_relu"](), ["fuse"], target="tensorrt", verify="numeric")
    assert model.report["fuse"].changed
    changed = [r for _, r in model.report.walk() if r.changed and not r.children]
    assert changed and all(r.verified == "numeric" for r in changed)


# --------------------------------------------------------------------------------------------
# Composition: nested passes run through the same entry point
def test_nested_passes_are_recorded_under_their_composite():
    model = ZOO["layernorm_decomposed"]()
    report = PassManager([Sequence((FoldConstants(), "eliminate-dead-code"))]).run(
        model, _ctx())
    (record,) = report.records
    assert record.name == "sequence" and record.changed and record.stats == {"rounds": 1}
    assert [c.name for c in record.children] == ["fold-constants", "eliminate-dead-code"]
    assert record.children[0].changed and record.children[0].verified == "structure"
    assert record.verified == ""  # its children were checked; nothing to check twice
    assert [p["name"] for p in model.pipeline] == ["sequence"]  # what the user asked for


def test_nested_passes_are_verified_numerically_each():
    model = ZOO["gemm"]()
    with pytest.raises(VerificationError, match="exact pass 'test-scale-weights'"):
        PassManager([Sequence((FoldConstants(), ScaleWeights()))], verify="numeric").run(
            model, _ctx(model))


def test_a_failure_inside_a_composite_names_the_inner_pass_and_the_composite():
    model = ZOO["gemm"]()
    with pytest.raises(PassError) as info:
        PassManager([EliminateDeadCode(), Sequence((FoldConstants(), Raises()))]).run(
            model, _ctx())
    message = str(info.value)
    assert message.startswith("pass 'test-raises' in 'sequence' (after eliminate-dead-code)")
    assert "ZeroDivisionError: boom" in message and message.count("pass '") == 1


def test_instruments_and_dumps_see_the_passes_inside_fuse(tmp_path):
    model = ZOO["conv_bn_relu"]()
    names = []

    class Recorder:
        def before(self, p, model, ctx):
            names.append(p.name)

        def after(self, p, model, ctx, record):
            pass

    PassManager([ox.passes.get("fuse")()],
                instruments=[Recorder(), DumpAfterEach(tmp_path)]).run(model, _ctx())
    assert names[:3] == ["fuse", "cleanup", "fold-constants"] and "fuse-batchnorm" in names
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert any(d.endswith("-fuse-batchnorm.onnx") for d in dumps) and len(dumps) >= 2


def test_sequence_repeats_to_a_fixed_point_within_max_rounds():
    model = ZOO["reshape"]()
    record = _ctx().run(Sequence(("fold-constants", "eliminate-identity",
                                  "eliminate-dead-code"), max_rounds=8), model)
    assert record.changed and 2 <= record.stats["rounds"] < 8
    last_round = record.children[-3:]
    assert not any(c.changed for c in last_round)


def test_a_pass_run_by_hand_still_runs_its_children_through_a_manager():
    model = ZOO["conv_bn_relu"]()
    ctx = _ctx()
    result = ox.passes.get("fuse")().run(model, ctx)
    assert result.changed and ctx.manager is not None
    assert "fuse-batchnorm" in [r.name for _, r in ctx.manager.report.walk()]
