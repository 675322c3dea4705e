"""benchmarks/adaptive_cpu.py in quick mode on the tiny model, run as issue 24's one command runs it
(``benchmarks.issue24 --sections adaptive``): the harness runs and its numbers agree.

Nothing about speed: every configuration x client count has a row, each row served requests, its
median lies within its min-max, the report names the command and the CPU flags, and the README's
generator renders its table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import readme_tables

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_writes_consistent_rows(tiny_repo: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "benchmarks.issue24", "--quick", "--sections", "adaptive",
                    "--fp32-repo", str(tiny_repo), "--out", str(tmp_path)],
                   cwd=ROOT, check=True, timeout=600, capture_output=True)
    out = tmp_path / "adaptive_cpu"
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert {(r["config"], r["clients"]) for r in rows} == {
        (c, n) for c in ("fixed 1xT", "fixed 2x(T/2)", "adaptive") for n in (1, 4)}
    for row in rows:
        assert all(k > 0 for k in row["requests"]), row
        assert row["audio_s_per_s_min"] <= row["audio_s_per_s"] <= row["audio_s_per_s_max"]
        assert row["p50_ms"] <= row["p99_ms"] and row["vmhwm_mb"] > 0
    assert "--runner-instances 0" in next(r for r in rows if r["config"] == "adaptive")["server_args"]
    report = (out / "report.md").read_text()
    assert "python -m benchmarks.adaptive_cpu " in report and "--quick" in report and "flags:" in report
    assert {r["precision"] for r in rows} == {"fp32"}  # no --int8-repo given: no int8 rows
    table = readme_tables.generate(tmp_path)
    assert "**Load-adaptive CPU parallelism" in table and "| fp32 | adaptive | 4 |" in table
