"""benchmarks/rss_open_loop.py in quick mode on the tiny model: the harness drives real server processes and
its numbers are self-consistent. Nothing here is about the memory goal itself (the large model's 10-minute
run measures that)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks import rss_open_loop


def test_rss_open_loop_quick_mode_writes_consistent_results(tiny_repo: Path, tmp_path: Path) -> None:
    rss_open_loop.main(["--quick", "--model-repo", str(tiny_repo), "--minutes", "0.05", "--rounds", "2",
                        "--rate", "6", "--variant", "plain", "--variant", "arenas 2||MALLOC_ARENA_MAX=2",
                        "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = doc["rows"]
    # Variants alternate within each round, each round its own server process.
    assert [(r["round"], r["variant"]) for r in rows] == [(0, "plain"), (0, "arenas 2"), (1, "plain"),
                                                          (1, "arenas 2")]
    assert rows[1]["env"] == {"MALLOC_ARENA_MAX": "2"} and rows[0]["env"] == {}
    for r in rows:
        assert r["ok"] > 0 and r["errors"] == 0 and r["rejected"] == 0, r
        assert 0 < r["hwm_after_startup_mib"] <= r["peak_rss_mib"] < rss_open_loop.GOAL_MIB
        # VmHWM is the high-water mark of VmRSS: no sample may exceed it (0.5 MiB of rounding).
        assert max(mb for _, mb, _ in r["rss_samples"]) <= r["peak_rss_mib"] + 0.5
        assert len(r["rss_samples"]) >= 2 and r["within_goal"] is True
        # PSS: the largest sample; never above that sample's RSS (a page counts at most once in PSS).
        assert r["peak_pss_mib"] == max(mb for _, _, mb in r["rss_samples"]) > 0
        assert all(0 < pss <= rss + 0.5 for _, rss, pss in r["rss_samples"])
        assert isinstance(r["load_1m_before"], float)
    [plain, arenas] = doc["summary"]
    assert plain["variant"] == "plain" and plain["rounds"] == 2 and arenas["rounds"] == 2
    assert plain["peak_rss_mib"] == [rows[0]["peak_rss_mib"], rows[2]["peak_rss_mib"]]
    assert plain["peak_pss_mib"] == [rows[0]["peak_pss_mib"], rows[2]["peak_pss_mib"]]
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "--minutes 0.05" in report and "CPU flags" in report and "load 1m before" in report
    median = f"{statistics.median(plain['peak_rss_mib']):,.0f}"
    assert "| plain | 2 | " in report and median in report
