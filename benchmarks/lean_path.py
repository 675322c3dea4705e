"""The lean request path (issue 24): requests/s of the null model against a bare grpc.aio echo server,
before (another checkout's code, ``--main``) and after (this checkout), in one run.

    python -m benchmarks.lean_path --main /work/main --out benchmarks/results/lean_path \\
        [--rounds 3] [--run-s 8] [--concurrency 64] [--processes 2] [--profile-s 6 [--profile-gil]]

Rows, interleaved ``--rounds`` times so that a shared machine's drifting load spreads over all of them:

- ``echo``: ``benchmarks/grpc_echo.py``'s echo server (``EmotionRecognizer.Recognize`` returning one fixed,
  realistically sized response, no work), in its own process;
- ``hop``: the same echo server, but each request is first handed to a worker thread and back, batched as
  the server's batcher and runner do (``grpc_echo._Handoff``): the floor of any server that runs its model off
  the event loop, with nothing of this project's code in it;
- ``main``: the server of the ``--main`` checkout on the null model (``benchmarks/suite/null_model.py``);
- ``this``: this checkout's server on the null model.

Every row is the same closed loop as ``benchmarks.grpc_echo`` (``--concurrency`` clients over ``--processes``
client processes, short raw f32 clips, a 2 s warm pass first) and records requests/s, the server's CPU ms per
request (``/proc/<pid>/stat``) and the 1-minute load average before it. The summary is the median with
min–max per configuration and each null-model row over the echo row of its round. Each row also splits the
server's CPU by thread (its event loop thread, gRPC's C-core threads, other Python threads) and records the
share of the machine's cores busy during it: near 100 % the machine is the limit, well below one thread is.
``--profile-s N`` samples the echo and null-model servers of the last round with py-spy
(``/tmp/ci/base/.venv/bin/py-spy`` or ``py-spy`` on PATH; not a project dependency) and writes the raw
collapsed stacks and a summary (self and inclusive time per function and per area); ``--profile-gil`` keeps
only the samples taken while the GIL is held and gives the Python time per request by area. ``--quick``: one
short round, few clients, no profile (checks the harness; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.grpc_echo import _FRAME, _measure, collapsed_stacks, summarise_profile
from benchmarks.loadgen import THREAD_GROUPS, load_average, machine_description
from benchmarks.suite.null_model import build_null_model
from benchmarks.tracing_overhead import cpu_flags
from emotion2vec_serving.server.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
#: The null-model server's flags: the same as benchmarks.grpc_echo's null row (defaults otherwise).
FLAGS = ["--no-warmup", "--log-level", "WARNING"]
PY_SPY_RATE = 250  # samples per second
PY_SPY_CANDIDATES = (Path(sys.executable).parent / "py-spy", Path("/tmp/ci/base/.venv/bin/py-spy"))


def _py_spy() -> str | None:
    for candidate in PY_SPY_CANDIDATES:
        if candidate.exists():
            return str(candidate)
    return shutil.which("py-spy")


def inclusive_profile(collapsed: str, top: int = 25) -> list[dict[str, Any]]:
    """Inclusive ("total") time per function: the share of samples with the function anywhere on the stack."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in collapsed_stacks(collapsed):
        total += count
        seen = set()
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            func, path = (match["func"], match["file"]) if match else (frame, "")
            name = f"{func} ({'/'.join(path.split('/')[-2:])})"
            if name not in seen:
                seen.add(name)
                counts[name] += count
    return [{"name": k, "total_pct": round(100 * v / max(total, 1), 1)} for k, v in counts.most_common(top)]


def _profiled_measure(args: argparse.Namespace, target: str, pid: int, label: str,
                      profile_to: Path | None) -> dict[str, Any]:
    """``_measure``'s row for the server ``pid``, sampled by py-spy into ``profile_to`` meanwhile (None: no
    profile). The profile starts with the 2 s warm pass and ends inside the measured run when profile_s <
    run_s + 2. With ``--profile-gil`` only samples taken while a thread holds the GIL are kept: Python's own
    work, no waiting."""
    spy = None
    if profile_to is not None:
        exe = _py_spy()
        if exe is None:
            raise SystemExit("--profile-s needs py-spy (pip install py-spy)")
        spy = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(int(args.profile_s)), "--rate",
             str(PY_SPY_RATE), "--format", "raw", "--full-filenames", "--output", str(profile_to),
             "--nonblocking", *(["--gil"] if args.profile_gil else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    row = _measure(target, pid, args.concurrency, args.processes, args.run_s, label)
    if spy is not None:
        spy.wait(timeout=args.profile_s + 60)
    return row


def _echo_row(args: argparse.Namespace, handoff: bool = False,
              profile_to: Path | None = None) -> dict[str, Any]:
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-m", "benchmarks.grpc_echo", "--serve-echo", str(port),
                             *(["--handoff"] if handoff else [])],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        return _profiled_measure(args, f"127.0.0.1:{port}", echo.pid, "hop" if handoff else "echo",
                                 profile_to)
    finally:
        echo.terminate()
        echo.wait(timeout=10)


