"""Reading what a server reports about itself: one sample of its Prometheus text, and the per-call tally it
logs at exit."""

from __future__ import annotations

__all__ = ["answered_by_server", "metric_value"]


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus text exposition (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def answered_by_server(log_text: str) -> dict[tuple[str, str, str], int]:
    """The server's exit line ``calls answered since start: proto/rpc/code=n, ...`` as a dict."""
    marker = "calls answered since start: "
    lines = [line for line in log_text.splitlines() if marker in line]
    assert lines, "the server did not log its calls at exit"
    out: dict[tuple[str, str, str], int] = {}
    for item in lines[-1].split(marker, 1)[1].split(", "):
        if item.strip() == "none":
            continue
        key, _, n = item.strip().rpartition("=")
        protocol, rpc, code = key.split("/")
        out[(protocol, rpc, code)] = int(n)
    return out
