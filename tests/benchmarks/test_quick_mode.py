"""The benchmark harness in quick mode on the tiny model: it runs end to end and writes its report.

Nothing here is about speed (the machine running CI is shared and small): the assertions check that every
section produced consistent results, that the server was really driven (responses carry batch sizes that
add up, the metrics scrape saw the batches), and that the report and plots were written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package; `python -m pytest` adds the cwd
    sys.path.insert(0, str(ROOT))

from benchmarks import loadgen  # noqa: E402

# FunASR is left out: importing it costs ~10 s, and the full mode measures it.
SECTIONS = ("offline", "inprocess", "server", "load", "threads", "null")


@pytest.fixture(scope="module")
def quick_run(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench_quick")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run_benchmarks",
        "--quick",
        "--model-repo",
        str(tiny_repo),
        "--out",
        str(out),
        "--sections",
        ",".join(SECTIONS),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"harness failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


def _results(out: Path) -> tuple[dict, list[dict]]:
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return data["meta"], data["results"]


def test_every_section_reports_results(quick_run: Path) -> None:
    meta, rows = _results(quick_run)
    assert not [n for n in meta["notes"] if "failed" in n], meta["notes"]
    for section in SECTIONS:
        part = [r for r in rows if r["section"] == section]
        assert part, f"section {section} produced no result"
        for r in part:
            assert r["ok"] > 0 and r["errors"] == 0, r
            assert r["audio_s_per_s"] > 0 and r["rps"] > 0, r
            assert isinstance(r["loadavg_1m"], float)


def test_server_runs_are_consistent_with_the_server_metrics(quick_run: Path) -> None:
    _, rows = _results(quick_run)
    served = [r for r in rows if r["section"] in ("server", "load", "null")]
    assert {r["label"] for r in served} >= {"no batching (max batch 1)", "this batcher (defaults)"}
    for r in served:
        # Batch sizes come from each response's Timing: sizes x batches must add up to the requests served.
        pairs = [item.split(":") for item in r["batch_sizes"].split()]
        assert sum(int(size) * float(count) for size, count in pairs) == pytest.approx(r["ok"]), r
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["server_peak_rss_mb"] > 10
        # The /metrics scrape before and after saw at least the batches the responses report.
        assert r["server_batches"] >= r["ok"] / 8 - 1e-9
        assert 0.0 <= r["padding_waste"] < 1.0 or math.isnan(r["padding_waste"])
    no_batching = next(r for r in served if r["label"] == "no batching (max batch 1)")
    assert no_batching["batch_sizes"].split() and all(
        item.startswith("1:") for item in no_batching["batch_sizes"].split()
    )
    assert no_batching["padding_waste"] == pytest.approx(0.0, abs=1e-9)


def test_offline_and_inprocess_baselines_account_for_padding(quick_run: Path) -> None:
    _, rows = _results(quick_run)
    offline = {r["label"]: r for r in rows if r["section"] == "offline"}
    assert offline["offline bs=1"]["padding_waste"] == pytest.approx(0.0)
    fifo = next(r for r in rows if r["label"] == "in-process fifo, backlog")
    none = next(r for r in rows if r["label"] == "in-process none, backlog")
    # FIFO pads random lengths together: on a backlog it must form multi-item batches and waste padding.
    assert fifo["mean_batch_size"] > 1 and fifo["padding_waste"] > 0
    assert none["mean_batch_size"] == 1 and none["padding_waste"] == pytest.approx(0.0)


def test_report_and_plots_are_written(quick_run: Path) -> None:
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    for heading in (
        "## Targets",
        "## Offline limit",
        "## Through the gRPC server",
        "## Offered load against latency",
        "## Null model",
        "## Plots",
    ):
        assert heading in report, heading
    assert "load 1m" in report and " cores, " in report
    for png in ("throughput_vs_load.png", "latency_vs_load.png", "throughput_by_config.png"):
        data = (quick_run / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000, png


def test_length_mixes_are_seeded_and_bounded() -> None:
    a = loadgen.clip_lengths_s("realistic", 500, seed=3)
    assert a == loadgen.clip_lengths_s("realistic", 500, seed=3)
    assert a != loadgen.clip_lengths_s("realistic", 500, seed=4)
    assert min(a) >= 1.0 and max(a) <= 30.0 and 2.0 < float(np.median(a)) < 6.0
    short = loadgen.clip_lengths_s("short", 500, seed=3)
    assert min(short) >= 0.5 and max(short) <= 3.0
    clip = loadgen.speech_like(2.0, np.random.default_rng(0))
    assert clip.dtype == np.float32 and len(clip) == 32000 and 0.01 < float(np.abs(clip).max()) <= 1.0


def test_thread_groups_put_each_threads_cpu_where_it_ran() -> None:
    # A real child process: its main thread sleeps while a Python thread spins, so the CPU it used between
    # two readings belongs to "other Python threads", none to the event loop thread.
    busy = ("import threading, time\n"
            "def spin():\n"
            "    end = time.monotonic() + 30\n"
            "    while time.monotonic() < end: pass\n"
            "threading.Thread(target=spin, daemon=True).start()\n"
            "print('up', flush=True)\n"
            "time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", busy], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        before = loadgen.thread_cpu_s(child.pid)
        assert len(before) == 2 and child.pid in before
        time.sleep(0.8)  # the child's thread spins meanwhile
        groups = loadgen.thread_groups(child.pid, before, loadgen.thread_cpu_s(child.pid))
    finally:
        child.kill()
        child.wait()
    assert set(groups) == set(loadgen.THREAD_GROUPS)
    assert groups["other Python threads"] >= 0.1
    assert groups["event loop thread"] <= 0.02 and groups["gRPC core threads"] == 0.0
