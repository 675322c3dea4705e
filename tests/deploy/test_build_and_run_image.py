"""deploy/build_and_run_image.sh runs the CPU image the way the pod does. Checked here without a container
engine (the script's `podman run` flags against the rendered pod spec, and its syntax); the script itself
runs only where podman, runc and root are available (slow: it builds an image)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.deploy import DEPLOY, K8S, ROOT, find, kustomize

SCRIPT = DEPLOY / "build_and_run_image.sh"


def _run_flags() -> str:
    text = SCRIPT.read_text(encoding="utf-8")
    block = re.search(r'^"\$\{PODMAN\[@\]\}" run -d .*?"\$IMAGE"', text, re.M | re.S)
    assert block, "no `podman run -d ... $IMAGE` in the script"
    return block.group(0)


def _server(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = find(objects, "Deployment", "emotion-server")["spec"]["template"]["spec"]
    return pod, next(c for c in pod["containers"] if c["name"] == "server")


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    assert os.access(SCRIPT, os.X_OK)


def test_container_runs_with_the_pods_security_settings() -> None:
    pod, server = _server(kustomize(K8S / "overlays" / "cpu"))
    flags = _run_flags()
    user, group = pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    assert f"--user {user}:{group}" in flags
    ctx = server["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and "--read-only" in flags
    assert ctx["capabilities"]["drop"] == ["ALL"] and "--cap-drop ALL" in flags
    assert ctx["allowPrivilegeEscalation"] is False and "--security-opt no-new-privileges" in flags
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert "/tmp" in mounts and re.search(r"--tmpfs /tmp\b", flags)
    assert mounts["/models"]["readOnly"] is True and re.search(r'-v "\$WORK/models:/models:ro"', flags)
    # The demo model lands where the image's (and the pod's) EMOTION_MODEL points.
    text = SCRIPT.read_text(encoding="utf-8")
    # It is delivered as components/modelcar delivers it: the model image's own copy command, as uid 10001.
    assert 'demo --out "$WORK/modelcar/repository"' in text
    component = yaml.safe_load((K8S / "components" / "modelcar" / "kustomization.yaml").read_text())
    ops = next(yaml.safe_load(p["patch"]) for p in component["patches"] if "target" in p)
    (init,) = next(op["value"] for op in ops if op["path"].endswith("/initContainers"))
    assert f'"$MODELCAR_IMAGE" {" ".join(init["command"])}' in text
    dockerfile = (DEPLOY / "docker" / "Dockerfile.cpu").read_text(encoding="utf-8")
    assert "EMOTION_MODEL=/models/repository" in dockerfile
    # Checks: health, one recognition, metrics, HTTP readiness, SIGTERM with a stream open -> exit 0.
    for needle in (" health", " recognize ", "/metrics", "/v2/health/ready", "stream --realtime",
                   "kill --signal TERM", '[ "$status" = 0 ]'):
        assert needle in text, needle


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the script's own limit is 1,200 s; pytest's global one 600 s
@pytest.mark.skipif(not (shutil.which("podman") and shutil.which("runc") and os.geteuid() == 0),
                    reason="needs podman, runc and root (apt-get install podman runc debootstrap)")
def test_the_image_builds_and_serves_as_the_pod_would() -> None:
    done = subprocess.run([str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result = dict(pair.split("=") for pair in done.stdout.strip().splitlines()[-1].split())
    assert result["exit_status"] == "0"
    assert int(result["image_mb"]) < 700  # a slim serving image: no torch, no compilers
