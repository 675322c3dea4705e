"""Autoscaling and capacity settings of the rendered overlays (issue 14): the HPA owns the replica count,
scales on a proportional signal beside the saturation one on CPU and GPU pods, the optional KEDA component
replaces it cleanly, the RPC cap leaves room for a full queue, connections age out quickly enough for new
pods, and the gpu overlay installs the GPU dashboard."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from emotion2vec_serving.server.config import Settings
from tests.support.deploy import (
    DASHBOARD,
    GPU_DASHBOARD,
    K8S,
    OVERLAYS,
    adapter_rules,
    dashboard_targets,
    find,
    kustomize,
    promql_metric_names,
)

BUSY = "emotion_runner_busy_ratio"
QUEUE = "emotion_queue_drain_seconds"


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


def _settings(objects: list[dict[str, Any]]) -> Settings:
    """The server's settings as the pods get them (ConfigMap over the defaults)."""
    env = find(objects, "ConfigMap", "emotion-server-env")["data"]
    fields = {f: type(getattr(Settings(), f)) for f in Settings.__dataclass_fields__}
    values: dict[str, Any] = {}
    for key, text in env.items():
        name = key.removeprefix("EMOTION_").lower()
        kind = fields[name]
        values[name] = (text == "true") if kind is bool else (
            tuple(text.split(",")) if kind is tuple else kind(text))
    return Settings(**values)


def _pods_targets(hpa: dict[str, Any]) -> dict[str, float]:
    out = {}
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Pods":
            value = str(metric["pods"]["target"]["averageValue"])
            number = float(value[:-1]) / 1000 if value.endswith("m") else float(value)
            out[metric["pods"]["metric"]["name"]] = number
    return out


def test_the_deployment_leaves_the_replica_count_to_the_autoscaler(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    deployment = find(objects, "Deployment", "emotion-server")
    assert "replicas" not in deployment["spec"], "kubectl apply would undo every scale-out"
    hpa = find(objects, "HorizontalPodAutoscaler", "emotion-server")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_autoscaler_has_a_proportional_and_a_saturation_signal(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    hpa = find(objects, "HorizontalPodAutoscaler", "emotion-server")
    targets = _pods_targets(hpa)
    assert set(targets) == {BUSY, QUEUE}
    assert 0.5 <= targets[BUSY] < 1.0, "a busy ratio target at 1.0 would only fire once saturated"
    resources = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    # On GPU pods CPU use says nothing about load (and would vote to scale down under load).
    assert resources == (["cpu"] if overlay == "cpu" else [])
    # The busy ratio is a rate of the runner's busy seconds: 1.0 = always busy with one runner instance.
    rule = next(r for r in adapter_rules() if r["name"]["as"] == BUSY)
    assert "rate(<<.Series>>" in rule["metricsQuery"]
    assert promql_metric_names(rule["seriesQuery"]) == {"emotion_inference_duration_seconds_sum"}
    assert _settings(objects).runner_instances == 1, "the busy ratio target assumes one runner per pod"


def test_connections_age_out_within_a_minute(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    settings = _settings(objects)
    assert 0 < settings.max_connection_age_s <= 60, "new pods would wait minutes for traffic"


def test_rpc_cap_leaves_room_for_a_full_queue_and_every_stream(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    s = _settings(objects)
    needed = s.max_queue_requests + s.max_batch_size * s.runner_instances + s.max_concurrent_streams
    assert s.max_concurrent_rpcs >= needed, (
        f"--max-concurrent-rpcs {s.max_concurrent_rpcs} < queue {s.max_queue_requests} + batch + streams: "
        "the queue could never fill")


def test_keda_component_replaces_the_hpa_with_the_same_signals(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(K8S / 'overlays' / 'gpu', overlay)}\n"
        f"components:\n  - {os.path.relpath(K8S / 'components' / 'keda', overlay)}\n",
        encoding="utf-8")
    objects = kustomize(overlay)
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"], "KEDA owns the HPA"
    scaled = find(objects, "ScaledObject", "emotion-server")
    deployment = find(objects, "Deployment", "emotion-server")
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    base_hpa = find(kustomize(K8S / "overlays" / "cpu"), "HorizontalPodAutoscaler", "emotion-server")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == base_hpa["spec"]["behavior"]
    assert scaled["spec"]["minReplicaCount"] == base_hpa["spec"]["minReplicas"]
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    assert {t["type"] for t in triggers.values()} == {"prometheus"}
    assert {t["metricType"] for t in triggers.values()} == {"AverageValue"}
    names = {n for t in triggers.values() for n in promql_metric_names(t["metadata"]["query"])}
    assert names == {"emotion_inference_duration_seconds_sum", QUEUE}
    thresholds = sorted(float(t["metadata"]["threshold"]) for t in triggers.values())
    assert thresholds == sorted(_pods_targets(base_hpa).values())


def test_gpu_overlay_installs_the_gpu_dashboard(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    maps = [o for o in objects if o["kind"] == "ConfigMap"
            and o["metadata"]["name"] == "emotion-grafana-gpu-dashboard"]
    if overlay == "cpu":
        assert not maps
        return
    (config_map,) = maps
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = config_map["data"].values()
    dashboard = json.loads(content)
    assert dashboard == json.loads(GPU_DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] != json.loads(DASHBOARD.read_text(encoding="utf-8"))["uid"]
    used = {n for _, expr in dashboard_targets(GPU_DASHBOARD) for n in promql_metric_names(expr)}
    # provider, fallbacks, runner busy ratio
    assert {"emotion_execution_provider", "emotion_provider_fallbacks_total",
            "emotion_inference_duration_seconds_sum"} <= used
