"""Measured sensitivity of each channel group: the model's output error when that group
alone loses channels, all groups from one onnxruntime session.

Removing channel ``k`` of a group deletes, in every layer that reads the group, the input
positions ``P_k`` the coupling assigns to it. A reader computes ``Σ_j W[:, j] x_j``, so
zeroing its weight's columns ``W[:, P_k]`` gives exactly the pruned model's outputs (before
any refit), and every other op the channels pass through is unchanged — whatever the
activation (``SiLU(0)`` or ``Sigmoid(0)`` never enters the sum). So the readers' weights
become graph inputs of one probe; a trial feeds them with the group's removed columns zeroed.

Score of group ``g`` pruned by ``r_g`` channels (its lowest-importance ones):
``e_g = 1 − score``, ``score`` the worst judged output's mean cosine (or top-1 agreement for a
class-like output) against the unpruned model on held-back samples (`runtime.guard`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from onnxpress.ir.model import Model
from onnxpress.passes.sparsity.coupling import ChannelGroup, Coupling, SliceInput
from onnxpress.runtime.guard import Reference
from onnxpress.runtime.session import session

#: Smallest sensitivity: a group whose removal changes nothing measurable still costs a bit.
FLOOR = 1e-6


def _readers(coupling: Coupling, group: ChannelGroup) -> list[SliceInput]:
    spaces = set(group.spaces)
    return [e for e in coupling.edits
            if e.role == "consumer" and isinstance(e, SliceInput)
            and spaces & set(e.layout.spaces)]


def _fed_weights(model: Model, names: Sequence[str]) -> Model:
    """A copy of `model` whose initializers `names` are graph inputs."""
    proto = model.to_onnx()
    wanted = set(names)
    kept = []
    for init in proto.graph.initializer:
        if init.name in wanted:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(
                init.name, init.data_type, list(init.dims)))
        else:
            kept.append(init)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return Model.from_onnx(proto)


def group_sensitivity(model: Model, coupling: Coupling,
                      trials: Sequence[tuple[ChannelGroup, np.ndarray]],
                      reference: Reference,
                      progress: Callable[..., Callable[[int], None]]) -> list[float]:
    """``e_g`` of each ``(group, removed channels)`` trial (see the module docstring).

    Args:
        model: The unpruned model (not modified).
        coupling: Its analysis.
        trials: Each group with the channels (of the group) that the trial removes.
        reference: The unpruned model's outputs on the held-back feeds.
        progress: ``progress(description, total)`` (`Context.progress`).
    """
    readers = [_readers(coupling, group) for group, _ in trials]
    names = list(dict.fromkeys(e.node.inputs[1].name for edits in readers for e in edits))
    base = {e.node.inputs[1].name: np.asarray(e.node.inputs[1].values)
            for edits in readers for e in edits}
    sess = session(_fed_weights(model, names), "cpu")
    advance = progress("sensitivity", len(trials))
    scores = []
    for (group, removed), edits in zip(trials, readers, strict=True):
        kept = np.setdiff1d(np.arange(group.channels), removed)
        feeds = dict(base)
        for edit in edits:
            positions = edit.layout.positions(dict.fromkeys(group.spaces, kept))
            name = edit.node.inputs[1].name
            mask = np.zeros(feeds[name].shape[edit.axis], bool)
            mask[positions] = True
            shape = [1] * feeds[name].ndim
            shape[edit.axis] = -1
            feeds[name] = feeds[name] * mask.reshape(shape)
        measured = reference.measure_session(sess, feeds)
        scores.append(max(1.0 - measured.score(), FLOOR))
        advance(1)
    return scores


__all__ = ["group_sensitivity"]
