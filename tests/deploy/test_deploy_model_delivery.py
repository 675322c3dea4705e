"""Model delivery in the Kubernetes manifests: by default a Job exports the model once onto a volume that
the pods mount read-only and wait for; components swap that for a modelcar image, a per-pod init-container
export (memory above the measured peak) or a volume filled by hand. The Job's own script is run here for
real (with the demo model) and the server then serves what it wrote."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from emotion2vec_serving.modelrepo import MANIFEST_FILE, load_manifest
from emotion2vec_serving.server.process import ServerProcess
from tests.support.deploy import DEPLOY, K8S, OVERLAYS, ROOT, find, kustomize

RESULTS = ROOT / "benchmarks" / "RESULTS_export.md"
GIB = 1 << 30
COMPONENTS = ("model-volume", "init-export", "modelcar")


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity)
    assert match, quantity
    return int(float(match.group(1)) * units.get(match.group(2) or "", 1))


def _measured_peak_gb(what: str) -> float:
    """Peak RSS recorded in benchmarks/RESULTS_export.md for the row that starts with ``what``."""
    for line in RESULTS.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| {what} |"):
            return float(re.findall(r"([\d.]+) GB", line.split("|")[3])[0])
    raise AssertionError(f"no '{what}' row in {RESULTS}")


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment", "emotion-server")["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _server_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    server = next(c for c in _pod(objects)["containers"] if c["name"] == "server")
    env: dict[str, str] = {}
    for source in server.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    return env


def _with_component(tmp_path: Path, component: str, overlay: str = "cpu") -> list[dict[str, Any]]:
    here = tmp_path / f"{component}-{overlay}"
    here.mkdir()
    (here / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(K8S / 'overlays' / overlay, here)}\n"
        f"components:\n  - {os.path.relpath(K8S / 'components' / component, here)}\n",
        encoding="utf-8")
    objects = kustomize(here)
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com"):
            continue
        for version in ("1.27.0", "1.37.0"):
            kubernetes_validate.validate(obj, version, strict=True)
    return objects


def _kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_exports_once_onto_the_volume_the_pods_mount_read_only(overlay: str) -> None:
    objects = kustomize(K8S / "overlays" / overlay)
    job = find(objects, "Job", "emotion-model-export")["spec"]["template"]["spec"]
    pvc = find(objects, "PersistentVolumeClaim", "emotion-model-repository")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    pod = _pod(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["model-repository"]["persistentVolumeClaim"]
    assert claim == {"claimName": "emotion-model-repository", "readOnly": True}
    job_claims = {v["persistentVolumeClaim"]["claimName"] for v in job["volumes"]
                  if "persistentVolumeClaim" in v}
    assert job_claims == {"emotion-model-repository"}
    # Nothing in the server pod exports or downloads: it waits for the repository, then loads it.
    (wait,) = pod["initContainers"]
    assert wait["name"] == "wait-for-model" and "emotion-export" not in str(wait)
    assert wait["image"] == next(c for c in pod["containers"] if c["name"] == "server")["image"]
    (export,) = job["containers"]
    assert export["image"] != wait["image"], "the export needs torch: its own image"
    script = export["args"][0]
    target = re.search(r"^target=(\S+)$", script, re.M)
    assert target and target.group(1) == _server_env(objects)["EMOTION_MODEL"]
    # Memory above the measured peak of the export with its FunASR parity check.
    peak = _measured_peak_gb("verify (FunASR parity check)")
    assert _memory_bytes(export["resources"]["limits"]["memory"]) > peak * 1e9 * 1.1
    env = {e["name"]: e["value"] for e in export["env"]}
    assert env["EMOTION_CHECKPOINT"] == "emotion2vec_plus_large" and env["EMOTION_REVISION"] == ""
    # The hubs' caches are on the volume: downloads resume across Job restarts.
    assert env["HF_HOME"].startswith("/models/") and env["MODELSCOPE_CACHE"].startswith("/models/")
    # Its own step, and nine emotions required of both the download and the export.
    assert re.search(r"emotion-export download .*--require-labels 9", script)
    assert re.search(r"emotion-export onnx .*--require-labels 9", script)


def _shim(directory: Path) -> Path:
    """An ``emotion-export`` on PATH that runs this checkout's exporter (what the export image has)."""
    directory.mkdir()
    shim = directory / "emotion-export"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m emotion2vec_serving.export.cli "$@"\n',
                    encoding="utf-8")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return directory


