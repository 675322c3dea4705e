"""The container images, checked without a container engine: the Dockerfiles are parsed by the real BuildKit
parser (the ``dockerfile`` package wraps it) and held to what the deployment needs."""

from __future__ import annotations

import fnmatch
import re
import sys
from typing import Any

import dockerfile
import pytest
from deploy_support import DEPLOY, ROOT

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
    for cmd in dockerfile.parse_file(str(DOCKER / name)):
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
    assert exposed == {"50051", "9090"}
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
    commands = dockerfile.parse_file(str(DOCKER / "Dockerfile.gpu"))
    bases = [c.value[0] for c in commands if c.cmd == "FROM"]
    args = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
    assert all(args.get(b.strip("${}"), b).startswith("nvidia/cuda:") for b in bases)
    assert "cudnn" in args["CUDA_IMAGE"] and "runtime" in args["CUDA_IMAGE"]


def test_cpu_image_installs_the_plain_project() -> None:
    runs = "\n".join(_runs(s) for s in _stages("Dockerfile.cpu"))
    assert re.search(r"pip install \.(\s|$)", runs)
    assert "onnxruntime-gpu" not in runs


@pytest.mark.parametrize("name", ALL)
def test_build_context_holds_every_package_the_install_needs(name: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs = project["tool"]["setuptools"].get("package-dir", {})
    needed = {package_dirs.get(p.split(".")[0], p.split(".")[0]).split("/")[0]
              for p in project["tool"]["setuptools"]["packages"]}
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
    assert f'"{torch_pin}"' in runs and "whl/cpu" in runs
    assert 'pip install ".[export]"' in runs
    entry = [c for c in stages[-1] if c.cmd == "ENTRYPOINT"]
    assert entry[-1].value == ("emotion-export",)
