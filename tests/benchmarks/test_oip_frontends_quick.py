"""benchmarks/oip_frontends.py in a short run: every front end is really driven (calls answered, none
failed) and the report is written. Nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_front_end_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.oip_frontends", "--out", str(tmp_path), "--run-s", "1",
           "--concurrency", "4"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = {r["front_end"]: r for r in data["rows"]}
    assert set(rows) == {"emotion.v1 gRPC", "OIP gRPC", "OIP REST"}
    for name, row in rows.items():
        assert row["ok"] > 0 and row["errors"] == 0, (name, row)
    assert "| OIP REST |" in (tmp_path / "report.md").read_text(encoding="utf-8")
