"""The progress protocol: how long-running work reports how far it got.

A progress sink is a function ``progress(description, total=None) -> advance`` that starts a
task and returns ``advance(n=1)``, called as work completes. The CLI draws rich progress bars
with it; the API's default, `no_progress`, ignores everything. It is a leaf module (it imports
nothing of onnxpress) so that every layer — runtime measurements as much as passes — can take
a sink without importing the layers above it.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``advance(n=1)``: report `n` more units of work done.
Advance = Callable[[int], None]
#: ``progress(description, total=None) -> advance``.
Progress = Callable[..., Advance]


def no_progress(description: str, total: int | None = None) -> Advance:
    """The default progress sink: ignores progress reports."""
    return lambda advance=1: None
