"""Shared fixtures: every zoo graph and every real model in tests/models, one test each.

``zoo_model`` gives a fresh `Model` per zoo entry; ``real_model`` the path of each file in
``tests/models/*.onnx`` (globbed at collection time, so files added by
``models/test_models.py`` are picked up without editing this file); ``any_model`` both, as a
fresh `Model`. Feeds come from ``zoo.feeds`` (dynamic dims fixed to batch 2 / seq 7, integer
inputs token ids in range).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from zoo import REAL_MODELS, ZOO

import onnxpress as ox
from onnxpress.ir.model import Model

#: Ids of `any_model`: "zoo:<name>" and "real:<file stem>".
ANY_MODELS = [f"zoo:{name}" for name in ZOO] + [f"real:{p.stem}" for p in REAL_MODELS]


def build(model_id: str) -> Model:
    """A fresh `Model` for an id of `ANY_MODELS`."""
    kind, name = model_id.split(":", 1)
    if kind == "zoo":
        return ZOO[name]()
    return ox.load(Path(__file__).parent / "models" / f"{name}.onnx")


@pytest.fixture(params=list(ZOO), ids=list(ZOO))
def zoo_model(request) -> Model:
    """A fresh model for each zoo entry (the name is ``request.node.callspec.id``)."""
    return ZOO[request.param]()


@pytest.fixture(params=REAL_MODELS, ids=[p.stem for p in REAL_MODELS])
def real_model(request) -> Path:
    """The path of each exported model in tests/models."""
    return request.param


@pytest.fixture(params=ANY_MODELS, ids=ANY_MODELS)
def any_model(request) -> Model:
    """A fresh model for each zoo entry and each real model."""
    return build(request.param)
