"""benchmarks/soak.py for a few seconds on the tiny model: it drives every kind of call against a real server
process and writes its CSV, JSON and markdown summary. Nothing here is about speed or the memory goal (the
30-minute run measures those): the checks are that the traffic really ran and the files say so."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import soak


def test_soak_runs_briefly_and_writes_its_results(tiny_repo: Path, tmp_path: Path) -> None:
    soak.main(["--model", str(tiny_repo), "--minutes", "0.25", "--sample-s", "3", "--concurrency", "3",
               "--out", str(tmp_path), "--", "--no-warmup", "--intra-op-threads", "1"])
    [summary] = tmp_path.glob("soak-*.md")
    doc = json.loads(summary.with_suffix(".json").read_text(encoding="utf-8"))
    counts = doc["counts"]
    assert counts["good_ok"] > 0 and counts["good_failed"] == 0, counts["failures"]
    assert counts["bad_refused"] > 0
    kinds = set(counts["by_kind"])
    assert {"v1_grpc", "v1_rest", "oip_grpc", "oip_rest", "bad_rest_items", "bad_grpc_items"} <= kinds
    assert len(doc["samples"]) >= 3 and all(s["rss_mb"] > 0 for s in doc["samples"])
    text = summary.read_text(encoding="utf-8")
    assert "Growth after the warm-up" in text and "CPU flags" in text and "--minutes 0.25" in text
    csv_rows = summary.with_suffix(".csv").read_text(encoding="utf-8").splitlines()
    assert csv_rows[0].startswith("t_s,rss_mb") and len(csv_rows) == len(doc["samples"]) + 1
