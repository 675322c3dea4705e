"""promtool checks the alerts and runs their unit tests; every PromQL expression the dashboard and the
adapter send parses (promtool checks them as recording rules)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.deploy import (
    ALERT_TESTS,
    adapter_rules,
    alert_rules_spec,
    dashboard_targets,
    grafana_to_promql,
    promql_metric_names,
    render_adapter_query,
    tool,
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture()
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's groups as a plain rules file, beside a copy of the alert unit tests."""
    (tmp_path / "alerts.rules.yaml").write_text(yaml.safe_dump(alert_rules_spec()), encoding="utf-8")
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    return tmp_path


def test_promtool_checks_the_alert_rules(rules_dir: Path) -> None:
    proc = _promtool("check", "rules", "alerts.rules.yaml", cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests_of_the_alerts_pass(rules_dir: Path) -> None:
    proc = _promtool("test", "rules", ALERT_TESTS.name, cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    silent = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    alerts = {r["alert"] for g in alert_rules_spec()["groups"] for r in g["rules"]}
    assert alerts <= tested, f"alerts never seen firing in a unit test: {sorted(alerts - tested)}"
    assert alerts <= silent, f"alerts never seen staying quiet in a unit test: {sorted(alerts - silent)}"


def test_dashboard_and_adapter_queries_parse(tmp_path: Path) -> None:
    exprs = [grafana_to_promql(expr) for _, expr in dashboard_targets()]
    for rule in adapter_rules():
        exprs.append(rule["seriesQuery"])
        exprs.append(render_adapter_query(rule, "emotion_queue_drain_seconds",
                                          'namespace="emotion",pod=~"a|b"', "pod"))
    rules = {"groups": [{"name": "parse", "rules": [
        {"record": f"check:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    proc = _promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (le) (rate(a_bucket{x="y", z=~"$pod"}[$__rate_interval]))', {"a_bucket"}),
    ("(b_total > 0) and on (namespace, pod) (max by (pod) (c) == 1)", {"b_total", "c"}),
    ('1 - sum(rate(u_total[5m])) / sum(rate(p_total[5m])) offset 1m', {"u_total", "p_total"}),
    ('absent(d{reason=~"queue_full|deadline"})', {"d"}),
    ('histogram_quantile(0.99, sum by (rpc, le) (rate(e_bucket{rpc!="S"}[5m]))) > 2', {"e_bucket"}),
])
def test_metric_names_are_read_out_of_promql(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names
