"""The KServe InferenceService example (deploy/kserve/): a CRD, so no Kubernetes schema covers it whole.
Its pod part is checked as a real Pod against the Kubernetes schemas, and its fields against the server
(settings names, the HTTP port the probes and KServe's ingress use, the model path)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from emotion2vec_serving.server.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy/kserve/inferenceservice.yaml"


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return doc


def _container(isvc: dict[str, Any]) -> dict[str, Any]:
    (container,) = isvc["spec"]["predictor"]["containers"]
    return dict(container)


def test_it_is_a_custom_predictor_inference_service(isvc: dict[str, Any]) -> None:
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    assert "model" not in predictor  # a custom container, not one of KServe's model servers
    assert _container(isvc)["name"] == "kserve-container"  # the name KServe routes to


def test_the_pod_part_validates_as_a_kubernetes_pod(isvc: dict[str, Any]) -> None:
    predictor = isvc["spec"]["predictor"]
    pod_fields = {k: v for k, v in predictor.items() if k not in ("minReplicas", "maxReplicas")}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_fields}
    try:
        kubernetes_validate.validate(pod, "1.27", strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"predictor pod spec invalid: {'.'.join(str(p) for p in exc.path)}: {exc.message}")


def test_settings_ports_and_model_path_agree_with_the_server(isvc: dict[str, Any]) -> None:
    container = _container(isvc)
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = {f.name for f in dataclasses.fields(Settings)}
    for name in env:
        if name.startswith(ENV_PREFIX):
            assert name[len(ENV_PREFIX):].lower() in fields, f"{name} is not a server setting"
    http_port = int(env["EMOTION_HTTP_PORT"])
    (port,) = container["ports"]
    assert port["containerPort"] == http_port  # KServe's ingress sends HTTP here
    assert int(env["EMOTION_PORT"]) != http_port and int(env["EMOTION_METRICS_PORT"]) != http_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": http_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": http_port}
    # KServe's storage initializer downloads STORAGE_URI into /mnt/models; the server loads it from there.
    assert env["STORAGE_URI"] and env["EMOTION_MODEL"] == "/mnt/models"
    # The image's user and a read-only root: /tmp is the only writable path, the cache lives there.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert env["EMOTION_MODEL_CACHE_DIR"].startswith("/tmp/")