def test_the_jobs_script_with_the_demo_model_writes_what_the_server_serves(tmp_path: Path) -> None:
    objects = kustomize(K8S / "overlays" / "cpu")
    export = find(objects, "Job", "emotion-model-export")["spec"]["template"]["spec"]["containers"][0]
    models = tmp_path / "models"
    models.mkdir()
    script = export["args"][0].replace("/models", str(models))
    env = {**os.environ, "EMOTION_CHECKPOINT": "demo", "EMOTION_REVISION": "",
           "PATH": f"{_shim(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    repository = models / "repository"
    assert (repository / MANIFEST_FILE).is_file() and not (models / ".export-in-progress").exists()
    stamp = (repository / "model.onnx").stat().st_mtime_ns
    again = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60,
                           check=False, cwd=ROOT)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert (repository / "model.onnx").stat().st_mtime_ns == stamp  # an existing repository is kept
    # The pod's wait-for-model script returns at once now that the manifest is there ...
    wait = _pod(objects)["initContainers"][0]
    waited = subprocess.run([sys.executable, "-c", wait["args"][0]], env={"EMOTION_MODEL": str(repository)},
                            capture_output=True, text=True, timeout=30, check=False)
    assert waited.returncode == 0, waited.stderr
    # ... and the server serves the repository at EMOTION_MODEL.
    with ServerProcess(repository, startup_timeout_s=120) as server:
        assert server.scrape()  # SERVING (start() waited for it) and its metrics answer
    assert load_manifest(repository).untrained


def test_demo_command_and_server_agree_on_the_repository_path(tmp_path: Path) -> None:
    # Before issue 14, `emotion-export demo --out DIR` wrote DIR/repo, and the server given DIR exited 2.
    out = tmp_path / "models" / "repository"
    done = subprocess.run([sys.executable, "-m", "emotion2vec_serving.export.cli", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == out and (out / MANIFEST_FILE).is_file()
    with ServerProcess(out, startup_timeout_s=120) as server:
        assert server.scrape()
    # `--model demo` builds into <cache>/demo with the same command and serves it.
    cache = ["--model-cache-dir", str(tmp_path / "cache")]
    with ServerProcess("demo", cache, startup_timeout_s=300) as server:
        assert server.scrape()
    assert load_manifest(tmp_path / "cache" / "demo").untrained
    # The documented commands use the path the server loads.
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "demo --out /models/repository" in readme or "EMOTION_CHECKPOINT=demo" in readme
    assert "/models/repository/repo" not in readme


def test_model_volume_component_drops_the_job_and_keeps_the_volume(tmp_path: Path) -> None:
    objects = _with_component(tmp_path, "model-volume")
    assert "Job" not in _kinds(objects) and "PersistentVolumeClaim" in _kinds(objects)
    pod = _pod(objects)
    assert [c["name"] for c in pod["initContainers"]] == ["wait-for-model"]
    assert {v["name"] for v in pod["volumes"]} == {"model-repository", "tmp"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_init_export_component_exports_in_the_pod_with_memory_above_the_peak(
    tmp_path: Path, overlay: str
) -> None:
    objects = _with_component(tmp_path, "init-export", overlay)
    assert not {"Job", "PersistentVolumeClaim"} & _kinds(objects)
    pod = _pod(objects)
    (export,) = pod["initContainers"]
    args = export["args"]
    assert export["command"] == ["emotion-export"] and args[0] == "onnx" and "--no-verify" in args
    assert args[args.index("--out") + 1] == _server_env(objects)["EMOTION_MODEL"]
    peak = _measured_peak_gb("onnx fp32 (load, trace, deviation check)")
    assert _memory_bytes(export["resources"]["limits"]["memory"]) > peak * 1e9 * 1.2
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["model-repository"] and "emptyDir" in volumes["export-scratch"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_modelcar_component_copies_the_image_into_the_servers_model_path(
    tmp_path: Path, overlay: str
) -> None:
    objects = _with_component(tmp_path, "modelcar", overlay)
    assert not {"Job", "PersistentVolumeClaim"} & _kinds(objects)
    pod = _pod(objects)
    (copy,) = pod["initContainers"]
    assert copy["image"] == "emotion2vec-model"  # named by the overlay's images:
    source, target = copy["command"][-2:]
    mount = next(m for m in copy["volumeMounts"] if m["name"] == "model-repository")
    assert target.rstrip("/") == mount["mountPath"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    server_mount = next(m for m in server["volumeMounts"] if m["name"] == "model-repository")
    landed = server_mount["mountPath"] + "/" + Path(source).name
    assert landed == _server_env(objects)["EMOTION_MODEL"]
    # The image the Dockerfile builds holds the repository where the init container copies it from.
    dockerfile = (DEPLOY / "docker" / "Dockerfile.modelcar").read_text(encoding="utf-8")
    assert re.search(rf"^COPY repository {re.escape(source)}$", dockerfile, re.M)
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
