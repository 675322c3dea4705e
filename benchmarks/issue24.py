"""Issue 24's benchmark tables in one command, then the README's performance section regenerated from them.

    C=~/.cache/emotion2vec-bench
    python -m benchmarks.issue24 --fp32-repo $C/repo_large --int8-repo $C/repo_large_int8 \\
        --checkpoint $C/ckpt_large --out benchmarks/results
    python -m benchmarks.issue24 --quick --out /tmp/issue24-quick     # tiny model, each section briefly

Sections (``--sections``, default all), each one benchmark run as a child process writing under
``--out/<name>/``; every table carries its command, the CPU flags and the load before each row:

- ``baselines``: the offline ONNX Runtime limit and FunASR one at a time, warm, in this run
  (``benchmarks.cpu_engines --sections offline,funasr``, fp32 and int8) -> ``issue24_baselines/``;
- ``adaptive``: fixed 1 x 2, fixed 2 x 1 and adaptive at C = 1, 2, 4 for fp32 and int8
  (``benchmarks.adaptive_cpu``) -> ``adaptive_cpu/``;
- ``lean``: the null model against a bare echo server (``benchmarks.lean_path``; while that module does not
  exist, ``benchmarks.grpc_echo``) -> ``lean_path/``;
- ``emulated``: the server through the emulated GPU, PCM and Opus, on the estimated card and on one that is
  never the bottleneck (``benchmarks.emulated_gpu``, ``--rounds`` runs, the median row per card and input
  kept with every round's requests/s) -> ``emulated_gpu/``;
- ``rss``: peak RSS over a ``--rss-minutes`` open-loop run (``benchmarks.rss_open_loop``)
  -> ``rss_open_loop/``.

A section whose benchmark module is not there yet is skipped with a note (the table stays pluggable: the
module's arguments come from ``--<section>-args`` when its defaults below do not fit). The issue's rules, for
the full mode: every row at least 100 requests or 120 s, three rounds, median with min–max. ``--readme``
rewrites README.md from the result files at the end (``benchmarks/readme_tables.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import loadgen, readme_tables
from benchmarks.emulated_gpu import _cpu_flags as cpu_flags

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("baselines", "adaptive", "lean", "emulated", "rss")


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def section_commands(args: argparse.Namespace) -> dict[str, tuple[str, list[str]] | None]:
    """Per section: (module, argv) or None when its module is not there yet."""
    out: Path = args.out
    rounds = str(args.rounds)
    quick = ["--quick"] if args.quick else []
    commands: dict[str, tuple[str, list[str]] | None] = {}
    fp32, int8 = str(args.fp32_repo), str(args.int8_repo or args.fp32_repo)
    commands["baselines"] = ("benchmarks.cpu_engines", [
        "--fp32-repo", fp32, "--int8-repo", int8,
        "--sections", "offline,funasr" if args.checkpoint else "offline",
        *(["--checkpoint", str(args.checkpoint)] if args.checkpoint else []), "--passes", rounds,
        *(["--clips", "2", "--funasr-budget-s", "5"] if args.quick else []),
        "--out", str(out / "issue24_baselines"), *shlex.split(args.baselines_args)])
    commands["adaptive"] = ("benchmarks.adaptive_cpu", [
        "--fp32-repo", fp32, *(["--int8-repo", str(args.int8_repo)] if args.int8_repo else []),
        "--clients", "1,2,4", "--rounds", rounds, *quick,
        "--out", str(out / "adaptive_cpu"), *shlex.split(args.adaptive_args)])
    if _module_exists("benchmarks.lean_path"):
        commands["lean"] = ("benchmarks.lean_path", [
            "--rounds", rounds, *quick, "--out", str(out / "lean_path"), *shlex.split(args.lean_args)])
    else:  # until the lean path's benchmark lands: the existing null model vs echo measurement
        commands["lean"] = ("benchmarks.grpc_echo", [
            "--run-s", "3" if args.quick else "120", *(["--processes", "1"] if args.quick else []),
            "--out", str(out / "lean_path" / "null_vs_echo.json"), *shlex.split(args.lean_args)])
    commands["emulated"] = ("benchmarks.emulated_gpu", [
        "--run-s", "3" if args.quick else "120",
        *(["--concurrency", "16", "--clips", "4", "--warm-s", "1"] if args.quick else []),
        *shlex.split(args.emulated_args)])  # --out per round, below
    commands["rss"] = ("benchmarks.rss_open_loop", [
        "--model-repo", fp32, "--minutes", str(args.rss_minutes), "--rounds", rounds, *quick,
        "--out", str(out / "rss_open_loop"), *shlex.split(args.rss_args)])
    for name, command in list(commands.items()):
        if command is not None and not _module_exists(command[0]):
            commands[name] = None
    return commands


def _run(module: str, argv: list[str], log: list[dict[str, Any]], section: str) -> bool:
    load = round(loadgen.load_average()[0], 2)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, check=False)
    log.append({"section": section, "command": "python -m " + module + " " + shlex.join(argv),
                "load_1m_before": load, "seconds": round(time.time() - started, 1), "rc": proc.returncode})
    print(json.dumps(log[-1]), flush=True)
    return proc.returncode == 0


def merge_emulated_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several emulated_gpu runs -> one results.json in the same format: per card and input, the round with
    the median requests/s, with every round's requests/s and load in ``rps_rounds`` / ``load_rounds``."""
    merged = dict(rounds[0])
    merged["rows"] = []

    def key(row: dict[str, Any]) -> tuple[str, str]:
        return row.get("card", "estimate"), row["input"]

    for wanted in dict.fromkeys(key(r) for r in rounds[0]["rows"]):
        rows = sorted((row for run in rounds for row in run["rows"] if key(row) == wanted),
                      key=lambda row: row["rps"])
        median = dict(rows[(len(rows) - 1) // 2])
        median["rps_rounds"] = [row["rps"] for row in rows]
        median["load_rounds"] = [row["load_1m"] for row in rows]
        merged["rows"].append(median)
    merged["load_start"] = rounds[0]["load_start"]
    merged["load_end"] = rounds[-1]["load_end"]
    merged["rounds"] = len(rounds)
    return merged


def emulated_report(merged: dict[str, Any]) -> str:
    """report.md of merged emulated GPU rounds: each round's own report is in ``round<N>/report.md``."""
    from benchmarks.emulated_gpu import _table

    target_rt = merged["rows"][0]["target_rps"] * 3.75 if merged["rows"] else 2000.0
    lines = [
        "# The server through an emulated GPU (issue 24), " + f"{merged['rounds']} rounds", "",
        f"- each round: `{merged['command']}` (its report, with the cards and the machine: "
        "`round<N>/report.md`)",
        f"- load average at the start of the first round {merged['load_start']}, at the end of the last "
        f"{merged['load_end']}; CPU flags: {merged['cpu_flags']}",
        "- each row below is the round with the median requests/s for its card and input; every round's "
        "requests/s and 1-minute load before the row:", "",
    ]
    for row in merged["rows"]:
        pairs = zip(row["rps_rounds"], row["load_rounds"], strict=True)
        rounds = ", ".join(f"{rps:.1f} (load {load:.2f})" for rps, load in pairs)
        lines.append(f"  - {row.get('card', 'estimate')}, {row['input']}: {rounds}")
    return "\n".join([*lines, "", *_table(merged["rows"], target_rt), ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, a few seconds per row")
    parser.add_argument("--fp32-repo", type=Path, help="large fp32 repository (default: tiny in --quick)")
    parser.add_argument("--int8-repo", type=Path, help="large int8 repository")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint directory for the FunASR baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--rounds", type=int, help="rounds per row (default 3; quick 1)")
    parser.add_argument("--rss-minutes", type=float, help="open-loop minutes per RSS round (default 10)")
    for name in ("baselines", "adaptive", "lean", "emulated", "rss"):
        parser.add_argument(f"--{name}-args", default="", help=f"extra arguments for the {name} benchmark")
    parser.add_argument("--readme", action="store_true", help="regenerate README.md's tables at the end")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.rss_minutes = args.rss_minutes or (0.1 if args.quick else 10.0)
    if args.fp32_repo is None:
        if not args.quick:
            parser.error("--fp32-repo is required outside --quick")
        from benchmarks.run_benchmarks import CACHE, ensure_tiny_repo

        args.fp32_repo = ensure_tiny_repo(CACHE)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    if set(wanted) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(set(wanted) - set(SECTIONS))}; choose from {SECTIONS}")
    args.out.mkdir(parents=True, exist_ok=True)
    commands = section_commands(args)
    log: list[dict[str, Any]] = []
    notes: list[str] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for section in wanted:
        command = commands[section]
        if command is None:
            notes.append(f"{section}: skipped, its benchmark module is not in this checkout yet")
            print(notes[-1], flush=True)
            continue
        module, sub_argv = command
        if section != "emulated":
            if not _run(module, sub_argv, log, section):
                notes.append(f"{section}: failed (rc != 0), see the log above")
            continue
        runs = []
        for rnd in range(args.rounds):
            round_out = args.out / "emulated_gpu" / f"round{rnd}"
            if _run(module, [*sub_argv, "--out", str(round_out)], log, section):
                runs.append(json.loads((round_out / "results.json").read_text(encoding="utf-8")))
        if runs:
            merged = merge_emulated_rounds(runs)
            (args.out / "emulated_gpu" / "results.json").write_text(
                json.dumps(merged, indent=2, default=str) + "\n", encoding="utf-8")
            if len(runs) == 1:
                shutil.copy(args.out / "emulated_gpu" / "round0" / "report.md", args.out / "emulated_gpu")
            else:
                report = emulated_report(merged)
                (args.out / "emulated_gpu" / "report.md").write_text(report, encoding="utf-8")
        else:
            notes.append("emulated: every round failed")
    given = list(argv if argv is not None else sys.argv[1:])
    command_line = "python -m benchmarks.issue24 " + shlex.join(given)
    meta = {"command": command_line, "machine": loadgen.machine_description(), "cpu_flags": cpu_flags(),
            "started": started, "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "rounds": args.rounds, "quick": args.quick, "runs": log, "notes": notes}
    (args.out / "issue24_run.json").write_text(json.dumps(meta, indent=1, default=str) + "\n",
                                               encoding="utf-8")
    if args.readme:
        readme_tables.main(["--results", str(args.out)])
    print("\n".join(notes) or "all sections ran")
    return 1 if any("failed" in n for n in notes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
