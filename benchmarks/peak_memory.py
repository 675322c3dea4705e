"""Peak memory of the real server under a closed loop, per configuration: a spot check of a memory change.

Each row starts a fresh server process with a configuration's flags and environment, reads its PSS once it
serves (warm-up done), sends ``--requests`` requests from ``--concurrency`` closed-loop clients (the seeded
``realistic`` mix, raw f32) and samples PSS and VmRSS every 0.2 s. Rows alternate configurations within a
round, ``--rounds`` rounds::

    C=~/.cache/emotion2vec-bench
    python -m benchmarks.peak_memory --out benchmarks/results/peak_memory --rounds 2 \\
        "$C/repo_large|4|mmap 1 MiB (default)|" "$C/repo_large|4|sliding (glibc)|--heap-mmap-threshold-kb 0"

A configuration is ``'repository|clients|label|server flags|ENV=VALUE ...'`` (the last part optional).
PSS (``/proc/PID/smaps_rollup``) counts a page mapped twice once (the adaptive runner maps its pre-packed
weights in two sessions); VmRSS counts it per mapping. For the issue's full tables see
``benchmarks.adaptive_cpu`` (memory against one instance) and ``benchmarks.rss_open_loop`` (long runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.emulated_gpu import _cpu_flags as cpu_flags
from benchmarks.rss_open_loop import _median_range
from benchmarks.suite.server_process import ServerProcess


@dataclass
class Config:
    repo: Path
    clients: int
    label: str
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def parse_config(text: str) -> Config:
    parts = [p.strip() for p in text.split("|")]
    if len(parts) < 3:
        raise ValueError(f"{text!r}: expected 'repository|clients|label|flags|ENV=VALUE ...'")
    flags = shlex.split(parts[3]) if len(parts) > 3 else []
    env = dict(item.split("=", 1) for item in shlex.split(parts[4])) if len(parts) > 4 else {}
    return Config(Path(parts[0]).expanduser(), int(parts[1]), parts[2], flags, env)


def run_row(config: Config, rnd: int, requests: Sequence[Any], audio_s: Sequence[float],
            n_requests: int) -> dict[str, Any]:
    load = round(loadgen.load_average()[0], 2)
    with ServerProcess(config.repo, config.flags, env=config.env or None) as srv:
        idle_pss = loadgen.RssSampler.read_pss_mb(srv.pid)
        with loadgen.RssSampler(srv.pid) as sampler:
            records, wall = asyncio.run(loadgen.closed_loop(
                srv.target, requests, audio_s, config.clients, 1e9, max_requests=n_requests))
    ok = [r for r in records if r.code == "OK"]
    row = {"round": rnd, "label": config.label, "repo": str(config.repo), "clients": config.clients,
           "flags": config.flags, "env": config.env, "requests": len(records), "ok": len(ok),
           "audio_s_per_s": round(sum(r.audio_s for r in ok) / wall, 3), "idle_pss_mib": round(idle_pss),
           "peak_pss_mib": round(sampler.peak_pss_mb), "peak_rss_mib": round(sampler.peak_mb),
           "load_1m_before": load}
    print(json.dumps(row), flush=True)
    return row


def report(meta: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    lines = ["# Peak memory under a closed loop (spot check)", "",
             f"- command: `{meta['command']}` ({meta['started']} – {meta['ended']})",
             f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; CPU flags: "
             f"{meta['cpu_flags']}",
             f"- {meta['requests']} requests per row from the seeded `realistic` mix ({meta['clips']} "
             "clips), "
             "a fresh server per row; cells: median (min–max) over the rounds", "",
             "| repository | clients | configuration | rounds | idle PSS MiB | peak PSS MiB | peak VmRSS MiB "
             "| audio-s/s | load 1m before |", "|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["repo"], r["clients"], r["label"]) for r in rows))
    for repo, clients, label in keys:
        part = [r for r in rows if (r["repo"], r["clients"], r["label"]) == (repo, clients, label)]
        loads = ", ".join(f"{r['load_1m_before']:.2f}" for r in part)
        lines.append(
            f"| {Path(repo).name} | {clients} | {label} | {len(part)} | "
            f"{_median_range([r['idle_pss_mib'] for r in part])} | "
            f"{_median_range([r['peak_pss_mib'] for r in part])} | "
            f"{_median_range([r['peak_rss_mib'] for r in part])} | "
            f"{_median_range([r['audio_s_per_s'] for r in part], '{:.2f}')} | "
            f"{loads} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="'repository|clients|label|flags|ENV=VALUE ...'")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/peak_memory"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--requests", type=int, default=100, help="requests per row")
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configs = [parse_config(c) for c in args.configs]
    clips = loadgen.make_clips("realistic", args.clips, args.seed)
    requests = loadgen.build_requests(clips, "f32")
    audio_s = [len(c) / loadgen.SAMPLE_RATE_HZ for c in clips]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = [run_row(c, rnd, requests, audio_s, args.requests) for rnd in range(args.rounds) for c in configs]
    meta = {"command": "python -m benchmarks.peak_memory " + shlex.join(
                argv if argv is not None else sys.argv[1:]),
            "started": started, "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": loadgen.machine_description(), "cpu_flags": cpu_flags(), "requests": args.requests,
            "clips": len(clips), "rounds": args.rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n",
                                           encoding="utf-8")
    text = report(meta, rows)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
