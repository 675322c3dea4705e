"""benchmarks/lean_path.py in quick mode: the echo server and this server's null model are really driven
(calls answered, none failed), the summary agrees with the rows and the report is written. Nothing about
speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import loadgen, readme_tables

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_lean_path_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.lean_path", "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    (rows,) = data["rounds"]
    assert set(rows) == {"echo", "hop", "this"}
    for name, row in rows.items():
        assert row["ok"] > 0 and row["errors"] == 0, (name, row)
        assert row["server_cpu_ms_per_req"] > 0, (name, row)
        # The CPU by thread is that same CPU split (ticks of 10 ms round each thread's share), the event loop
        # thread's share never empty: every request's handler runs there.
        groups = row["threads_cpu_ms_per_req"]
        assert set(groups) == set(loadgen.THREAD_GROUPS) and min(groups.values()) >= 0, (name, groups)
        assert groups["event loop thread"] > 0, (name, groups)
        assert 0 < row["machine_busy_share"] <= 1, (name, row)
        assert sum(groups.values()) == pytest.approx(row["server_cpu_ms_per_req"], rel=0.5), (name, row)
    this, echo, hop = rows["this"], rows["echo"], rows["hop"]
    assert this["over_echo"] == pytest.approx(this["requests_per_s"] / echo["requests_per_s"])
    assert hop["over_echo"] == pytest.approx(hop["requests_per_s"] / echo["requests_per_s"])
    assert this["added_cpu_ms_per_req"] == pytest.approx(
        this["server_cpu_ms_per_req"] - echo["server_cpu_ms_per_req"])
    median = data["summary"]["this"]["requests_per_s"]["median"]
    assert median == pytest.approx(this["requests_per_s"], abs=1e-3)
    assert "cpu_flags" in data["machine"] and "command" in data
    report = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "| this |" in report and "| echo |" in report and "| hop |" in report and "load 1 min" in report
    assert "| configuration | event loop thread | gRPC core threads | other Python threads |" in report
    table = readme_tables.generic(tmp_path.parent, tmp_path.name)  # the README's table of this run
    assert table[0].startswith("**Lean request path")
    assert any(line.startswith("| null model, this checkout |") for line in table)
