"""`onnxpress.ir.pattern`: matching semantics, driver safety, determinism, find and explain."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import feed_list

from onnxpress.ir.model import Model
from onnxpress.ir.pattern import Const, Rule, apply_rules, explain, find
from onnxpress.ir.verify import verify_structure
from onnxpress.testing import assert_same_outputs, make_model

HEADER = '<ir_version: 8, opset_import: ["": 17]>'


def _model(body: str, signature: str = "(float[2,3] x) => (float[2,3] y)",
           **initializers: np.ndarray) -> Model:
    return make_model(f"{HEADER}\ng {signature} {{\n{body}\n}}", **initializers)


def _ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]


def _apply(model: Model, *rules: Rule):
    """Apply `rules` to `model` and check that the result is well formed and equivalent."""
    before = model.copy()
    result = apply_rules(model, rules)
    assert verify_structure(model) == []
    assert_same_outputs(before, model, feed_list(before))
    return result


class DoubleNeg(Rule):
    """Neg(Neg(x)) is x."""

    def pattern(self, op, x):
        return op.Neg(op.Neg(x, label="inner"), label="outer")

    def rewrite(self, m, b):
        return m.x


class Square(Rule):
    """Mul(x, x) becomes Pow(x, 2): `x` used twice must be one tensor."""

    def pattern(self, op, x):
        return op.Mul(x, x, label="mul")

    def rewrite(self, m, b):
        return b.op("Pow", m.x, b.const(np.array(2.0, np.float32), "two"))


class AddConst(Rule):
    """Add(x, c) with a constant c (used for binding tests only; never rewritten)."""

    def pattern(self, op, x):
        return op.Add(x, Const("c"), label="add")


class AddMulSame(Rule):
    """Add(Mul(x, y), x): identity across two commutative ops."""

    def pattern(self, op, x, y):
        return op.Add(op.Mul(x, y), x)


# --------------------------------------------------------------------------------------------
# Variables
def test_variable_used_twice_binds_the_same_tensor():
    same = _model("y = Mul (x, x)")
    assert [m.x for m in find(same, Square())] == [same.graph.inputs[0]]
    different = _model("y = Mul (x, z)", "(float[2,3] x, float[2,3] z) => (float[2,3] y)")
    assert find(different, Square()) == []
    assert "'x' would bind both 'x' and 'z'" in explain(different, Square())


def test_identity_is_by_object_not_by_equivalent_computation():
    # Two Relu nodes compute the same value, but they are two tensors.
    model = _model("a = Relu (x)\nb = Relu (x)\ny = Mul (a, b)")
    assert find(model, Square()) == []


def test_variable_identity_is_kept_across_commuted_operands():
    for body in ("m = Mul (x, z)\ny = Add (x, m)", "m = Mul (z, x)\ny = Add (m, x)"):
        model = _model(body, "(float[2,3] x, float[2,3] z) => (float[2,3] y)")
        [m] = find(model, AddMulSame())
        assert m.x is model.graph.inputs[0] and m.y is model.graph.inputs[1]
    model = _model("m = Mul (x, z)\ny = Add (m, w)",
                   "(float[2,3] x, float[2,3] z, float[2,3] w) => (float[2,3] y)")
    assert find(model, AddMulSame()) == []


# --------------------------------------------------------------------------------------------
# Constants
def test_const_binds_an_initializer_value_and_tensor():
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = _model("y = Add (x, c)", c=c)
    [m] = find(model, AddConst())
    np.testing.assert_array_equal(m.c, c)
    assert m.tensor("c").name == "c"
    assert m.add is model.graph.nodes[0]


def test_const_binds_a_constant_node_value():
    model = _model("c = Constant <value = float[3] {1, 2, 3}> ()\ny = Add (x, c)")
    [m] = find(model, AddConst())
    np.testing.assert_array_equal(m.c, [1, 2, 3])
    assert m.tensor("c") is model.graph.nodes[0].outputs[0]


def test_const_binds_a_constant_node_with_a_scalar_attribute():
    model = _model("c = Constant <value_float = 0.5> ()\ny = Add (x, c)")
    [m] = find(model, AddConst())
    assert m.c == 0.5


def test_const_does_not_bind_a_computed_tensor_or_an_input():
    model = _model("c = Relu (z)\ny = Add (x, c)", "(float[2,3] x, float[2,3] z) => (float[2,3] y)")
    assert find(model, AddConst()) == []
    assert "is not a constant" in explain(model, AddConst())


@pytest.mark.parametrize(("value", "want", "rtol", "matches"), [
    (np.full((2, 3), 0.5, np.float32), 0.5, 1e-6, True),      # the scalar broadcasts
    (np.float32(0.5), [0.5, 0.5, 0.5], 1e-6, True),           # so does the constant
    (np.float32(0.5004), 0.5, 1e-3, True),                    # within rtol
    (np.float32(0.5004), 0.5, 1e-6, False),
    (np.float32(-0.5), 0.5, 1e-3, False),
    (np.ones(3, np.float32), [1.0, 1.0], 1e-6, False),        # shapes do not broadcast
])
def test_const_value_compares_with_rtol_and_broadcasting(value, want, rtol, matches):
    class MulBy(Rule):
        def pattern(self, op, x):
            return op.Mul(x, Const(value=want, rtol=rtol))

    model = _model("y = Mul (x, c)", "(float[2,3] x) => (float[2,3] y)", c=value)
    assert bool(find(model, MulBy())) is matches


# --------------------------------------------------------------------------------------------
# Attributes and inputs
def test_attribute_matched_by_value():
    class SwapAxes(Rule):
        def pattern(self, op, x):
            return op.Transpose(x, attrs={"perm": [1, 0]})

    assert find(_model("y = Transpose <perm = [1, 0]> (x)",
                       "(float[2,3] x) => (float[3,2] y)"), SwapAxes())
    other = _model("y = Transpose <perm = [0, 1]> (x)")
    assert find(other, SwapAxes()) == []
    assert "attribute perm=[0, 1] does not match" in explain(other, SwapAxes())


def test_attribute_matched_by_predicate_sees_missing_attributes_as_none():
    class SteepLeak(Rule):
        def pattern(self, op, x):
            return op.LeakyRelu(x, attrs={"alpha": lambda a: a is not None and a > 0.5})

    assert find(_model("y = LeakyRelu <alpha = 0.9> (x)"), SteepLeak())
    assert find(_model("y = LeakyRelu <alpha = 0.1> (x)"), SteepLeak()) == []
    assert find(_model("y = LeakyRelu (x)"), SteepLeak()) == []


def test_more_inputs_allows_trailing_inputs():
    class ConvExact(Rule):
        def pattern(self, op, x, w):
            return op.Conv(x, w)

    class ConvAny(Rule):
        def pattern(self, op, x, w):
            return op.Conv(x, w, more_inputs=True)

    model = _model("y = Conv (x, w, b)", "(float[1,2,4,4] x) => (float[1,3,2,2] y)",
                   w=np.ones((3, 2, 3, 3), np.float32), b=np.ones(3, np.float32))
    assert find(model, ConvExact()) == []
    assert "has 3 inputs, pattern wants 2" in explain(model, ConvExact())
    assert len(find(model, ConvAny())) == 1


def test_commutative_operands_are_tried_in_both_orders():
    model = _model("y = Add (c, x)", c=np.ones((2, 3), np.float32))
    [m] = find(model, AddConst())
    assert m.x is model.graph.inputs[0]


def test_non_commutative_operands_are_not_swapped():
    class SubConst(Rule):
        def pattern(self, op, x):
            return op.Sub(x, Const("c"))

    assert find(_model("y = Sub (c, x)", c=np.ones((2, 3), np.float32)), SubConst()) == []


# --------------------------------------------------------------------------------------------
# Driver safety
def test_rewrite_fires_and_keeps_outputs():
    model = _model("a = Neg (x)\nb = Neg (a)\ny = Relu (b)")
    result = _apply(model, DoubleNeg())
    assert (result.changed, dict(result.stats)) == (True, {"DoubleNeg": 1})
    assert _ops(model) == ["Relu"]
    assert model.graph.nodes[0].inputs[0] is model.graph.inputs[0]


def test_intermediate_with_another_consumer_is_not_rewritten():
    model = _model("a = Neg (x)\nb = Neg (a)\nc = Relu (a)\ny = Add (b, c)")
    result = _apply(model, DoubleNeg())
    assert (result.changed, dict(result.stats)) == (False, {"DoubleNeg": 0})
    assert _ops(model) == ["Neg", "Neg", "Relu", "Add"]
    assert "intermediate 'a' is also read by" in explain(model, DoubleNeg())


def test_intermediate_that_is_a_graph_output_is_not_rewritten():
    model = _model("a = Neg (x)\nb = Neg (a)\ny = Relu (b)",
                   "(float[2,3] x) => (float[2,3] y, float[2,3] a)")
    assert not _apply(model, DoubleNeg()).changed
    assert "intermediate 'a' is a graph output" in explain(model, DoubleNeg())


def test_root_that_is_a_graph_output_keeps_its_name():
    model = _model("y = Mul (x, x)")
    assert _apply(model, Square()).changed
    assert _ops(model) == ["Pow"]
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0] is (
        model.graph.nodes[0].outputs[0])


def test_bypass_to_a_graph_input_keeps_the_interface():
    model = _model("a = Neg (x)\ny = Neg (a)")
    apply_rules(model, [DoubleNeg()])
    assert [t.name for t in model.graph.inputs] == ["x"]
    assert [t.name for t in model.graph.outputs] == ["y"]


def test_check_rejects_with_its_reason():
    class OnlyWide(Square):
        def check(self, m):
            return None if m.x.shape[-1] > 3 else f"'{m.x.name}' is too narrow"

    class Never(Square):
        def check(self, m):
            return False

    model = _model("y = Mul (x, x)")
    for rule, reason in ((OnlyWide(), "'x' is too narrow"), (Never(), "check() rejected")):
        assert find(model, rule) == []
        assert not apply_rules(model, [rule]).changed
        assert reason in explain(model, rule)


# --------------------------------------------------------------------------------------------
# Driver bookkeeping
class LateSquare(Square):
    """The same pattern as `Square`, listed after it: never fires."""


def test_counts_per_rule_and_first_rule_wins():
    body = "a = Neg (x)\nb = Neg (a)\nc = Mul (b, b)\nd = Neg (c)\ne = Neg (d)\ny = Mul (e, e)"
    model = _model(body)
    result = _apply(model, DoubleNeg(), Square(), LateSquare())
    assert dict(result.stats) == {"DoubleNeg": 2, "Square": 2, "LateSquare": 0}
    assert _ops(model) == ["Pow", "Pow"]


def test_no_match_reports_unchanged_with_zero_counts():
    result = apply_rules(_model("y = Relu (x)"), [DoubleNeg(), Square()])
    assert (result.changed, dict(result.stats)) == (False, {"DoubleNeg": 0, "Square": 0})


def test_rewrites_enabled_by_earlier_rewrites_fire_in_later_sweeps():
    # Neg(Neg(Neg(Neg(x)))) · itself: after the Negs go, Mul(x, x) appears.
    model = _model("a = Neg (x)\nb = Neg (a)\nc = Neg (b)\nd = Neg (c)\nm = Mul (d, x)\n"
                   "y = Relu (m)")
    result = _apply(model, Square(), DoubleNeg())
    assert dict(result.stats) == {"Square": 1, "DoubleNeg": 2}
    assert _ops(model) == ["Pow", "Relu"]


def test_same_model_rewritten_twice_gives_identical_bytes():
    body = "a = Mul (x, x)\nb = Neg (a)\nc = Neg (b)\nd = Mul (c, c)\ny = Add (d, a)"
    first, second = _model(body), _model(body)
    rules = [DoubleNeg(), Square()]
    assert apply_rules(first, rules).changed and apply_rules(second, rules).changed
    assert first.to_onnx().SerializeToString() == second.to_onnx().SerializeToString()


def test_find_matches_without_changing_the_model():
    model = _model("a = Mul (x, x)\nb = Neg (a)\nc = Neg (b)\ny = Mul (c, c)")
    before = model.to_onnx().SerializeToString()
    matches = find(model, Square())
    assert [m.root.outputs[0].name for m in matches] == ["a", "y"]
    assert [len(m.nodes) for m in matches] == [1, 1]
    assert len(find(model, DoubleNeg())) == 1
    assert model.to_onnx().SerializeToString() == before


def test_explain_names_the_failing_condition():
    model = _model("a = Relu (x)\ny = Neg (a)")
    assert "is Relu, pattern wants Neg" in explain(model, DoubleNeg())
    assert "no Mul node" in explain(model, Square())
    assert "matches" in explain(_model("y = Mul (x, x)"), Square())
