"""Every registered exact pass over the whole zoo: same outputs, same bytes twice, idempotent.

A new exact pass is picked up automatically when it registers; passes that need data get the
zoo's feeds as their data source.
"""

import pytest
from zoo import REAL_MODELS, ZOO, feed_list

import onnxpress as ox
from onnxpress.passes import registered
from onnxpress.runtime.data import DataSource
from onnxpress.testing import assert_same_outputs

EXACT = sorted(name for name, cls in registered().items() if cls.exact)
MODELS = {**{f"zoo:{name}": build for name, build in ZOO.items()},
          **{f"real:{path.stem}": (lambda path=path: ox.load(path)) for path in REAL_MODELS}}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("pass_name", EXACT)
def test_exact_pass_keeps_outputs_is_deterministic_and_idempotent(pass_name, model_name):
    original = MODELS[model_name]()
    feeds = feed_list(original)
    data = DataSource.from_feeds(feeds)
    once = ox.optimize(original, [pass_name], data=data)
    assert_same_outputs(original, once, feeds, rtol=1e-4, atol=1e-5)
    again = ox.optimize(original, [pass_name], data=data)
    assert once.to_onnx().SerializeToString() == again.to_onnx().SerializeToString()
    twice = ox.optimize(once, [pass_name], data=data)
    assert not twice.report[pass_name].changed, twice.report[pass_name].stats
