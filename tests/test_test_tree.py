"""Keeps the test tree's rules true by walking it with ``ast``: shared helpers live in tests/support/ and are
imported from there, never from a test module or a conftest (conftests only define fixtures); the
``manifest`` and ``start_server`` fixtures are defined once, in tests/conftest.py (a suite changes its
servers by overriding ``server_settings``); and tests/support/ holds no tests."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED_FIXTURES = frozenset({"manifest", "start_server"})


def _modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import in ``tree``, function-level ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # ``from tests.server import conftest``
                yield node.lineno, f"{node.module}.{alias.name}"


def _forbidden(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last == "conftest" or last.startswith("test_")


def import_violations(path: Path) -> list[str]:
    """Imports of a test module or a conftest (a shared helper belongs in tests/support/)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [f"{_rel(path)}:{line} imports {module}" for line, module in _imported(tree) if _forbidden(module)]


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
        isinstance(target, ast.Name) and target.id == "fixture"
    )


def fixture_violations(path: Path) -> list[str]:
    """Definitions of ``manifest``/``start_server`` anywhere but tests/conftest.py."""
    if path == TESTS / "conftest.py":
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        f"{_rel(path)}:{node.lineno} defines the fixture {node.name}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name in SHARED_FIXTURES
        and any(_is_fixture(d) for d in node.decorator_list)
    ]


def test_no_module_imports_a_test_module_or_a_conftest() -> None:
    found = [v for path in _modules() for v in import_violations(path)]
    assert not found, "move the shared helpers to tests/support/:\n" + "\n".join(found)


def test_manifest_and_start_server_are_defined_only_in_the_root_conftest() -> None:
    found = [v for path in _modules() for v in fixture_violations(path)]
    assert not found, "override server_settings instead:\n" + "\n".join(found)
    root = {node.name for node in ast.walk(ast.parse((TESTS / "conftest.py").read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert root >= SHARED_FIXTURES


def test_support_holds_helpers_not_tests() -> None:
    support = TESTS / "support"
    assert support.is_dir()
    assert not [p for p in support.glob("*.py") if p.name.startswith("test_") or p.name == "conftest.py"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from tests.server.conftest import BASE_SETTINGS\n", ["x.py:1 imports tests.server.conftest"]),
        ("def f():\n    from tests.reliability.test_fuzz_grpc import N\n",
         ["x.py:2 imports tests.reliability.test_fuzz_grpc"]),
        ("import conftest\n", ["x.py:1 imports conftest"]),
        ("from tests.server import test_core\n", ["x.py:1 imports tests.server.test_core"]),
        ("from tests.support.servers import serving\nimport pytest\n", []),
    ],
)
def test_the_import_check_catches_what_it_should(
    source: str, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x.py").write_text(source, encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert import_violations(tmp_path / "x.py") == expected


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import pytest\n@pytest.fixture(scope='module')\ndef manifest():\n    pass\n", True),
        ("from pytest import fixture\n@fixture\nasync def start_server():\n    yield\n", True),
        ("import pytest\n@pytest.fixture\ndef server_settings():\n    pass\n", False),
        ("def manifest():\n    pass\n", False),
    ],
)
def test_the_fixture_check_catches_what_it_should(
    source: str, found: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x.py").write_text(source, encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert bool(fixture_violations(tmp_path / "x.py")) is found
