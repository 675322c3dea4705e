"""The front ends' layering (issue 20): grpc/ and http/ never import each other; the bearer-token check
(server/auth.py) and TLS (server/tls.py) are protocol-free; the result JSON schema (clients/schema.py) is
standard library only, so the light client ships it and the server imports it without loading gRPC."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.test_layering import ROOT, STDLIB, _imports, _modules

_NAMESPACE = "emotion2vec_serving."


def _server_imports(path: str) -> set[str]:
    """The server sub-packages/modules a file imports (``grpc``, ``http``, ``auth``...)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["emotion2vec_serving", "server"] and len(parts) > 2:
                found.add(parts[2])
    return found


@pytest.mark.parametrize(("package", "other"), [("grpc", "http"), ("http", "grpc")])
def test_the_grpc_and_http_front_ends_do_not_import_each_other(package: str, other: str) -> None:
    for path in _modules(f"server/{package}"):
        rel = path.relative_to(ROOT).as_posix()
        assert other not in _server_imports(rel), f"{rel} imports server.{other}"


@pytest.mark.parametrize("module", ["server/auth.py", "server/tls.py"])
def test_auth_and_tls_import_no_protocol_library(module: str) -> None:
    bad = _imports(ROOT / module) & {"grpc", "grpc_health", "grpc_reflection", "google", "emotion", "aiohttp"}
    assert not bad, f"{module} imports {sorted(bad)}"
    assert not _server_imports(module) & {"grpc", "http", "calls", "app", "config"}, module


def test_the_result_schema_is_standard_library_only_and_loads_no_grpc() -> None:
    outside = _imports(ROOT / "clients" / "schema.py") - STDLIB
    assert not outside, f"clients/schema.py imports {sorted(outside)}"
    code = (
        "import sys\n"
        f"import {_NAMESPACE}clients.schema\n"
        "bad = ('grpc', 'numpy', 'emotion', 'google.protobuf')\n"
        "print(','.join(sorted(m for m in bad if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"clients.schema pulled in: {out.stdout.strip()}"


def test_the_server_imports_only_wire_and_schema_from_the_client() -> None:
    for path in _modules("server"):
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if line.startswith(("from emotion2vec_serving.clients", "import emotion2vec_serving.clients")):
                module = line.split()[1]
                assert module in (f"{_NAMESPACE}clients.wire", f"{_NAMESPACE}clients.schema"), (path, line)


@pytest.mark.parametrize("package", ["server/grpc", "server/http"])
def test_front_end_modules_stay_small(package: str) -> None:
    for path in _modules(package):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 600, f"{path.relative_to(ROOT)} has {lines} lines"
