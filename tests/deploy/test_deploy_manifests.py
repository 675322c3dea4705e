"""The Kubernetes manifests render with the real kustomize, validate against the Kubernetes schemas, and keep
the promises that tie them to the server: probes on its health names, drain shorter than the grace period,
settings that exist, a non-root read-only container, and an autoscaler whose metric the adapter serves."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from typing import Any

import kubernetes_validate
import pytest

from emotion2vec_serving.server.config import ENV_PREFIX, Settings
from emotion2vec_serving.server.grpc.listeners import age_goaway_wait_s
from tests.support.deploy import DASHBOARD, K8S, OVERLAYS, adapter_rules, find, kustomize, tool

# Oldest release with everything used here (gRPC probes GA in 1.27) and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
# Prometheus Operator custom resources: no schema in kubernetes-validate; checked field by field below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                ("monitoring.coreos.com/v1", "PrometheusRule")}
HEALTH_SERVICE = "emotion.v1.EmotionRecognizer"
SETTINGS_ENV = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


#: The hardware overlays and the example that adds the archive Indexed Job (components/archive-job).
@pytest.fixture(scope="module", params=(*OVERLAYS, "archive"))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


def _server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objects, "Deployment", "emotion-server")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "server")


def _env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The server container's environment: its ConfigMap's literals, then its own plain values."""
    server = _server(objects)
    env: dict[str, str] = {}
    for source in server.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e.get("value", "<from field>") for e in server.get("env", [])})
    return env


def test_kubectl_is_a_real_kustomize() -> None:
    out = subprocess.run([tool("kubectl"), "version", "--client", "-o", "json"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    assert json.loads(out)["kustomizeVersion"].startswith("v5"), out


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(rendered: tuple[str, list[dict[str, Any]]],
                                                     version: str) -> None:
    _, objects = rendered
    validated = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {path}: "
                        f"{exc.message}")
        validated.add(obj["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
            "ServiceAccount", "Namespace"} <= validated


def test_every_object_lands_in_one_namespace(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    namespace = find(objects, "Namespace")["metadata"]["name"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {namespace}


def test_probes_use_the_servers_grpc_health_names(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    server = _server(objects)
    port = int(_env(objects)["EMOTION_PORT"])
    assert server["readinessProbe"]["grpc"] == {"port": port, "service": HEALTH_SERVICE}
    assert server["startupProbe"]["grpc"]["port"] == port
    # Liveness on the HTTP port, which a drain closes last (the gRPC listener closes first).
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {"grpc": port, "metrics": int(_env(objects)["EMOTION_METRICS_PORT"]),
            "http": int(_env(objects)["EMOTION_HTTP_PORT"])} == {
        p["name"]: p["containerPort"] for p in server["ports"]}


def test_termination_outlasts_the_servers_drain(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    pod = find(objects, "Deployment", "emotion-server")["spec"]["template"]["spec"]
    server = _server(objects)
    env = _env(objects)
    drain_s = float(env["EMOTION_DRAIN_GRACE_S"])
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    # The drain: readiness delay, then every connection's age GOAWAY, then the grace for accepted work.
    goaway_s = age_goaway_wait_s(float(env["EMOTION_MAX_CONNECTION_AGE_S"]))
    drain_total_s = float(env["EMOTION_DRAIN_READINESS_DELAY_S"]) + goaway_s + drain_s
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + drain_total_s + 10
    # Liveness (HTTP) answers until the HTTP listener closes, at the start of the grace; its failures must
    # not kill the pod before the drain ends.
    live = server["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > drain_s


def test_every_setting_in_the_environment_is_one_the_server_has(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    env = _env(objects)
    emotion_vars = {k for k in env if k.startswith(ENV_PREFIX)}
    unknown = sorted(emotion_vars - SETTINGS_ENV)
    assert not unknown, f"unknown server settings: {unknown}"
    assert float(env["EMOTION_MAX_CONNECTION_AGE_S"]) > 0, "clients need a connection age to rebalance"
    assert env["EMOTION_MODEL"].startswith("/models/")
    assert env["EMOTION_MODEL_CACHE_DIR"].startswith("/tmp/"), "the root filesystem is read-only"
    threads = next(e for e in _server(objects)["env"] if e["name"] == "EMOTION_INTRA_OP_THREADS")
    assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_containers_run_unprivileged_on_a_read_only_root(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    pod = find(objects, "Deployment", "emotion-server")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"] + pod.get("initContainers", []):
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "add" not in ctx["capabilities"], container["name"]
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]], container["name"]
        assert "requests" in container["resources"] and "limits" in container["resources"], container["name"]
    containers = pod["containers"] + pod.get("initContainers", [])
    mounted = {m["name"] for c in containers for m in c["volumeMounts"]}
    assert mounted == set(volumes)
    server = _server(objects)
    model_mount = next(m for m in server["volumeMounts"] if m["mountPath"] == "/models")
    assert model_mount["readOnly"] is True


def test_overlays_differ_only_where_the_hardware_does(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    pod = find(objects, "Deployment", "emotion-server")["spec"]["template"]["spec"]
    server = _server(objects)
    providers = _env(objects)["EMOTION_PROVIDERS"].split(",")
    limits = server["resources"]["limits"]
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == 1
        assert server["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert server["image"].endswith("-gpu")
    else:
        assert "nvidia.com/gpu" not in limits
        assert "tolerations" not in pod
        assert providers == ["CPUExecutionProvider"]
        assert server["image"].endswith("-cpu")


def test_services_select_the_pods_and_name_real_ports(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    deployment = find(objects, "Deployment", "emotion-server")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in _server(objects)["ports"]}
    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    assert services["emotion-server-headless"]["spec"]["clusterIP"] == "None"
    assert services["emotion-server"]["spec"]["type"] == "ClusterIP"
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    pdb = find(objects, "PodDisruptionBudget", "emotion-server")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_servicemonitor_scrapes_each_pod_once(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    monitor = find(objects, "ServiceMonitor", "emotion-server")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    scraped = [s for s in objects if s["kind"] == "Service"
               and selector.items() <= s["metadata"].get("labels", {}).items()
               and any(p["name"] == endpoint["port"] for p in s["spec"]["ports"])]
    assert [s["metadata"]["name"] for s in scraped] == ["emotion-server"]
    assert endpoint["path"] == "/metrics"
    rule = find(objects, "PrometheusRule", "emotion-server")
    assert rule["metadata"]["labels"]["release"] == monitor["metadata"]["labels"]["release"]
    assert rule["spec"]["groups"], "no alert groups"


def test_autoscaler_uses_a_metric_the_adapter_serves(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    hpa = find(objects, "HorizontalPodAutoscaler", "emotion-server")
    deployment = find(objects, "Deployment", "emotion-server")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    served = {r["name"]["as"] for r in adapter_rules()}
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metrics and set(pods_metrics) <= served, (pods_metrics, served)
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = find(objects, "PodDisruptionBudget", "emotion-server")
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"], "a drain could take every pod"


def test_dashboard_configmap_carries_the_dashboard(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    config_map = find(objects, "ConfigMap", "emotion-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = config_map["data"].values()
    assert json.loads(content) == json.loads(DASHBOARD.read_text(encoding="utf-8"))
