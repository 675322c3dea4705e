"""Keeps the rooms of docs/DESIGN.md ("The server as rooms") true by walking the imports of every module.

Everything here is computed from the code with ``ast``: the modules are found by walking the folders that
pyproject.toml maps into the package, each server module belongs to a room by its path, and every import
(at module level, under ``if TYPE_CHECKING:`` and inside functions alike) is checked against what its room
may import. A module that belongs to no room fails, so a new one cannot slip past the rules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "emotion2vec_serving"
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
MAX_LINES = 600

# ---------------------------------------------------------------------------------------------- the rooms
#: Where each server module lives, by path (longest prefix wins). docs/DESIGN.md draws the same picture.
ROOM_OF_PATH = {
    "server/__init__.py": "package",
    "server/defaults.py": "defaults",
    "server/audio/": "audio",
    "server/runtime/": "runtime",
    "server/metrics.py": "metrics",
    "server/tracing.py": "tracing",
    "server/auth.py": "auth",
    "server/tls.py": "tls",
    "server/config.py": "config",
    "server/calls/": "calls",
    "server/grpc/": "grpc",
    "server/http/": "http",
    "server/app.py": "app",
    "server/__main__.py": "main",
    "server/process.py": "process",
}
#: The standard-library-only modules of the light client that the server shares (wire constants, JSON
#: field names); the rest of clients/ is the client and never imported by the server.
SHARED_CLIENT_MODULES = ("clients.wire", "clients.schema")

#: The order of docs/DESIGN.md: a room may import only rooms on a lower level (never one on its own level
#: but itself: grpc/ and http/ never import each other, nor audio/ and runtime/).
LEVEL = {
    "defaults": 0, "batching": 0, "modelrepo": 0, "clients.wire": 0, "clients.schema": 0,
    "audio": 1, "runtime": 1, "metrics": 1, "tracing": 1, "tls": 1,
    "auth": 2,
    "config": 3,
    "calls": 4,
    "grpc": 5, "http": 5,
    "app": 6,
    "main": 7,
}

_BASE = frozenset({"defaults", "batching", "modelrepo", "clients.wire"})
_BELOW_CALLS = _BASE | {"audio", "runtime", "metrics", "tracing", "config"}
_FRONT_END = _BELOW_CALLS | {"calls", "auth", "tls", "clients.schema"}
#: Room -> the rooms (and shared packages) it may import, besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "package": frozenset(),  # server/__init__.py imports nothing: importing any server module runs it
    "defaults": frozenset(),
    "audio": _BASE,
    "runtime": _BASE,
    "metrics": _BASE,
    "tracing": _BASE,  # the core hands it opaque call traces; the runner gets its batch hook from app
    "auth": _BASE | {"metrics", "tls"},  # counts each refusal once; refuses a half-configured token file
    "tls": _BASE,
    "config": _BASE | {"audio", "runtime", "metrics", "auth", "tls"},
    "calls": _BELOW_CALLS,
    "grpc": _FRONT_END,
    "http": _FRONT_END,
    "app": _FRONT_END | {"grpc", "http"},
    "main": _FRONT_END | {"grpc", "http", "app"},
    "process": frozenset(),  # the child-process harness loads none of the server's own code
}

GRPC_LIBS = frozenset({"grpc", "grpc_health", "grpc_reflection"})
PROTOBUF = frozenset({"emotion", "google"})  # the generated stubs and the protobuf runtime
HTTP_LIBS = frozenset({"aiohttp", "multidict", "yarl"})
PROTOCOL_LIBS = GRPC_LIBS | PROTOBUF | HTTP_LIBS | {"starlette", "uvicorn", "fastapi", "tritonclient"}
ENGINE_LIBS = frozenset({"onnxruntime", "openvino", "av", "soundfile", "soxr"})
#: Never in the serving process: the exporter's stack.
SERVING_FORBIDDEN = frozenset({"torch", "funasr", "onnx", "yaml", "tritonclient"})
#: Room -> the third-party libraries it may import (the standard library always); None: any but
#: SERVING_FORBIDDEN.
EXTERNAL: dict[str, frozenset[str] | None] = {
    "package": frozenset(),
    "defaults": frozenset(),
    "audio": frozenset({"numpy"}) | ENGINE_LIBS,
    "runtime": frozenset({"numpy"}) | ENGINE_LIBS,
    "metrics": frozenset({"prometheus_client"}),
    "tracing": frozenset({"opentelemetry"}),  # optional (server extra), imported only when tracing is on
    "auth": frozenset(),  # tokens only: the gRPC interceptor is grpc/auth.py, so http/ loads no grpc
    "tls": frozenset(),
    "config": frozenset(),
    "calls": frozenset({"numpy"}),
    "grpc": frozenset({"numpy"}) | GRPC_LIBS | PROTOBUF,
    "http": frozenset({"numpy"}) | HTTP_LIBS,
    "app": None,
    "main": None,
    "process": GRPC_LIBS,
}
#: Imports allowed inside a function: optional or heavy third-party libraries only (never a server module,
#: which would hide an import circle, and nothing that could as well be imported at the top).
FUNCTION_LEVEL_OK = ENGINE_LIBS | {"aiohttp", "prometheus_client", "opentelemetry"} | GRPC_LIBS


# --------------------------------------------------------------------------------------- reading the code
@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    path: str  # its file, relative to the checkout
    line: int
    target: str  # the imported module, dotted (a name imported from a module counts as that module)
    in_function: bool
    type_checking: bool

    def where(self) -> str:
        how = (" (inside a function)" if self.in_function
               else " (under TYPE_CHECKING)" if self.type_checking else "")
        return f"{self.path}:{self.line} imports {self.target}{how}"


@cache
def _package_dirs() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(project["tool"]["setuptools"]["package-dir"])


@cache
def modules() -> dict[str, Path]:
    """Every module of the distribution, dotted name -> file, found by walking the mapped folders."""
    found: dict[str, Path] = {}
    for package, folder in _package_dirs().items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    assert any(name.startswith(f"{NAMESPACE}.server.") for name in found), "no server module found"
    return found


def _is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    path = modules()[module]
    rel = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    package = module if _is_package(module) else module.rpartition(".")[0]
    known = modules()
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, rel, node.lineno, alias.name, in_function, type_checking))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                target = sub if sub in known else origin  # ``from pkg import module`` imports pkg.module
                found.append(Import(module, rel, node.lineno, target, in_function, type_checking))
        for child in ast.iter_child_nodes(node):
            visit(child,
                  in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
                  type_checking or (isinstance(node, ast.If) and _is_type_checking(node.test)
                                    and child in node.body))

    visit(tree, False, False)
    return tuple(found)


def unit(target: str) -> str:
    """What the rules talk about: a server room, a shared package (``batching``, ``clients.wire``), the
    rest of ``clients``/``export``, or a library's top-level name (``grpc`` for ``grpc.aio``)."""
    parts = target.split(".")
    if parts[0] != NAMESPACE:
        return parts[0]
    if len(parts) == 1:
        return NAMESPACE
    if parts[1] == "server":
        return room(target) if target in modules() else "server?"
    if parts[1] == "clients":
        dotted = ".".join(parts[1:3])
        return dotted if dotted in SHARED_CLIENT_MODULES else "clients"
    return parts[1]


