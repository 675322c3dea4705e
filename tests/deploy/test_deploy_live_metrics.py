"""The monitoring files against a running server: every metric the dashboard, the alerts and the adapter rule
use is on the server's /metrics page, and a real Prometheus (the Debian package) scraping that server answers
the dashboard's queries with data, the adapter's query with a value per pod, and evaluates the alert rules."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from emotion.v1 import emotion_pb2, emotion_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from emotion2vec_serving.modelrepo.manifest import load_manifest
from emotion2vec_serving.server.process import ServerProcess, ServerStartError, free_port
from tests.support.deploy import (
    EXTERNAL_METRIC_PREFIXES,
    EXTERNAL_METRICS,
    GPU_DASHBOARD,
    K8S,
    adapter_rules,
    alert_exprs,
    alert_rules_spec,
    dashboard_targets,
    dashboard_variable_queries,
    exported_series_names,
    grafana_to_promql,
    promql_metric_names,
    render_adapter_query,
    tool,
)
from tests.support.polling import wait_until

# The labels the Prometheus Operator puts on every series scraped through the ServiceMonitor.
NAMESPACE = "emotion"
POD = "emotion-server-0"
RECOGNIZE_CALLS = 6
# Panels that must show data once the server has answered a few calls.
CORE_PANELS = {
    "Emotion throughput by label (predictions / s)",
    "Audio-seconds / s by RPC",
    "Requests / s by RPC and status",
    "Requests / s by protocol",
    "End-to-end latency by RPC (server side)",
    "Queue wait (p50 / p95 / p99)",
    "Inference (batch run) time (p50 / p95 / p99)",
    "Queued requests by pod",
    "Queued audio (s) by pod",
    "Estimated drain time by pod (HPA signal)",
    "Batch size (mean, p50, p95)",
    "Padding waste",
    "Pods by active execution provider",
    "Model",
}


def _get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


def _stop(proc: subprocess.Popen[bytes], name: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            pytest.fail(f"{name} did not exit within 30 s of SIGTERM")


@dataclass
class RunningServer:
    grpc_target: str
    metrics_url: str
    labels: list[str]


@pytest.fixture(scope="module")
def server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """``python -m server`` on the tiny model repository, SERVING, after a few calls of each kind."""
    srv = ServerProcess(
        tiny_repo,
        ["--providers", "CPUExecutionProvider", "--model-cache-dir", str(tmp_path_factory.mktemp("cache"))],
        isolated_env=True,
        log_path=tmp_path_factory.mktemp("server") / "server.log",
    )
    try:
        srv.start()
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        with grpc.insecure_channel(srv.target) as channel:
            _send_traffic(channel)
        labels = [label.name for label in load_manifest(tiny_repo).labels]
        yield RunningServer(srv.target, srv.metrics_url, labels)
    finally:
        _stop(srv.proc, "server")


def _send_traffic(channel: grpc.Channel) -> None:
    """Calls that touch every code path the dashboard shows: recognitions, embeddings, one refused call."""
    stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
    rng = np.random.default_rng(0)
    for i in range(RECOGNIZE_CALLS):
        samples = (0.1 * rng.standard_normal(16000 * (1 + i % 3))).astype("<f4")
        audio = emotion_pb2.Audio(raw=emotion_pb2.RawAudio(
            data=samples.tobytes(), encoding=emotion_pb2.PCM_ENCODING_F32LE, sample_rate_hz=16000,
            channels=1))
        stub.Recognize(emotion_pb2.RecognizeRequest(audio=audio), timeout=30)
        if i % 2 == 0:
            stub.Embed(emotion_pb2.EmbedRequest(audio=audio), timeout=30)
    too_short = emotion_pb2.Audio(raw=emotion_pb2.RawAudio(
        data=np.zeros(16, "<f4").tobytes(), encoding=emotion_pb2.PCM_ENCODING_F32LE, sample_rate_hz=16000))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Recognize(emotion_pb2.RecognizeRequest(audio=too_short), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def scraped(server: RunningServer) -> list[Any]:
    return list(text_string_to_metric_families(_get(server.metrics_url).decode()))


@dataclass
class RunningPrometheus:
    url: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = json.loads(_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert body["status"] == "success", f"{promql}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def api(self, path: str, **params: str) -> Any:
        body = json.loads(_get(f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params)))
        assert body["status"] == "success", body
        return body["data"]


@pytest.fixture(scope="module")
def prometheus(server: RunningServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPrometheus]:
    """The Debian prometheus binary scraping the server every second, with our alert rules loaded."""
    work = tmp_path_factory.mktemp("prometheus")
    (work / "alerts.rules.yaml").write_text(yaml.safe_dump(alert_rules_spec()), encoding="utf-8")
    metrics = urllib.parse.urlparse(server.metrics_url)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "alerts.rules.yaml")],
        "scrape_configs": [{
            "job_name": "emotion-server",
            "static_configs": [{"targets": [metrics.netloc], "labels": {"namespace": NAMESPACE, "pod": POD}}],
        }],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "prometheus.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        prom = RunningPrometheus(url)

        # Rates need two samples of each counter in their window; wait for a few scrapes after the traffic.
        def scraped() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                seen = prom.query('count_over_time(emotion_predictions_total[1m])')
            except OSError:
                return False
            return bool(seen) and min(float(s["value"][1]) for s in seen) >= 4

        try:
            wait_until(scraped, 60, 0.5, "prometheus has not scraped the server")
        except AssertionError as exc:
            pytest.fail(f"{exc}:\n{log.read_text()[-3000:]}")
        yield prom
    finally:
        _stop(proc, "prometheus")


def _used_metrics() -> dict[str, set[str]]:
    """Metric name -> where the monitoring files use it."""
    used: dict[str, set[str]] = {}

    def note(where: str, expr: str) -> None:
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(where)

    for title, expr in dashboard_targets():
        note(f"dashboard: {title}", expr)
    for title, expr in dashboard_targets(GPU_DASHBOARD):
        note(f"GPU dashboard: {title}", expr)
    for query in dashboard_variable_queries():
        note("dashboard variable", query.replace("label_values(", "group(").rsplit(",", 1)[0] + ")")
    for alert, expr in alert_exprs().items():
        note(f"alert {alert}", expr)
    for rule in adapter_rules():
        note("prometheus-adapter", rule["seriesQuery"])
    return used


def test_every_metric_the_monitoring_uses_is_exported(scraped: list[Any]) -> None:
    exported = exported_series_names(scraped)
    used = _used_metrics()
    server_side = {name for name in used
                   if name not in EXTERNAL_METRICS and not name.startswith(EXTERNAL_METRIC_PREFIXES)}
    assert len(server_side) >= 20, sorted(server_side)
    missing = {name: sorted(used[name]) for name in server_side - exported}
    assert not missing, f"used but not exported by the server: {missing}"


def test_dashboard_queries_return_data_from_a_real_prometheus(
        prometheus: RunningPrometheus, scraped: list[Any], server: RunningServer) -> None:
    with_samples = {sample.name for family in scraped for sample in family.samples}
    answered: set[str] = set()
    for title, expr in dashboard_targets():
        result = prometheus.query(grafana_to_promql(expr))
        names = promql_metric_names(expr)
        if result:
            answered.add(title)
        elif names <= with_samples:
            pytest.fail(f"panel {title!r}: no data for {expr}")
    assert answered >= CORE_PANELS, f"core panels without data: {sorted(CORE_PANELS - answered)}"

    by_title = dict(dashboard_targets())
    throughput_expr = by_title["Emotion throughput by label (predictions / s)"]
    throughput = prometheus.query(grafana_to_promql(throughput_expr))
    assert {s["metric"]["label"] for s in throughput} <= set(server.labels)
    requests = prometheus.query('sum by (rpc, code) (emotion_requests_total{namespace="emotion"})')
    counts = {(s["metric"]["rpc"], s["metric"]["code"]): float(s["value"][1]) for s in requests}
    assert counts[("Recognize", "OK")] == RECOGNIZE_CALLS
    assert counts[("Recognize", "INVALID_ARGUMENT")] == 1
    for query in dashboard_variable_queries():
        metric = query.removeprefix("label_values(").rsplit(",", 1)[0]
        label = query.rsplit(",", 1)[1].strip(" )")
        values = prometheus.api("series", **{"match[]": grafana_to_promql(metric)})
        assert {s[label] for s in values} == {{"namespace": NAMESPACE, "pod": POD}[label]}


def test_adapter_rule_gives_the_hpa_a_value_per_pod(prometheus: RunningPrometheus) -> None:
    for rule in adapter_rules():
        series = prometheus.api("series", **{"match[]": rule["seriesQuery"]})
        assert series, f"seriesQuery matches nothing: {rule['seriesQuery']}"
        for labels in series:
            for label, resource in rule["resources"]["overrides"].items():
                assert labels.get(label), f"{labels['__name__']} lacks the {resource['resource']} label"
        name = series[0]["__name__"]
        query = render_adapter_query(rule, name, f'namespace="{NAMESPACE}",pod=~"{POD}"', "pod")
        (value,) = prometheus.query(query)
        assert value["metric"] == {"pod": POD}
        assert math.isfinite(float(value["value"][1])) and float(value["value"][1]) >= 0


def test_alert_rules_evaluate_and_stay_quiet_on_a_healthy_server(prometheus: RunningPrometheus) -> None:
    def listed() -> list[dict[str, Any]]:
        return [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]

    def evaluated() -> bool:
        rules = listed()
        return bool(rules) and all(r["lastEvaluation"] > "2000" for r in rules)

    wait_until(evaluated, 20, 0.5, "rules not evaluated")
    rules = listed()
    assert {r["name"] for r in rules} == set(alert_exprs())
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        # Latency depends on how busy the test machine is; the unit tests cover that alert's logic.
        if rule["name"] != "EmotionHighP99Latency":
            assert rule["state"] == "inactive", f"{rule['name']} is {rule['state']} on a healthy server"


def test_keda_queries_answer_from_a_real_prometheus(prometheus: RunningPrometheus) -> None:
    """The optional KEDA ScaledObject's queries (deploy/k8s/components/keda) give one finite value each."""
    scaled = yaml.safe_load((K8S / "components" / "keda" / "scaledobject.yaml").read_text(encoding="utf-8"))
    for trigger in scaled["spec"]["triggers"]:
        query = trigger["metadata"]["query"]
        assert f'namespace="{NAMESPACE}"' in query
        (value,) = prometheus.query(query)
        assert math.isfinite(float(value["value"][1])) and float(value["value"][1]) >= 0, (query, value)