def _null_row(args: argparse.Namespace, model: Path, name: str, cwd: Path,
              profile_to: Path | None) -> dict[str, Any]:
    with ServerProcess(model, FLAGS, cwd=cwd, isolated_env=True, metrics=False, http=False,
                       startup_timeout_s=120.0) as srv:
        return _profiled_measure(args, srv.target, srv.pid, name, profile_to)


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    configs: list[tuple[str, Path]] = []
    if args.main:
        configs.append(("main", Path(args.main).resolve()))
    configs.append(("this", ROOT))
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[key]  # tracing stays off in every row
    model = build_null_model(Path.home() / ".cache" / "emotion2vec-bench" / "null_model")
    rounds: list[dict[str, dict[str, Any]]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for r in range(args.rounds):
        def profile_to(name: str, last: bool = r == args.rounds - 1) -> Path | None:
            return args.out / f"profile_{name}.txt" if args.profile_s > 0 and last else None
        rows = {"echo": _echo_row(args, profile_to=profile_to("echo")), "hop": _echo_row(args, handoff=True)}
        for name, cwd in configs:
            rows[name] = _null_row(args, model, name, cwd, profile_to(name))
        for name in ("hop", *(n for n, _ in configs)):
            rows[name]["over_echo"] = rows[name]["requests_per_s"] / rows["echo"]["requests_per_s"]
            rows[name]["added_cpu_ms_per_req"] = (rows[name]["server_cpu_ms_per_req"]
                                                  - rows["echo"]["server_cpu_ms_per_req"])
        rounds.append(rows)
    names = ["echo", "hop", *(n for n, _ in configs)]
    summary: dict[str, Any] = {}
    for name in names:
        summary[name] = {
            "requests_per_s": _summary([rd[name]["requests_per_s"] for rd in rounds]),
            "server_cpu_ms_per_req": _summary([rd[name]["server_cpu_ms_per_req"] for rd in rounds]),
            "threads_cpu_ms_per_req": {group: _summary([rd[name]["threads_cpu_ms_per_req"][group]
                                                        for rd in rounds]) for group in THREAD_GROUPS},
        }
        if name != "echo":
            summary[name]["over_echo"] = _summary([rd[name]["over_echo"] for rd in rounds])
            summary[name]["added_cpu_ms_per_req"] = _summary(
                [rd[name]["added_cpu_ms_per_req"] for rd in rounds])
    profiles: dict[str, Any] = {}
    for name in ("echo", *(n for n, _ in configs)):
        raw = args.out / f"profile_{name}.txt"
        if args.profile_s > 0 and raw.exists():
            text = raw.read_text(encoding="utf-8")
            profiles[name] = {**summarise_profile(text, top=20), "inclusive": inclusive_profile(text),
                              "gil_only": args.profile_gil}
            if args.profile_gil:
                # The share of the profile's time some thread held the GIL, and that time per request at the
                # last round's rate (the profile spans the 2 s warm pass too: an estimate).
                held = profiles[name]["samples"] / (PY_SPY_RATE * args.profile_s)
                profiles[name]["gil_held_share"] = round(held, 3)
                profiles[name]["gil_us_per_req"] = round(1e6 * held / rounds[-1][name]["requests_per_s"], 1)
            # py-spy's raw (collapsed stacks) output, kept compressed: `py-spy`-compatible after gunzip.
            (args.out / f"profile_{name}.txt.gz").write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
            raw.unlink()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python -m benchmarks.lean_path", *sys.argv[1:]]),
        "machine": {**machine_description(), "cpu_flags": cpu_flags()},
        "settings": {"rounds": args.rounds, "run_s": args.run_s, "concurrency": args.concurrency,
                     "profile_s": args.profile_s, "profile_gil": args.profile_gil,
                     "processes": args.processes, "server_flags": FLAGS, "main": args.main,
                     "clips": "short mix, raw f32 16 kHz (benchmarks.loadgen)", "quick": args.quick},
        "summary": summary,
        "rounds": rounds,
        "profiles": profiles,
        "load_after": load_average(),
    }


