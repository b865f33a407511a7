"""Helpers for testing passes (used by onnxpress's own tests and by users' tests).

`make_model` builds a model from ONNX's readable text format plus numpy initializers;
`assert_same_outputs` runs two models in onnxruntime on the same feeds and compares every
output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxpress.ir.io import ModelLike, load
from onnxpress.ir.model import Model
from onnxpress.runtime.data import DataSource
from onnxpress.runtime.session import session


def make_model(text: str, **initializers: np.ndarray) -> Model:
    """A `Model` from ONNX text (``<ir_version: 8, opset_import: ["": 17]> g (...) => (...) {...}``)
    with the keyword arrays added as initializers named after the keywords."""
    proto = onnx.parser.parse_model(text)
    for name, value in initializers.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    return load(proto)


def run(model: ModelLike, feeds: Mapping[str, np.ndarray], *, optimize: bool = False
        ) -> list[np.ndarray]:
    """All outputs of `model` on `feeds` (onnxruntime CPU, graph optimizations off by default
    so that what is tested is the graph as written)."""
    return session(model, "cpu", optimize=optimize).run(None, dict(feeds))


def assert_same_outputs(reference: ModelLike, candidate: ModelLike,
                        feeds: Sequence[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray]
                        | None = None, *, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Assert that both models give the same outputs (names, shapes, values) on `feeds`.

    Args:
        reference: The model to match.
        candidate: The model under test.
        feeds: One feed dict, a list of them, or None for two random samples.
        rtol: Relative tolerance of `numpy.testing.assert_allclose`.
        atol: Absolute tolerance.
    """
    reference, candidate = _model(reference), _model(candidate)
    if feeds is None:
        feeds = DataSource.random(reference).take(2)
    elif isinstance(feeds, Mapping):
        feeds = [feeds]
    ref_names = [t.name for t in reference.graph.outputs]
    cand_names = [t.name for t in candidate.graph.outputs]
    assert ref_names == cand_names, f"output names differ: {ref_names} != {cand_names}"
    for i, feed in enumerate(feeds):
        for name, want, got in zip(ref_names, run(reference, feed), run(candidate, feed),
                                   strict=True):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol,
                                       err_msg=f"output '{name}' differs on feed #{i}")


def _model(model: ModelLike) -> Model:
    return model if isinstance(model, Model) else load(model)