def test_gpu_dashboard_queries_return_data_from_a_real_prometheus(
        prometheus: RunningPrometheus, scraped: list[Any]) -> None:
    """The gpu overlay's dashboard (deploy/grafana/gpu) against the same live server (on CPU here: the
    provider, busy ratio and batching panels have data; fallback panels answer their `or vector(0)`)."""
    with_samples = {sample.name for family in scraped for sample in family.samples}
    answered = set()
    for title, expr in dashboard_targets(GPU_DASHBOARD):
        result = prometheus.query(grafana_to_promql(expr))
        if result:
            answered.add(title)
        elif promql_metric_names(expr) <= with_samples:
            pytest.fail(f"GPU panel {title!r}: no data for {expr}")
    assert answered >= {"Runner busy ratio by pod (HPA signal)", "Active execution provider by pod",
                        "Pods fallen back to CPU", "Provider fallbacks in range", "Mean batch size by pod"}
    by_title = dict(dashboard_targets(GPU_DASHBOARD))
    (busy,) = prometheus.query(grafana_to_promql(by_title["Runner busy ratio by pod (HPA signal)"]))
    assert busy["metric"] == {"pod": POD} and 0 <= float(busy["value"][1]) <= 1
    (provider,) = prometheus.query(grafana_to_promql(by_title["Active execution provider by pod"]))
    assert provider["metric"] == {"pod": POD, "provider": "CPUExecutionProvider"}
    (fallen,) = prometheus.query(grafana_to_promql(by_title["Pods fallen back to CPU"]))
    assert float(fallen["value"][1]) == 0
    assert dashboard_variable_queries(GPU_DASHBOARD) == dashboard_variable_queries()
