"""benchmarks/peak_memory.py on the tiny model: real server processes per configuration, every request
answered, and the memory figures self-consistent. Nothing about the numbers themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import peak_memory


def test_configurations_parse_with_flags_and_environment() -> None:
    c = peak_memory.parse_config("~/repo|4|one instance|--runner-instances 1 --no-warmup|MALLOC_ARENA_MAX=2")
    assert c.repo == Path.home() / "repo" and c.clients == 4 and c.label == "one instance"
    assert c.flags == ["--runner-instances", "1", "--no-warmup"] and c.env == {"MALLOC_ARENA_MAX": "2"}
    with pytest.raises(ValueError):
        peak_memory.parse_config("repo|4")


def test_peak_memory_rows_alternate_and_are_consistent(tiny_repo: Path, tmp_path: Path) -> None:
    rc = peak_memory.main([f"{tiny_repo}|2|default|--intra-op-threads 1",
                           f"{tiny_repo}|2|sliding|--intra-op-threads 1 --heap-mmap-threshold-kb 0",
                           "--rounds", "2", "--requests", "6", "--clips", "3", "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = doc["rows"]
    assert [(r["round"], r["label"]) for r in rows] == [(0, "default"), (0, "sliding"), (1, "default"),
                                                        (1, "sliding")]
    for r in rows:
        assert r["requests"] == r["ok"] == 6, r
        assert 0 < r["idle_pss_mib"] <= r["peak_pss_mib"] <= r["peak_rss_mib"] + 1, r
        assert r["audio_s_per_s"] > 0
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| 2 | default | 2 |" in report and "| 2 | sliding | 2 |" in report and "CPU flags" in report
