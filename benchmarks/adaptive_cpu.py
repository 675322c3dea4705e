"""Load-adaptive CPU parallelism (issue 24): fixed 1 x T, fixed 2 x T/2 and adaptive, at C = 1, 2, 4.

    python -m benchmarks.adaptive_cpu --fp32-repo $C/repo_large --int8-repo $C/repo_large_int8 \\
        --out benchmarks/results/adaptive_cpu
    python -m benchmarks.adaptive_cpu --quick --fp32-repo <tiny> --int8-repo <tiny int8> --out /tmp/x

Each row is the real server (``benchmarks.suite.server_process``) under C closed-loop clients on the
``realistic`` mix for ``--run-s`` seconds or ``--min-requests`` requests, whichever comes first (full: 120 s
or 100 requests, the issue's "at least 100 requests or 120 s"; three rounds, median with min-max), after one
warm pass over the clips; the server's peak PSS and VmHWM and the widths it ran
(``emotion_runner_width``) come with it. Configurations (T = ``--threads``, default every core):
``fixed 1xT`` (``--runner-instances 1 --intra-op-threads T``), ``fixed 2x(T/2)`` and ``adaptive``
(``--runner-instances 0 --intra-op-threads T``, the server's default). Every row carries the 1-minute
load average taken just before it; the report states the command and the CPU flags. ``--quick``: the tiny
model, C = 1 and 4, 2 s rows, one round (checks the harness, measures nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import cpu_engines, loadgen

CONFIGS = ("fixed 1xT", "fixed 2x(T/2)", "adaptive")


@dataclasses.dataclass(frozen=True)
class Shape(cpu_engines.Config):
    """A runner shape: ``instances`` 0 = adaptive over the whole thread budget."""

    def server_args(self, threads: int) -> list[str]:
        per = threads if self.instances == 0 else max(1, threads // self.instances)
        return ["--intra-op-threads", str(per), "--runner-instances", str(self.instances)]


def cpu_flags() -> str:
    flags = loadgen.cpu_flags(loadgen.TABLE_FLAGS)
    return "unknown" if flags is None else " ".join(flags)


def measure(precision: str, repo: Path, threads: int, clients: Sequence[int], rounds: int, run_s: float,
            clips: list[Any], min_requests: int | None = None) -> list[dict[str, Any]]:
    shapes = [Shape("fixed 1xT", repo, instances=1), Shape("fixed 2x(T/2)", repo, instances=2),
              Shape("adaptive", repo, instances=0)]
    rows = []
    for c in clients:
        for shape in shapes:
            runs = []
            for r in range(rounds):
                row = cpu_engines.server(shape, clips, threads, c, run_s, min_requests)
                runs.append(row)
                cpu_engines.log(f"{precision} {shape.name} C={c} round {r + 1}: {row['audio_s_per_s']:.2f} "
                                f"audio-s/s")
            values = [float(x["audio_s_per_s"]) for x in runs]
            rss = [float(x["server_vmhwm_mb"]) for x in runs]
            pss = [float(x["server_peak_pss_mb"]) for x in runs]
            rows.append({
                "precision": precision, "config": shape.name, "clients": c,
                "server_args": runs[0]["server_args"],
                "audio_s_per_s": statistics.median(values), "audio_s_per_s_min": min(values),
                "audio_s_per_s_max": max(values),
                "requests": [int(x["ok"]) for x in runs],
                "p50_ms": statistics.median(float(x["p50_ms"]) for x in runs),
                "p99_ms": statistics.median(float(x["p99_ms"]) for x in runs),
                "mean_batch_size": statistics.median(float(x["mean_batch_size"]) for x in runs),
                "vmhwm_mb": statistics.median(rss), "vmhwm_mb_max": max(rss),
                "pss_mb": statistics.median(pss), "pss_mb_max": max(pss),
                "seconds": [round(float(x["wall_s"]), 1) for x in runs],
                "loadavg_1m": [x["loadavg_1m"] for x in runs],
                "rounds": rounds,
            })
    return rows


def best_fixed(rows: Sequence[dict[str, Any]], row: dict[str, Any]) -> float:
    """The best fixed configuration's audio-s/s at ``row``'s precision and client count (NaN: none)."""
    fixed = [r["audio_s_per_s"] for r in rows if r["precision"] == row["precision"]
             and r["clients"] == row["clients"] and r["config"] != "adaptive"]
    return max(fixed) if fixed else float("nan")


def memory_vs_one(rows: Sequence[dict[str, Any]], row: dict[str, Any]) -> float:
    """``row``'s peak PSS over fixed 1xT's at the same precision and client count (NaN: none)."""
    one = [r["pss_mb"] for r in rows if r["precision"] == row["precision"]
           and r["clients"] == row["clients"] and r["config"] == "fixed 1xT"]
    return row["pss_mb"] / one[0] if one and one[0] else float("nan")


def report(rows: list[dict[str, Any]], command: str, quick: bool) -> str:
    lines = [
        "# Adaptive CPU parallelism: fixed 1xT, fixed 2x(T/2), adaptive"
        + (" (QUICK: tiny model)" if quick else ""),
        "",
        f"Command: `{command}`  ",
        f"CPU: {loadgen.machine_description().get('cpu')}, {os.cpu_count()} cores, flags: {cpu_flags()}  ",
        f"Taken {time.strftime('%Y-%m-%d %H:%M')}; the load average before each round is in the last column "
        "(the machine is shared: compare rows only with a low load). Memory: the server's peak PSS during "
        "the row (a page mapped by two sessions counted once) and its VmHWM (counted per mapping).",
        "",
        "| precision | config | C | audio-s/s median (min-max) | vs best fixed | p50 ms | p99 ms "
        "| mean batch | peak PSS MB | PSS vs 1xT | VmHWM MB | requests | seconds | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        best = best_fixed(rows, row)
        lines.append(
            f"| {row['precision']} | {row['config']} | {row['clients']} | {row['audio_s_per_s']:.2f} "
            f"({row['audio_s_per_s_min']:.2f}-{row['audio_s_per_s_max']:.2f}) | "
            f"{row['audio_s_per_s'] / best:.3f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
            f"{row['mean_batch_size']:.2f} | {row['pss_mb']:.0f} | {memory_vs_one(rows, row):.2f} | "
            f"{row['vmhwm_mb']:.0f} | {row['requests']} | {row['seconds']} | {row['loadavg_1m']} |"
        )
    return "\n".join(lines) + "\n"


def readme_table(result: dict[str, Any]) -> dict[str, Any]:
    """The README's table of this run (``benchmarks/readme_tables.py`` renders ``readme_table.json``)."""
    rows, table = result["rows"], []
    for row in rows:
        best = best_fixed(rows, row)
        table.append([row["precision"], row["config"], str(row["clients"]),
                      f"{row['audio_s_per_s']:.2f} "
                      f"({row['audio_s_per_s_min']:.2f}–{row['audio_s_per_s_max']:.2f})",
                      f"{row['audio_s_per_s'] / best:.3f}", f"{row['pss_mb']:,.0f}",
                      f"{memory_vs_one(rows, row):.2f}", f"{row['vmhwm_mb']:,.0f}",
                      ", ".join(f"{x:.1f}" for x in row["loadavg_1m"])])
    rounds = rows[0]["rounds"] if rows else 0
    text = (f"`{result['command']}` ({result.get('date', '?')}; {result['machine'].get('cpu')}, "
            f"{result['threads']} threads, CPU flags `{result['cpu_flags']}`; {rounds} round(s) per row, "
            f"each {result.get('run_s', '?')} s or {result.get('min_requests') or 'unlimited'} requests if "
            "sooner, "
            "median (min–max), realistic mix, closed loop; details "
            "[benchmarks/results/adaptive_cpu/report.md](benchmarks/results/adaptive_cpu/report.md))")
    if result.get("quick"):
        text += ". **QUICK: tiny model, measures nothing.**"
    return {"title": "Load-adaptive CPU parallelism: fixed 1 x T, fixed 2 x T/2 and adaptive", "text": text,
            "header": ["precision", "config", "clients", "audio-s/s", "vs best fixed", "peak PSS MB",
                       "PSS vs 1 x T", "VmHWM MB", "load 1m per round"],
            "rows": table}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32-repo", type=Path, required=True)
    p.add_argument("--int8-repo", type=Path)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/adaptive_cpu"))
    p.add_argument("--threads", type=int, default=0, help="thread budget T (0: every core)")
    p.add_argument("--clients", default="1,2,4")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--run-s", type=float, default=120.0)
    p.add_argument("--min-requests", type=int, default=100,
                   help="a row also ends after this many requests, if sooner than --run-s (0: time only)")
    p.add_argument("--mix", default="realistic")
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    if args.quick:
        clients, args.rounds, args.run_s, args.clips = [1, 4], 1, 2.0, 8
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    clips = loadgen.make_clips(args.mix, args.clips, 0)
    cap = args.min_requests or None
    rows = measure("fp32", args.fp32_repo, threads, clients, args.rounds, args.run_s, clips, cap)
    if args.int8_repo is not None:
        rows += measure("int8", args.int8_repo, threads, clients, args.rounds, args.run_s, clips, cap)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.adaptive_cpu " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "machine": loadgen.machine_description(), "cpu_flags": cpu_flags(),
              "threads": threads, "quick": args.quick, "run_s": args.run_s, "min_requests": cap,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "report.md").write_text(report(rows, command, args.quick))
    (args.out / "readme_table.json").write_text(json.dumps(readme_table(result), indent=1) + "\n")
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
