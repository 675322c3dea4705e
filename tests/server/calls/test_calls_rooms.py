"""Inside ``server/calls``: one role per module, imports in one direction only.

The facade (``core``) sits on top; ``streams`` and ``longform`` run over the ``pipeline`` and never import
the facade (they once imported each other through a lazy import); every module stays small enough to read.
Circles and function-level imports across all of server/ are tests/test_layering.py's; this file adds the
order of the modules within calls/ and their stricter size.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
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
    "channels": {"errors", "limits", "longform", "pipeline", "types"},
    "oip_model": {"errors", "limits", "types"},
    "tensors": {"channels", "errors", "oip_model", "types"},
    "core": {"admission", "channels", "errors", "limits", "longform", "pipeline", "streams", "types"},
}


def _calls_imports(path: Path) -> set[str]:
    """The calls/ modules ``path`` imports anywhere (under ``TYPE_CHECKING`` and inside functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.module[len(PACKAGE):] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE)}


def test_every_module_of_calls_is_listed() -> None:
    assert {p.stem for p in CALLS.glob("*.py")} - {"__init__"} == set(ALLOWED)


def test_calls_modules_import_only_lower_modules() -> None:
    for name, allowed in ALLOWED.items():
        imported = _calls_imports(CALLS / f"{name}.py")
        assert imported <= allowed, f"calls/{name}.py imports {sorted(imported - allowed)}"


def test_the_allowed_order_has_no_circle() -> None:
    """The table itself is an order (the imports it allows can never close a circle)."""
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
