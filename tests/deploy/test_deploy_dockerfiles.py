"""The container images, checked without a container engine: the Dockerfiles are parsed by the real BuildKit
parser (the ``dockerfile`` package wraps it) and held to what the deployment needs."""

from __future__ import annotations

import fnmatch
import re
import sys
from typing import Any

import pytest

from tests.support.deploy import DEPLOY, ROOT, parse_dockerfile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOCKER = DEPLOY / "docker"
SERVING = ("Dockerfile.cpu", "Dockerfile.gpu")
ALL = (*SERVING, "Dockerfile.export")


def _stages(name: str) -> list[list[Any]]:
    """Instructions grouped by build stage."""
    stages: list[list[Any]] = []
    for cmd in parse_dockerfile(DOCKER / name):
        if cmd.cmd == "FROM":
            stages.append([])
        elif not stages:
            continue  # global ARGs
        stages[-1].append(cmd)
    return stages


def _runs(stage: list[Any]) -> str:
    return "\n".join(c.value[0] + "".join(h.content for h in c.heredocs) for c in stage if c.cmd == "RUN")


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", ALL)
def test_final_stage_runs_as_a_numeric_non_root_user(name: str) -> None:
    stages = _stages(name)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the image"
    users = [c.value[0] for c in stages[-1] if c.cmd == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    # Kubernetes' runAsNonRoot can only verify a numeric user.
    assert uid.isdigit() and int(uid) != 0, users[-1]


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_start_the_server_without_torch(name: str) -> None:
    stages = _stages(name)
    entry = [c for c in stages[-1] if c.cmd == "ENTRYPOINT"]
    assert entry and entry[-1].json and entry[-1].value == ("emotion-server",)
    exposed = {p for c in stages[-1] if c.cmd == "EXPOSE" for p in c.value}
    assert exposed == {"50051", "8000", "9090"}  # gRPC, HTTP (Open Inference Protocol REST), metrics
    runs = "\n".join(_runs(s) for s in stages)
    assert "torch" not in runs.replace("! pip show torch", ""), "the serving install carries no torch"
    assert "[export]" not in runs


def test_gpu_image_never_installs_the_cpu_onnxruntime() -> None:
    stages = _stages("Dockerfile.gpu")
    runs = "\n".join(_runs(s) for s in stages)
    # Every pip install of the project itself skips its dependencies (which name onnxruntime) ...
    for line in re.findall(r"pip install[^\n&]*", runs):
        if re.search(r"\s\.(\s|$|\[)", line + " "):
            assert "--no-deps" in line, line
        assert not re.search(r"\bonnxruntime(?![-\w])", line.replace("onnxruntime-gpu", "")), line
    # ... the requirements it installs instead are filtered of onnxruntime, and the build proves it.
    assert '!= "onnxruntime"' in runs and "! pip show onnxruntime" in runs
    assert "onnxruntime-gpu" in runs
    commands = parse_dockerfile(DOCKER / "Dockerfile.gpu")
    bases = [c.value[0] for c in commands if c.cmd == "FROM"]
    args = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
    assert all(args.get(b.strip("${}"), b).startswith("nvidia/cuda:") for b in bases)
    assert "cudnn" in args["CUDA_IMAGE"] and "runtime" in args["CUDA_IMAGE"]


def test_cpu_image_installs_the_project_with_its_server_extra() -> None:
    runs = "\n".join(_runs(s) for s in _stages("Dockerfile.cpu"))
    assert 'pip install ".[server]"' in runs
    assert "onnxruntime-gpu" not in runs


@pytest.mark.parametrize("name", ALL)
def test_build_context_holds_every_package_the_install_needs(name: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs = project["tool"]["setuptools"].get("package-dir", {})

    def source_dir(package: str) -> str:
        """The checkout folder a package is built from (package-dir maps it or one of its parents)."""
        parts = package.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in package_dirs:
                return str(package_dirs[".".join(parts[:n])]).split("/")[0]
        return parts[0]

    needed = {source_dir(p) for p in project["tool"]["setuptools"]["packages"]}
    needed |= {"pyproject.toml", project["project"]["readme"]}
    copied = {src.rstrip("/").removeprefix("./") for stage in _stages(name) for c in stage
              if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags) for src in c.value[:-1]}
    assert needed <= copied, f"missing from the build context copy: {sorted(needed - copied)}"
    ignored = _dockerignore()
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), f"{src} is in .dockerignore"


