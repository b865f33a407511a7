"""`onnxpress.ir.pattern`: matching semantics, driver safety, determinism, find and explain."""

from __future__ import annotations

import numpy as np
import pytest
from zoo import feed_list

from onnxpress.ir.model import Model
from onnxpress.ir.pattern import Const, Or, Reject, Rule, RuleError, apply_rules, explain, find
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
    assert _apply(model, DoubleNeg()) == {"DoubleNeg": 1}
    assert _ops(model) == ["Relu"]
    assert model.graph.nodes[0].inputs[0] is model.graph.inputs[0]


def test_intermediate_with_another_consumer_is_not_rewritten():
    model = _model("a = Neg (x)\nb = Neg (a)\nc = Relu (a)\ny = Add (b, c)")
    assert _apply(model, DoubleNeg()) == {"DoubleNeg": 0}
    assert _ops(model) == ["Neg", "Neg", "Relu", "Add"]
    assert "intermediate 'a' is also read by" in explain(model, DoubleNeg())


def test_intermediate_that_is_a_graph_output_is_not_rewritten():
    model = _model("a = Neg (x)\nb = Neg (a)\ny = Relu (b)",
                   "(float[2,3] x) => (float[2,3] y, float[2,3] a)")
    assert _apply(model, DoubleNeg()) == {"DoubleNeg": 0}
    assert "intermediate 'a' is a graph output" in explain(model, DoubleNeg())


def test_root_that_is_a_graph_output_keeps_its_name():
    model = _model("y = Mul (x, x)")
    assert _apply(model, Square()) == {"Square": 1}
    assert _ops(model) == ["Pow"]
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0] is (
        model.graph.nodes[0].outputs[0])


def test_bypass_to_a_graph_input_keeps_the_interface():
    model = _model("a = Neg (x)\ny = Neg (a)")
    apply_rules(model, [DoubleNeg()])
    assert [t.name for t in model.graph.inputs] == ["x"]
    assert [t.name for t in model.graph.outputs] == ["y"]


def test_check_rejects_with_its_reason_and_node():
    class OnlyWide(Square):
        def check(self, m):
            return None if m.x.shape[-1] > 3 else Reject(f"'{m.x.name}' is too narrow", m.mul)

    model = _model("y = Mul (x, x)")
    assert not Reject("why")
    assert find(model, OnlyWide()) == []
    assert apply_rules(model, [OnlyWide()]) == {"OnlyWide": 0}
    assert "Mul producing 'y': 'x' is too narrow" in explain(model, OnlyWide())


def test_check_returning_anything_but_none_or_reject_is_an_error():
    class Stringly(Square):
        def check(self, m):
            return "too narrow"

    with pytest.raises(RuleError, match=r"rule Stringly at Mul producing 'y': check\(\) returned"):
        find(_model("y = Mul (x, x)"), Stringly())


