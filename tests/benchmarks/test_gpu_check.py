"""The GPU device check runs on CPU (``--providers CPUExecutionProvider --quick``) so that it never rots.

It is run exactly as on a GPU machine, in a child process, on the tiny model (the fp16 export is built by the
script itself). The assertions read its report: every step passed (or was skipped with a reason), and each
step's numbers are real measurements, not placeholders. Nothing here is about speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(
    tiny_checkpoint: Path, tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu_check")
    cache = tmp_path_factory.mktemp("gpu_check_cache")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gpu_check",
        "--out",
        str(out),
        "--providers",
        "CPUExecutionProvider",
        "--quick",
        "--checkpoint",
        str(tiny_checkpoint),
        "--fp32-repo",
        str(tiny_repo),
        "--cache",
        str(cache),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, f"gpu_check failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    data: dict[str, Any] = json.loads((out / "report.json").read_text(encoding="utf-8"))
    data["markdown"] = (out / "report.md").read_text(encoding="utf-8")
    return data


def _step(report: dict[str, Any], name: str) -> dict[str, Any]:
    (st,) = [s for s in report["steps"] if s["name"] == name]
    return st


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_every_step_passed_or_was_skipped_with_a_reason(report: dict[str, Any]) -> None:
    assert report["passed"] is True
    assert [s["name"] for s in report["steps"]] == ["0", "1", "2", "3", "4", "5", "6"]
    for st in report["steps"]:
        assert st["status"] in ("passed", "skipped"), (st["name"], st["status"], st["reason"])
        if st["status"] == "skipped":
            assert st["reason"], st["name"]
    for name in ("1", "2", "3", "4", "5"):
        assert _step(report, name)["status"] == "passed"
    assert report["meta"]["simulated_gpu_faults"] is True and report["meta"]["quick"] is True


def test_provider_exactness_and_fp16_numbers_are_measured(report: dict[str, Any]) -> None:
    assert _step(report, "1")["numbers"]["active_provider"] == "CPUExecutionProvider"
    n = _step(report, "2")["numbers"]
    assert _finite(n["batch_exact_max_abs_prob"]) and n["batch_exact_max_abs_prob"] <= 1e-4
    assert _finite(n["batch_exact_max_abs_embedding"]) and n["batch_exact_max_abs_embedding"] <= 1e-4
    assert 0.999 <= n["fp16_min_cosine_embedding"] <= 1.0 + 1e-9
    assert _finite(n["fp16_max_abs_prob"]) and n["fp16_max_abs_prob"] > 0  # fp16 really ran: not identical
    parity = n["funasr_parity"]
    if isinstance(parity, dict):
        assert all(_finite(v) and v <= 1e-4 for v in parity["max_abs"].values()), parity
    else:
        assert parity.startswith("skipped:"), parity


def test_offline_table_has_a_number_in_every_cell(report: dict[str, Any]) -> None:
    n = _step(report, "3")["numbers"]
    table = n["table"]
    assert {r["precision"] for r in table} == {"fp16", "fp32"}
    for row in table:
        assert _finite(row.get("audio_s_per_s")) and row["audio_s_per_s"] > 0, row
        assert _finite(row.get("run_ms")) and row["run_ms"] > 0, row
    assert n["new_length_cost"] and all(_finite(r["first_run_ms"]) for r in n["new_length_cost"])
    assert _finite(n["io_binding"]["run_all_outputs_ms"])
    assert "| fp16 | 1 |" in report["markdown"]


def test_server_step_drove_the_real_server(report: dict[str, Any]) -> None:
    n = _step(report, "4")["numbers"]
    assert n["model_info"]["execution_provider"] == "CPUExecutionProvider"
    for key in ("closed_loop", "open_loop_80pct"):
        run = n[key]
        assert run["ok"] > 0 and run["errors"] == 0, run
        assert _finite(run["audio_s_per_s"]) and run["audio_s_per_s"] > 0
        assert _finite(run["p99_ms"]) and run["p99_ms"] >= run["p50_ms"] > 0
        assert run["server_batches"] > 0  # the metrics scrape saw the batches
    assert _finite(n["open_loop_80pct"]["p99_ms_clips_le_10s"])


def test_fallback_and_return_and_out_of_memory_split(report: dict[str, Any]) -> None:
    n = _step(report, "5")["numbers"]
    reasons = [c[2] for c in n["provider_changes"]]
    assert reasons == ["load", "runtime_failure", "recovered"], n["provider_changes"]
    assert n["runs_while_broken"][0] == "RunnerError" and n["runs_while_broken"][-1] == "CPUExecutionProvider"
    assert n["out_of_memory_seen"] is True and n["oom_failed_requests"] == []
    assert 1 <= n["learnt_max_items_at_huge_length"] < 8
