"""The rooms of ``server/calls``: one role per module, imports in one direction only.

The facade (``core``) sits on top; ``streams`` and ``longform`` run over the ``pipeline`` and never import
the facade (they once imported each other through a lazy import); nothing in the package imports inside a
function to dodge a circle; every module stays small enough to read.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CALLS = ROOT / "server" / "calls"
PACKAGE = "emotion2vec_serving.server.calls."
#: Module -> the calls/ modules it may import (lower rooms only).
ALLOWED = {
    "errors": set(),
    "types": {"errors"},
    "limits": set(),
    "admission": {"errors", "types"},
    "pipeline": {"errors", "limits", "types"},
    "streams": {"errors", "pipeline", "types"},
    "longform": {"errors", "limits", "pipeline", "types"},
    "tensors": {"errors", "types"},
    "core": {"admission", "errors", "limits", "longform", "pipeline", "streams", "types"},
}


def _calls_imports(path: Path) -> tuple[set[str], set[str]]:
    """(calls/ modules imported anywhere, even under ``TYPE_CHECKING``; those imported inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    anywhere: set[str] = set()
    nested: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            anywhere.add(node.module[len(PACKAGE):])
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.startswith(PACKAGE):
                    nested.add(inner.module[len(PACKAGE):])
    return anywhere, nested


def test_every_module_of_calls_is_listed() -> None:
    assert {p.stem for p in CALLS.glob("*.py")} - {"__init__"} == set(ALLOWED)


def test_calls_modules_import_only_lower_rooms_at_module_level() -> None:
    for name, allowed in ALLOWED.items():
        anywhere, nested = _calls_imports(CALLS / f"{name}.py")
        assert anywhere <= allowed, f"calls/{name}.py imports {sorted(anywhere - allowed)}"
        assert not nested, f"calls/{name}.py imports {sorted(nested)} inside a function"


def test_the_allowed_imports_have_no_circle() -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import circle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in ALLOWED[name]:
            visit(dep, (*path, name))
        done.add(name)

    for name in ALLOWED:
        visit(name, ())


def test_no_module_of_calls_is_long() -> None:
    for path in CALLS.glob("*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 400, f"calls/{path.name} has {lines} lines"