def server_modules() -> list[str]:
    return sorted(m for m in modules() if m == f"{NAMESPACE}.server" or m.startswith(f"{NAMESPACE}.server."))


def room(module: str) -> str:
    rel = modules()[module].relative_to(ROOT).as_posix()
    matches = [prefix for prefix in ROOM_OF_PATH
               if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix))]
    if not matches:
        pytest.fail(f"{rel} belongs to no room: place it in ROOM_OF_PATH here and in docs/DESIGN.md")
    return ROOM_OF_PATH[max(matches, key=len)]


def _rel(module: str) -> str:
    return modules()[module].relative_to(ROOT).as_posix()


def _package_modules(package: str) -> list[str]:
    found = [m for m in modules()
             if m == f"{NAMESPACE}.{package}" or m.startswith(f"{NAMESPACE}.{package}.")]
    assert found, f"{package}/ has no modules"
    return sorted(found)


# ---------------------------------------------------------------------------------------------- the rules
def test_the_room_rules_point_downward() -> None:
    """The rules themselves: every allowed import goes to a lower level, so the rooms cannot form a circle."""
    for name, allowed in ALLOWED.items():
        if name in LEVEL:
            upward = sorted(a for a in allowed if LEVEL[a] >= LEVEL[name])
            assert not upward, f"room {name} may import {upward} on its own level or above"


@pytest.mark.parametrize("module", server_modules())
def test_each_server_module_imports_only_what_its_room_may(module: str) -> None:
    own = room(module)
    bad = []
    for imp in imports_of(module):
        what = unit(imp.target)
        if what in STDLIB:
            continue
        if imp.target.startswith(NAMESPACE + ".") or what == NAMESPACE:
            if what != own and what not in ALLOWED[own]:
                bad.append(f"{imp.where()}: room {own} may not import room {what}")
        else:
            external = EXTERNAL[own]
            if external is None:
                if what in SERVING_FORBIDDEN:
                    bad.append(f"{imp.where()}: the serving process never loads {what}")
            elif what not in external:
                bad.append(f"{imp.where()}: room {own} may not import the library {what}")
    assert not bad, "\n".join(bad)