def test_dockerignore_keeps_models_and_environments_out() -> None:
    ignored = set(_dockerignore())
    assert {".git", ".venv", "models", "**/*.onnx", "**/*.pt"} <= ignored


def test_export_image_uses_cpu_torch_and_the_export_extra() -> None:
    stages = _stages("Dockerfile.export")
    runs = "\n".join(_runs(s) for s in stages)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    export_extra = project["project"]["optional-dependencies"]["export"]
    torch_pin = next(d for d in export_extra if d.startswith("torch"))
    commands = parse_dockerfile(DOCKER / "Dockerfile.export")
    args = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
    assert f'"{torch_pin}"' in runs and '--index-url "$TORCH_INDEX_URL"' in runs
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")  # the default; a mirror of it replaces it
    assert 'pip install ".[server,export]"' in runs
    entry = [c for c in stages[-1] if c.cmd == "ENTRYPOINT"]
    assert entry[-1].value == ("emotion-export",)


def _lines(name: str) -> list[str]:
    return (DOCKER / name).read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("name", ALL)
def test_no_frontend_image_is_fetched(name: str) -> None:
    # A "# syntax=" directive makes BuildKit pull a frontend image from a public registry first, which fails
    # behind a mirror; nothing in these files needs one.
    assert not any(re.match(r"#\s*syntax\s*=", line) for line in _lines(name))


@pytest.mark.parametrize(("name", "base_arg"), [
    ("Dockerfile.cpu", "BASE_IMAGE"), ("Dockerfile.export", "BASE_IMAGE"), ("Dockerfile.gpu", "CUDA_IMAGE"),
])
def test_base_image_and_package_index_are_build_arguments(name: str, base_arg: str) -> None:
    commands = parse_dockerfile(DOCKER / name)
    bases = [c.value[0] for c in commands if c.cmd == "FROM"]
    # A mirror replaces every stage's base.
    assert bases and all(b == "${" + base_arg + "}" for b in bases), bases
    global_args = [c.value[0].split("=")[0] for c in commands[: next(i for i, c in enumerate(commands)
                                                                      if c.cmd == "FROM")] if c.cmd == "ARG"]
    assert base_arg in global_args
    build = _stages(name)[0]
    stage_args = {c.value[0].split("=")[0] for c in build if c.cmd == "ARG"}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} <= stage_args
    runs = _runs(build)
    # Empty arguments fall back to pip's default index instead of an empty index URL.
    assert 'if [ -z "$PIP_INDEX_URL" ]; then unset PIP_INDEX_URL; fi' in runs
    assert 'if [ -z "$PIP_EXTRA_INDEX_URL" ]; then unset PIP_EXTRA_INDEX_URL; fi' in runs
    assert "PIP_INDEX_URL" in (DEPLOY / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ALL)
def test_runtime_image_carries_no_pip(name: str) -> None:
    stages = _stages(name)
    build_runs = _runs(stages[0])
    # The venv copied into the runtime stage had pip removed, and the build proved it.
    assert re.search(r"pip uninstall -y pip\b", build_runs)
    assert '! python -c "import pip"' in build_runs
    copies = [c for c in stages[-1] if c.cmd == "COPY" and any(f.startswith("--from") for f in c.flags)]
    assert [c.value for c in copies] == [("/opt/venv", "/opt/venv")]
    assert "pip install" not in _runs(stages[-1])


@pytest.mark.parametrize("name", ALL)
def test_fixed_uid_is_a_regular_account(name: str) -> None:
    runs = _runs(_stages(name)[-1])
    assert "useradd" in runs and "--uid 10001" in runs and "--gid 10001" in runs
    # --system with uid 10001 (outside SYS_UID_MIN..SYS_UID_MAX) makes useradd warn on every build.
    assert "--system" not in runs
