"""The layer contract: imports go one way, errors → ir → targets → runtime → passes → recipes →
api → cli, and never back.

Every import of an onnxpress module — at module level, under ``TYPE_CHECKING`` or inside a
function (a lazy import is still a dependency) — is read from the source with `ast`, so a
back-edge fails here before it can become an import cycle. Leaf modules that every layer may
use (`errors`, the progress protocol, the report records) sit at the bottom.
"""

from __future__ import annotations

import ast
from pathlib import Path

import onnxpress

PACKAGE = Path(onnxpress.__file__).resolve().parent

#: Layer of each top-level part of the package, lowest first.
LAYERS = {
    "errors": 0, "progress": 0, "report": 0, "_version": 0,
    "ir": 1,
    "targets": 2,
    "runtime": 3, "testing": 3, "demo": 3,
    "passes": 4,
    "recipes": 5,
    "api": 6,
    "cli": 7, "__init__": 7, "__main__": 7,
}


def _part(module: str) -> str:
    """``onnxpress.ir.model`` → ``ir``; ``onnxpress`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every onnxpress import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, m) for line, m in found if m == "onnxpress" or m.startswith("onnxpress.")]


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(("onnxpress", *p.relative_to(PACKAGE).with_suffix("").parts)), p)
            for p in sorted(PACKAGE.rglob("*.py"))]


def test_every_part_of_the_package_has_a_layer():
    assert {_part(m) for m, _ in _modules()} <= set(LAYERS)


def test_imports_never_go_up_a_layer():
    violations = []
    for module, path in _modules():
        here = LAYERS[_part(module)]
        for line, imported in _imports(path):
            if LAYERS[_part(imported)] > here:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({_part(module)}) "
                                  f"imports {imported} ({_part(imported)})")
    assert violations == []


def test_the_contract_sees_a_back_edge(tmp_path):
    """The checker itself: an upward import in a file is found."""
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from onnxpress.passes.base import PassResult\n")
    assert _imports(bad) == [(2, "onnxpress.passes.base")]