def cell(d: dict[str, float], fmt: str) -> str:
    """A summary cell: median (min–max)."""
    return f"{d['median']:{fmt}} ({d['min']:{fmt}}–{d['max']:{fmt}})"


def report(result: dict[str, Any]) -> str:
    s = result["summary"]

    loads = [row["loadavg_1m"] for rows in result["rounds"] for row in rows.values()]
    cores = result["machine"]["cores"] or 1
    lines = [
        "# Null model vs echo: the lean request path (issue 24)",
        "",
    ]
    if max(loads) > cores:
        lines += [f"The 1-minute load average before the rows was {min(loads):.1f}–{max(loads):.1f} on "
                  f"{cores} cores. The benchmark itself keeps the server and two client processes busy "
                  "(load ~3 on a quiet machine); a higher load means other work too. Requests/s and ratios "
                  "between rows move with it; server CPU per request is the steadier figure.", ""]
    lines += [
        f"- **Command**: `{result['command']}` ({result['date']})",
        f"- **Machine**: {result['machine']['cpu']}, {result['machine']['cores']} cores; CPU flags: "
        f"`{result['machine']['cpu_flags']}`",
        f"- {result['settings']['rounds']} rounds, {result['settings']['run_s']} s per row, "
        f"{result['settings']['concurrency']} closed-loop clients in {result['settings']['processes']} "
        "process(es); median (min–max) over the rounds.",
        "",
        "| configuration | requests/s | server CPU ms/request | × echo (same round) | added CPU ms/request |",
        "|---|---|---|---|---|",
    ]
    for name, row in s.items():
        over = cell(row["over_echo"], ".2f") if "over_echo" in row else "1"
        added = cell(row["added_cpu_ms_per_req"], ".3f") if "added_cpu_ms_per_req" in row else "0"
        lines.append(f"| {name} | {cell(row['requests_per_s'], '.0f')} | "
                     f"{cell(row['server_cpu_ms_per_req'], '.3f')} | {over} | {added} |")
    if all("main" in rows and "this" in rows for rows in result["rounds"]):
        ratios = [rows["this"]["requests_per_s"] / rows["main"]["requests_per_s"]
                  for rows in result["rounds"]]
        cpu = [rows["this"]["server_cpu_ms_per_req"] / rows["main"]["server_cpu_ms_per_req"]
               for rows in result["rounds"]]
        rps = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
        per = f"{statistics.median(cpu):.2f} ({min(cpu):.2f}–{max(cpu):.2f})"
        lines += ["", f"This checkout against main in the same round: requests/s × {rps}, "
                      f"server CPU per request × {per}."]
    lines += ["", "Every row, with the share of the machine's cores busy during it (`/proc/stat`: server, "
              "clients and anything else; near 100 % the machine is the limit, well below it something in "
              "one process is) and the 1-minute load average just before it:", "",
              "| round | configuration | requests/s | server CPU ms/request | machine busy | load 1 min |",
              "|---|---|---|---|---|---|"]
    for i, rows in enumerate(result["rounds"], 1):
        for name, row in rows.items():
            busy = row.get("machine_busy_share")
            lines.append(f"| {i} | {name} | {row['requests_per_s']:.0f} | "
                         f"{row['server_cpu_ms_per_req']:.3f} | "
                         f"{'–' if busy is None else f'{100 * busy:.0f} %'} | {row['loadavg_1m']:.2f} |")
    lines += ["", "The server's CPU per request by thread (`/proc/<pid>/task`; median over the rounds, ms): "
              "the event loop runs gRPC's Python side and every handler; gRPC's C core moves the bytes; the "
              "other Python threads are grpc.aio's completion-queue poller and, in hop and the null-model "
              "rows, the worker or model-runner threads.", "",
              f"| configuration | {' | '.join(THREAD_GROUPS)} | all threads |", "|---|---|---|---|---|"]
    for name, row in s.items():
        groups = row.get("threads_cpu_ms_per_req")
        if groups:
            lines.append(f"| {name} | " + " | ".join(cell(groups[g], ".3f") for g in THREAD_GROUPS)
                         + f" | {cell(row['server_cpu_ms_per_req'], '.3f')} |")
    for name, prof in result["profiles"].items():
        kind = "GIL held only (`py-spy --gil`)" if prof.get("gil_only") else "all samples, idle included"
        lines += ["", f"## py-spy profile: {name} ({prof['samples']} samples, {kind}, "
                      f"`profile_{name}.txt.gz`)", ""]
        per_req = prof.get("gil_us_per_req")
        if per_req is not None:
            lines += [f"A thread held the GIL {100 * prof['gil_held_share']:.0f} % of the profiled time: "
                      f"about {per_req:.0f} µs of Python per request at this row's rate (the profile spans "
                      "the 2 s warm pass too, so this is an estimate).", "",
                      "| area | self % | ≈ µs per request |", "|---|---|---|"]
            lines += [f"| {a['name']} | {a['self_pct']} | {a['self_pct'] * per_req / 100:.0f} |"
                      for a in prof["by_area"][:10]]
        else:
            lines += ["| area | self % |", "|---|---|"]
            lines += [f"| {a['name']} | {a['self_pct']} |" for a in prof["by_area"][:10]]
        lines += ["", "| function | inclusive % |", "|---|---|"]
        lines += [f"| {f['name']} | {f['total_pct']} |" for f in prof["inclusive"][:25]]
    return "\n".join(lines) + "\n"