@pytest.mark.parametrize("where", ["check", "rewrite"])
def test_exception_in_check_or_rewrite_names_the_rule_and_the_node(where):
    class Broken(Square):
        def check(self, m):
            if where == "check":
                return m.x.values  # a Variable has no values
            return None

        def rewrite(self, m, b):
            raise ValueError("no luck")

    model = _model("y = Mul (x, x)")
    before = model.to_onnx().SerializeToString()
    message = ("rule Broken at Mul producing 'y': "
               + ("check() raised AttributeError" if where == "check"
                  else "rewrite() raised ValueError: no luck"))
    with pytest.raises(RuleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_rules(model, [Broken()])
    assert model.to_onnx().SerializeToString() == before


# --------------------------------------------------------------------------------------------
# Alternation and sub-pattern reuse
class Centred(Rule):
    """Square of a centred tensor, x - c written two ways; the square must read *that* d."""

    def pattern(self, op, x, c):
        d = Or("centre", sub=op.Sub(x, c), add_neg=op.Add(x, op.Neg(c)))
        return Or("square", mul=op.Mul(d, d), pow=op.Pow(d, Const(value=2.0)))

    def rewrite(self, m, b):  # |x - c|² (a form the rule itself does not match again)
        return b.op("Pow", b.op("Abs", b.op("Sub", m.x, m.c)),
                    b.const(np.array(2.0, np.float32)))


TWO = "(float[2,3] x, float[2,3] c) => (float[2,3] y)"


@pytest.mark.parametrize(("body", "tags"), [
    ("d = Sub (x, c)\ny = Mul (d, d)", {"centre": "sub", "square": "mul"}),
    ("n = Neg (c)\nd = Add (n, x)\ny = Mul (d, d)", {"centre": "add_neg", "square": "mul"}),
    ("n = Neg (c)\nd = Add (x, n)\ny = Pow (d, two)", {"centre": "add_neg", "square": "pow"}),
])
def test_or_matches_any_alternative_and_tags_which(body, tags):
    model = _model(body, TWO, two=np.array(2.0, np.float32))
    [m] = find(model, Centred())
    assert m.tags == tags
    assert ("c" in m.bindings) and m.x is model.graph.inputs[0]
    assert _apply(model, Centred()) == {"Centred": 1}
    assert _ops(model) == ["Sub", "Abs", "Pow"]


def test_a_reused_sub_pattern_must_match_the_same_node():
    # Two Sub nodes compute the same x - c, but the square must read one tensor twice.
    model = _model("d = Sub (x, c)\ne = Sub (x, c)\ny = Mul (d, e)", TWO)
    assert find(model, Centred()) == []
    assert "which the same sub-pattern Or(centre: sub | add_neg) matched" in explain(
        model, Centred())


def test_backtracking_into_the_next_alternative():
    # The first alternative of `a` matches Relu, but only the second lets `b` match too.
    class Pick(Rule):
        def pattern(self, op, x):
            a = Or("a", relu=op.Relu(x), neg=op.Neg(x))
            return op.Add(a, op.Abs(x))

    model = _model("n = Neg (x)\nr = Abs (x)\ny = Add (n, r)")
    [m] = find(model, Pick())
    assert m.tags == {"a": "neg"}


def test_or_at_the_root_is_indexed_by_every_root_op():
    class Either(Rule):
        def pattern(self, op, x):
            return Or("op", neg=op.Neg(op.Neg(x)), abs=op.Abs(op.Neg(x)))

    assert Either().root_ops() == ("Neg", "Abs")
    model = _model("a = Neg (x)\nb = Abs (a)\nc = Neg (b)\ny = Neg (c)")
    assert [m.tags for m in find(model, Either())] == [{"op": "abs"}, {"op": "neg"}]
    with pytest.raises(ValueError, match="at least two"):
        Or("one", only=Const())


def test_explain_covers_a_rule_set_one_line_each():
    model = _model("a = Relu (x)\ny = Neg (a)")
    lines = explain(model, [DoubleNeg(), Square()]).splitlines()
    assert lines[0].startswith("DoubleNeg: deepest partial match rooted at Neg producing 'y'")
    assert lines[1] == "Square: no Mul node in the graph"


# --------------------------------------------------------------------------------------------
# Driver bookkeeping
class LateSquare(Square):
    """The same pattern as `Square`, listed after it: never fires."""


def test_counts_per_rule_and_first_rule_wins():
    body = "a = Neg (x)\nb = Neg (a)\nc = Mul (b, b)\nd = Neg (c)\ne = Neg (d)\ny = Mul (e, e)"
    model = _model(body)
    assert _apply(model, DoubleNeg(), Square(), LateSquare()) == {
        "DoubleNeg": 2, "Square": 2, "LateSquare": 0}
    assert _ops(model) == ["Pow", "Pow"]


def test_no_match_reports_unchanged_with_zero_counts():
    assert apply_rules(_model("y = Relu (x)"), [DoubleNeg(), Square()]) == {
        "DoubleNeg": 0, "Square": 0}


def test_rewrites_enabled_by_earlier_rewrites_fire_in_later_sweeps():
    # Neg(Neg(Neg(Neg(x)))) · itself: after the Negs go, Mul(x, x) appears.
    model = _model("a = Neg (x)\nb = Neg (a)\nc = Neg (b)\nd = Neg (c)\nm = Mul (d, x)\n"
                   "y = Relu (m)")
    assert _apply(model, Square(), DoubleNeg()) == {"Square": 1, "DoubleNeg": 2}
    assert _ops(model) == ["Pow", "Relu"]


def test_same_model_rewritten_twice_gives_identical_bytes():
    body = "a = Mul (x, x)\nb = Neg (a)\nc = Neg (b)\nd = Mul (c, c)\ny = Add (d, a)"
    first, second = _model(body), _model(body)
    rules = [DoubleNeg(), Square()]
    assert apply_rules(first, rules) == apply_rules(second, rules) == {"DoubleNeg": 1,
                                                                       "Square": 2}
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


def test_the_rule_api_is_exported_from_the_ir_without_an_import_cycle():
    # ir.pattern once imported passes.base, and re-exporting Rule from onnxpress.ir then broke
    # `import onnxpress` with a circular import; the IR now imports nothing above it.
    import subprocess
    import sys
    from pathlib import Path

    import onnxpress

    code = "from onnxpress.ir import Or, Reject, Rule, apply_rules; import onnxpress; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(onnxpress.__file__).parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_rule_that_matches_its_own_rewrite_is_an_error_not_a_silent_stop():
    class Grows(Square):
        def rewrite(self, m, b):  # x * x again: it would fire forever
            return b.op("Mul", m.x, m.x)

    with pytest.raises(RuleError, match="did not settle in 4 sweeps: Grows still fired"):
        apply_rules(_model("y = Mul (x, x)"), [Grows()], max_sweeps=4)
