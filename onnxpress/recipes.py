"""Recipes: named pass lists for common goals, so users need not know the pass names.

A recipe is a plain list of registered pass names — no new concept: ``optimize(model,
RECIPES["cleanup"])`` is the same as naming the passes. The CLI's ``--recipe`` and
``onnxpress demo`` read this table, so a recipe added here is immediately available in both.
"""

#: Recipe name → pass names, run in order.
RECIPES: dict[str, list[str]] = {
    "cleanup": ["cleanup"],
    "fuse": ["fuse"],
}
