"""Keeps the dependency direction of docs/DESIGN.md true by walking the imports of every module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# package -> top-level modules it must never import
FORBIDDEN = {
    "server": {"torch", "funasr", "export", "clients", "onnx", "yaml"},
    "clients": {"torch", "funasr", "export", "server", "onnxruntime"},
    "export": {"clients", "server"},
    "modelrepo": {"torch", "export", "server", "clients", "batching", "numpy", "onnx", "onnxruntime"},
}
#: The protocol-free core: no gRPC, no protobuf stubs (``emotion``), no HTTP library.
PROTOCOL_FREE = ("server/calls/core.py", "server/calls/streams.py", "server/calls/errors.py",
                 "server/calls/longform.py")
PROTOCOL_MODULES = {"grpc", "grpc_health", "grpc_reflection", "google", "emotion", "aiohttp", "starlette",
                    "uvicorn", "fastapi", "tritonclient"}


NAMESPACE = "emotion2vec_serving"


def _top(module: str) -> str:
    """The package of a module: ``emotion2vec_serving.server.app`` -> ``server``, ``grpc.aio`` -> ``grpc``."""
    parts = module.split(".")
    if parts[:3] in ([NAMESPACE, "clients", "wire"], [NAMESPACE, "clients", "schema"]):
        # the wire constants and the result JSON schema shared with the light client (standard library only)
        return ".".join(parts[1:3])
    if parts[0] == NAMESPACE and len(parts) > 1:
        return parts[1]
    return parts[0]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_top(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(_top(node.module))
    return found


def _modules(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    return files


def test_batching_uses_only_the_standard_library() -> None:
    for path in _modules("batching"):
        outside = _imports(path) - STDLIB - {"batching"}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_the_model_repository_contract_uses_only_the_standard_library() -> None:
    for path in _modules("modelrepo"):
        outside = _imports(path) - STDLIB - {"modelrepo"}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


@pytest.mark.parametrize("module", PROTOCOL_FREE)
def test_the_core_imports_no_protocol_library(module: str) -> None:
    bad = _imports(ROOT / module) & PROTOCOL_MODULES
    assert not bad, f"{module} imports {sorted(bad)}"


def test_the_core_loads_without_protocol_libraries() -> None:
    """Importing the core (transitively) loads neither grpc, the stubs, nor an HTTP library."""
    code = (
        "import sys\n"
        "import emotion2vec_serving.server.calls.core, emotion2vec_serving.server.calls.streams\n"
        "bad = sorted(m for m in ('grpc', 'emotion', 'google.protobuf', 'aiohttp') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"the core pulled in: {out.stdout.strip()}"


def test_the_exporter_never_loads_the_server() -> None:
    code = (
        "import sys\n"
        "import emotion2vec_serving.export.cli, emotion2vec_serving.export.demo\n"
        "import emotion2vec_serving.export.onnx_export, emotion2vec_serving.export.verify\n"
        "print(any(m.startswith('emotion2vec_serving.server') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", "the exporter imported the server package"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_forbidden_imports(package: str) -> None:
    for path in _modules(package):
        bad = _imports(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_serving_process_never_loads_torch_or_the_exporter() -> None:
    code = (
        "import sys, emotion2vec_serving.server.app, emotion2vec_serving.server.__main__\n"
        "import emotion2vec_serving.clients.cli\n"
        "bad = sorted(m for m in ('torch', 'funasr', 'emotion2vec_serving.export', 'onnx', 'openvino')\n"
        "             if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"serving imports pulled in: {out.stdout.strip()}"


def test_only_the_openvino_engine_module_imports_openvino() -> None:
    """OpenVINO is an optional engine: one module imports it, and only ``--engine openvino`` loads that."""
    importers = [p.relative_to(ROOT).as_posix() for p in _modules("server") if "openvino" in _imports(p)]
    assert importers == ["server/runtime/engines/openvino.py"], importers


def test_a_default_server_builds_its_runner_without_openvino() -> None:
    """Building a default (ONNX Runtime) session factory must not pull OpenVINO in; choosing it does."""
    code = (
        "import sys\n"
        "from emotion2vec_serving.server.runtime.engines import session_factory_for\n"
        "session_factory_for('onnxruntime')\n"
        "before = 'openvino' in sys.modules\n"
        "session_factory_for('openvino')\n"
        "print(before, 'openvino' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "True"], out.stdout



def test_the_oip_model_contract_imports_no_protocol_library() -> None:
    """The Open Inference Protocol contract both OIP front ends share is protocol-free like the core."""
    bad = _imports(ROOT / "server/calls/tensors.py") & {"grpc", "google", "emotion", "aiohttp"}
    assert not bad, f"server/calls/tensors.py imports {sorted(bad)}"


def test_the_http_library_and_the_oip_stubs_stay_in_their_front_ends() -> None:
    """aiohttp only in the HTTP front ends; the ``emotion.oip`` stubs (package ``inference``, like
    tritonclient's own: one process cannot load both) only in the OIP gRPC front end, never in clients."""
    aiohttp_users = {p.relative_to(ROOT).as_posix() for p in _modules("server") if "aiohttp" in _imports(p)}
    assert all(p.startswith("server/http/") for p in aiohttp_users), aiohttp_users
    oip_users = sorted(p.relative_to(ROOT).as_posix() for pkg in ("server", "clients", "batching")
                       for p in _modules(pkg) if "emotion.oip" in p.read_text(encoding="utf-8"))
    assert oip_users == ["server/grpc/oip.py"], oip_users


def test_gpu_options_and_length_buckets_need_no_gpu_library() -> None:
    """server/runtime/buckets.py and server/runtime/gpu.py (issue 15) load on any machine: standard library
    only (gpu.py also the server package itself); NVML is reached through ctypes, only when a GPU provider is
    asked for."""
    for name in ("buckets.py", "gpu.py"):
        outside = _imports(ROOT / "server" / "runtime" / name) - STDLIB - {"server"}
        assert not outside, f"server/runtime/{name} imports {sorted(outside)}"
