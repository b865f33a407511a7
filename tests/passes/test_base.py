"""Pass resolution by name, with options given as text (how the CLI sets them)."""

import pytest

from onnxpress.errors import PassError
from onnxpress.passes import Cleanup, PruneMagnitude, resolve


def test_a_name_gives_the_pass_with_default_options():
    assert resolve("cleanup") == Cleanup()


def test_options_follow_the_name_as_python_literals_or_strings():
    p = resolve("prune-magnitude:sparsity=0.3:scope=layer")
    assert p == PruneMagnitude(sparsity=0.3, scope="layer")


@pytest.mark.parametrize("spec, message", [
    ("cleanup:bogus=1", r"its options are \['max_rounds'\]"),
    ("cleanup:max_rounds", "not key=value"),
    ("no-such-pass", "unknown pass 'no-such-pass'"),
])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(PassError, match=message):
        resolve(spec)