def test_the_protocol_free_core_names_no_protocol_library() -> None:
    """calls/, audio/ and runtime/ import no grpc, protobuf (``emotion.*``, ``google.*``) or HTTP library,
    not even for type checking."""
    bad = [imp.where() for m in server_modules() if room(m) in {"calls", "audio", "runtime"}
           for imp in imports_of(m) if unit(imp.target) in PROTOCOL_LIBS]
    assert not bad, "\n".join(bad)


def test_the_core_loads_without_protocol_libraries() -> None:
    """Importing every module of the core (transitively) loads neither grpc, the stubs, protobuf nor an HTTP
    library. The openvino engine module is imported too: it is core, only optional."""
    core = [m for m in server_modules() if room(m) in {"calls", "audio", "runtime"}]
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(PROTOCOL_LIBS)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the core pulled in: {out.stdout.strip()}"


def test_a_server_without_otel_variables_loads_no_opentelemetry() -> None:
    """Tracing is off by default and costs no import: the whole server (app, both front ends, the core)
    loads without OpenTelemetry, and ``tracing.from_env`` with no ``OTEL_*`` variable turns nothing on."""
    code = (
        "import sys\n"
        "import emotion2vec_serving.server.app\n"
        "from emotion2vec_serving.server import tracing\n"
        "assert tracing.from_env({}) is None\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"a server with tracing off loaded: {out.stdout.strip()}"


#: Server modules that may be imported inside a function, each for a reason that is not an import circle
#: (the circle test counts these imports all the same).
LAZY_SERVER_MODULES = {
    # The optional engine: that module imports OpenVINO at its top, so a default server never loads it.
    ("emotion2vec_serving.server.runtime.engines", "emotion2vec_serving.server.runtime.engines.openvino"),
    # The entry point tells a light-client install that the server extra is missing before it imports the
    # server's dependencies (onnxruntime, aiohttp, ...), and keeps --help fast.
    ("emotion2vec_serving.server.__main__", "emotion2vec_serving.server.app"),
}


@pytest.mark.parametrize("module", server_modules())
def test_function_level_imports_are_optional_libraries_only(module: str) -> None:
    """Function-level imports hide import circles; they are kept for optional or heavy third-party libraries
    (an engine chosen by a flag, a decoder, aiohttp, prometheus_client, grpc internals) and the few server
    modules of ``LAZY_SERVER_MODULES``."""
    bad = [f"{imp.where()}: only {sorted(FUNCTION_LEVEL_OK)} may be imported inside a function"
           for imp in imports_of(module) if imp.in_function and unit(imp.target) not in FUNCTION_LEVEL_OK
           and (module, imp.target) not in LAZY_SERVER_MODULES]
    assert not bad, "\n".join(bad)


def _graph() -> dict[str, dict[str, Import]]:
    """Server module -> the server modules it imports (with one import that does it). Importing a.b.c also
    runs the packages a and a.b, so those count too, unless they are the importer's own parents. Imports
    under TYPE_CHECKING and inside functions count: they name a dependency all the same."""
    server = set(server_modules())
    graph: dict[str, dict[str, Import]] = {m: {} for m in server}
    for module in server:
        parents = {".".join(module.split(".")[:n]) for n in range(1, module.count(".") + 1)}
        if _is_package(module):
            parents.add(module)
        for imp in imports_of(module):
            parts = imp.target.split(".")
            for n in range(2, len(parts) + 1):
                target = ".".join(parts[:n])
                if target in server and target not in parents and target != module:
                    graph[module].setdefault(target, imp)
    return graph


def _circles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _cycle(graph: dict[str, dict[str, Import]], component: Iterable[str]) -> list[Import]:
    """One concrete cycle through the first module of a component, as the imports that make it."""
    members = set(component)
    start = min(members)
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w, imp in sorted(graph[v].items()):
            if w == start:
                return [*paths[v], imp]
            if w in members and w not in paths:
                paths[w] = [*paths[v], imp]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def test_no_import_circle_among_server_modules() -> None:
    graph = _graph()
    circles = _circles(graph)
    report = [" -> ".join(_rel(m) for m in component) + ":\n    "
              + "\n    ".join(i.where() for i in _cycle(graph, component)) for component in circles]
    assert not circles, "import circles:\n" + "\n".join(report)


@pytest.mark.parametrize("module", server_modules())
def test_no_server_module_is_over_600_lines(module: str) -> None:
    lines = len(modules()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_rel(module)} has {lines} lines (at most {MAX_LINES}): split it by role"


# ------------------------------------------------------------------------------- the packages around it
def _outside_stdlib(package: str, allowed: set[str]) -> list[str]:
    return [imp.where() for m in _package_modules(package) for imp in imports_of(m)
            if unit(imp.target) not in STDLIB | allowed]


def test_batching_uses_only_the_standard_library() -> None:
    bad = _outside_stdlib("batching", {"batching"})
    assert not bad, "\n".join(bad)


def test_the_model_repository_contract_uses_only_the_standard_library() -> None:
    bad = _outside_stdlib("modelrepo", {"modelrepo"})
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("shared", SHARED_CLIENT_MODULES)
def test_the_client_modules_the_server_shares_use_only_the_standard_library(shared: str) -> None:
    module = f"{NAMESPACE}.{shared}"
    assert module in modules(), f"{shared.replace('.', '/')}.py does not exist"
    bad = [imp.where() for imp in imports_of(module) if unit(imp.target) not in STDLIB]
    assert not bad, "\n".join(bad)


def test_the_shared_client_modules_load_no_grpc() -> None:
    """``clients/__init__`` is lazy: importing the shared modules loads nothing but the standard library."""
    shared = [f"{NAMESPACE}.{s}" for s in SHARED_CLIENT_MODULES if f"{NAMESPACE}.{s}" in modules()]
    assert shared, "no shared client module"
    code = (
        "import importlib, sys\n"
        f"for name in {shared!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = ('grpc', 'google', 'emotion', 'numpy', 'tqdm')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {shared} pulled in: {out.stdout.strip()}"


#: package -> what it must never import (units: see ``unit``; ``clients`` is the client beyond the shared
#: modules). Outside server/, any server module counts as ``server``.
FORBIDDEN = {
    "server": {"torch", "funasr", "export", "clients", "onnx", "yaml"},
    "clients": {"torch", "funasr", "export", "server", "onnxruntime"},
    "export": {"clients", *SHARED_CLIENT_MODULES, "server"},
    "modelrepo": {"torch", "export", "server", "clients", "batching", "numpy", "onnx", "onnxruntime"},
}


def _forbidden_unit(imp: Import, package: str) -> str | None:
    what = unit(imp.target)
    if package != "server" and imp.target.startswith(f"{NAMESPACE}.server"):
        return "server"
    return what if what in FORBIDDEN[package] else None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_forbidden_imports(package: str) -> None:
    """The server never imports torch, the exporter or the client (beyond the shared modules); the client
    never the server; the exporter neither; modelrepo nothing of the project."""
    bad = [f"{imp.where()}: {package}/ never imports {found}" for m in _package_modules(package)
           for imp in imports_of(m) if (found := _forbidden_unit(imp, package))]
    assert not bad, "\n".join(bad)


def test_the_exporter_never_loads_the_server() -> None:
    code = (
        "import sys\n"
        "import emotion2vec_serving.export.cli, emotion2vec_serving.export.demo\n"
        "import emotion2vec_serving.export.onnx_export, emotion2vec_serving.export.verify\n"
        "print(any(m.startswith('emotion2vec_serving.server') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", "the exporter imported the server package"


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
    importers = sorted({_rel(m) for m in server_modules()
                        for imp in imports_of(m) if unit(imp.target) == "openvino"})
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


def test_the_oip_stubs_stay_in_the_oip_grpc_front_end() -> None:
    """The ``emotion.oip`` stubs (package ``inference``, like tritonclient's own: one process cannot load
    both) only in the OIP gRPC front end, never in the client or the core."""
    users = sorted({_rel(m) for pkg in ("server", "clients", "batching", "modelrepo")
                    for m in _package_modules(pkg) for imp in imports_of(m)
                    if imp.target == "emotion.oip" or imp.target.startswith("emotion.oip.")})
    assert users == ["server/grpc/oip.py"], users


def test_gpu_options_and_length_buckets_need_no_gpu_library() -> None:
    """server/runtime/buckets.py and server/runtime/gpu.py (issue 15) load on any machine: standard library
    only (and the server's own modules); NVML is reached through ctypes, only when a GPU provider is asked
    for."""
    for name in ("buckets", "gpu"):
        module = f"{NAMESPACE}.server.runtime.{name}"
        bad = [imp.where() for imp in imports_of(module)
               if unit(imp.target) not in STDLIB and not imp.target.startswith(f"{NAMESPACE}.")]
        assert not bad, "\n".join(bad)