def readme_table(result: dict[str, Any]) -> dict[str, Any]:
    """The README's table of this run (``benchmarks/readme_tables.py`` renders ``readme_table.json``)."""
    s = result["summary"]

    loads = [row["loadavg_1m"] for rows in result["rounds"] for row in rows.values()]
    cores = result["machine"]["cores"] or 1
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    flags = " ".join(f for f in str(result["machine"]["cpu_flags"]).split() if f in wanted)
    text = (f"`{result['command']}` ({result['date']}; {result['machine']['cpu']}, {cores} cores, CPU flags "
            f"`{flags}`; {result['settings']['rounds']} rounds of "
            f"{result['settings']['run_s']} s, {result['settings']['concurrency']} closed-loop clients, "
            f"median (min–max); load 1m {min(loads):.1f}–{max(loads):.1f}; details "
            "[benchmarks/results/lean_path/README.md](benchmarks/results/lean_path/README.md))")
    if max(loads) > cores:
        text += (f". The 1-minute load was above the {cores} cores (the benchmark's own server and two "
                 "client processes make ~3): requests/s and their ratios move with it; server CPU per "
                 "request is the steadier figure.")
    text += (". Where each request's CPU goes, and why the null model cannot reach 0.8 x the echo with a "
             "Python front end on these cores: [benchmarks/README.md](benchmarks/README.md#the-lean-request-"
             "path-where-a-requests-cpu-goes-issue-24-2026-12-08).")
    names = {"echo": "bare grpc.aio echo server",
             "hop": "echo + a batched hand-off to a worker thread and back (no model)",
             "main": "null model, before the lean path (--main)",
             "this": "null model, this checkout"}
    rows = []
    for name, row in s.items():
        over = cell(row["over_echo"], ".2f") if "over_echo" in row else "1"
        loop = row.get("threads_cpu_ms_per_req", {}).get(THREAD_GROUPS[0])
        rows.append([names.get(name, name), cell(row["requests_per_s"], ".0f"),
                     cell(row["server_cpu_ms_per_req"], ".3f"), cell(loop, ".3f") if loop else "–", over])
    return {"title": "Lean request path: null model against a bare grpc.aio echo server", "text": text,
            "header": ["configuration", "requests/s", "server CPU ms/request",
                       "of which the event loop thread", "x echo (same round)"],
            "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--main", help="another checkout to measure as 'main' (e.g. /work/main)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lean_path"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-s", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--profile-s", type=float, default=0.0,
                        help="py-spy the null-model servers of the last round for this many s (0: none)")
    parser.add_argument("--profile-gil", action="store_true",
                        help="profile only while a thread holds the GIL (py-spy --gil): the Python work per "
                             "request by area, in microseconds")
    parser.add_argument("--quick", action="store_true", help="one short round with few clients, no profile")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.run_s, args.concurrency, args.processes, args.profile_s = 1, 1.0, 4, 1, 0.0
    result = run(args)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "README.md").write_text(report(result), encoding="utf-8")
    (args.out / "readme_table.json").write_text(json.dumps(readme_table(result), indent=1) + "\n",
                                                encoding="utf-8")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
