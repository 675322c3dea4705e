"""Peak memory (PSS, and ``VmHWM``) of the real server over a long open-loop run (issue 24: "RSS over a
10-minute open-loop run", goal ≤ 1,600 MiB for the large fp32 model in every run, read on PSS: see the
report's notes).

Each round starts a fresh server process (``VmHWM`` never goes down, so a round is a process), waits for it
to serve (warm-up included), then offers Poisson arrivals at ``--rate`` requests/s for ``--minutes`` from the
seeded ``realistic`` mix (the issue's workload: 40 clips, median ~3.5 s, raw PCM), sampling the server's
``VmRSS`` and PSS every ``--sample-s`` and reading ``VmHWM`` after start-up and at the end. Variants compare
server flags and environment (e.g. ``MALLOC_ARENA_MAX``) round by round, alternating, in the same run::

    python -m benchmarks.rss_open_loop --model-repo ~/.cache/emotion2vec-bench/repo_large --minutes 10 \\
        --rate 0.6 --rounds 3 --out benchmarks/results/rss_open_loop
    python -m benchmarks.rss_open_loop --quick --out /tmp/rss_quick     # tiny model, < 1 minute (CI)

    --variant 'label|server flags|ENV=VALUE ...'   (repeatable; default: one variant, the defaults)

Writes ``results.json`` and ``report.md`` (command, CPU flags, the 1-minute load average before each row;
per variant the median with min–max over the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.emulated_gpu import _cpu_flags as cpu_flags
from benchmarks.suite.server_process import ServerProcess

GOAL_MIB = 1600.0
CACHE = Path.home() / ".cache" / "emotion2vec-bench"


@dataclass
class Variant:
    label: str
    server_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def parse_variant(text: str) -> Variant:
    """``'label|--flag value|ENV=VALUE OTHER=1'``; the last two parts are optional."""
    parts = [p.strip() for p in text.split("|")]
    env = dict(item.split("=", 1) for item in shlex.split(parts[2])) if len(parts) > 2 and parts[2] else {}
    return Variant(parts[0], shlex.split(parts[1]) if len(parts) > 1 else [], env)


class _Sampler:
    """``VmRSS`` and PSS of a process every ``interval_s`` on a thread, as (seconds since start, RSS MiB,
    PSS MiB)."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _take(self) -> None:
        self.samples.append((round(time.monotonic() - self._t0, 2),
                             round(loadgen.RssSampler.read_mb(self.pid), 1),
                             round(loadgen.RssSampler.read_pss_mb(self.pid), 1)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> _Sampler:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()


def run_round(repo: Path, variant: Variant, rnd: int, args: argparse.Namespace,
              requests: Sequence[Any], audio_s: Sequence[float]) -> dict[str, Any]:
    load_before = round(loadgen.load_average()[0], 2)
    with ServerProcess(repo, variant.server_args, env=variant.env or None) as srv:
        hwm_start = loadgen.RssSampler.read_mb(srv.pid, "VmHWM")
        rss_start = loadgen.RssSampler.read_mb(srv.pid)
        pss_start = loadgen.RssSampler.read_pss_mb(srv.pid)
        before = loadgen.scrape(srv.metrics_url)
        with _Sampler(srv.pid, args.sample_s) as sampler:
            records, wall = asyncio.run(loadgen.open_loop(
                srv.target, requests, audio_s, args.rate, args.minutes * 60.0, seed=args.seed + rnd,
                timeout_s=args.timeout_s))
        after = loadgen.scrape(srv.metrics_url)
        hwm_end = loadgen.RssSampler.read_mb(srv.pid, "VmHWM")
        rss_end = loadgen.RssSampler.read_mb(srv.pid)
    result = loadgen.summarize(variant.label, "open", args.rate, records, wall, before, after)
    row = result.to_row()
    rss = [mb for _, mb, _ in sampler.samples]
    pss = [mb for _, _, mb in sampler.samples]
    row.update(
        variant=variant.label, round=rnd, server_args=variant.server_args, env=variant.env,
        load_1m_before=load_before, minutes=args.minutes,
        rss_after_startup_mib=round(rss_start, 1), hwm_after_startup_mib=round(hwm_start, 1),
        rss_end_mib=round(rss_end, 1), max_rss_sampled_mib=round(max(rss), 1),
        peak_rss_mib=round(hwm_end, 1), pss_after_startup_mib=round(pss_start, 1),
        peak_pss_mib=round(max(pss), 1), within_goal=max(pss) <= GOAL_MIB,
        hwm_within_goal=hwm_end <= GOAL_MIB,
        rss_samples=sampler.samples,
    )
    print(json.dumps({k: v for k, v in row.items() if k != "rss_samples"}, default=str), flush=True)
    return row


def _median_range(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    if not values:
        return "–"
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, in first-seen order: median with min–max over the rounds."""
    out = []
    for label in dict.fromkeys(r["variant"] for r in rows):
        part = [r for r in rows if r["variant"] == label]
        out.append({
            "variant": label, "rounds": len(part),
            "requests_ok": [r["ok"] for r in part], "errors": sum(r["errors"] + r["rejected"] for r in part),
            "peak_rss_mib": [r["peak_rss_mib"] for r in part],
            "peak_pss_mib": [r.get("peak_pss_mib", float("nan")) for r in part],
            "hwm_after_startup_mib": [r["hwm_after_startup_mib"] for r in part],
            "rss_end_mib": [r["rss_end_mib"] for r in part],
            "p99_ms": [r["p99_ms"] for r in part],
            "audio_s_per_s": [r["audio_s_per_s"] for r in part],
            "load_1m_before": [r["load_1m_before"] for r in part],
            "every_round_within_goal": all(r["within_goal"] for r in part),
        })
    return out


def table(summ: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| variant | rounds | requests answered per round | peak PSS MiB | peak RSS (VmHWM) MiB | "
        "VmHWM after start-up MiB | RSS at end MiB | p99 ms | audio-s/s | load 1m before | "
        "PSS ≤ 1,600 MiB every round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summ:
        lines.append(
            f"| {s['variant']} | {s['rounds']} | {_median_range(s['requests_ok'])} | "
            f"{_median_range(s['peak_pss_mib'])} | "
            f"{_median_range(s['peak_rss_mib'])} | {_median_range(s['hwm_after_startup_mib'])} | "
            f"{_median_range(s['rss_end_mib'])} | {_median_range(s['p99_ms'])} | "
            f"{_median_range(s['audio_s_per_s'], '{:.2f}')} | "
            f"{', '.join(f'{x:.2f}' for x in s['load_1m_before'])} | "
            f"{'yes' if s['every_round_within_goal'] else 'no'} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds per round (CI)")
    parser.add_argument("--model-repo", type=Path, help="model repository (default: tiny in --quick)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rss_open_loop"))
    parser.add_argument("--minutes", type=float, help="open-loop minutes per round (default 10; quick 0.1)")
    parser.add_argument("--rate", type=float, help="offered requests/s (default 0.6; quick 8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mix", default="realistic")
    parser.add_argument("--clips", type=int, default=40, help="distinct clips, cycled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-s", type=float, default=0.5, help="VmRSS and PSS sampling interval")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per-request deadline")
    parser.add_argument("--note", default="", help="a caveat printed with the table")
    parser.add_argument("--variant", action="append", default=[],
                        help="'label|server flags|ENV=VALUE ...' (repeatable)")
    args = parser.parse_args(argv)
    if args.minutes is None:
        args.minutes = 0.1 if args.quick else 10.0
    if args.rate is None:
        args.rate = 8.0 if args.quick else 0.6
    if args.model_repo is None:
        if not args.quick:
            parser.error("--model-repo is required outside --quick")
        from benchmarks.run_benchmarks import ensure_tiny_repo

        args.model_repo = ensure_tiny_repo(CACHE)
    variants = [parse_variant(v) for v in args.variant] or [Variant("defaults")]
    if args.quick:  # the tiny model warms up in a moment; one intra-op thread spares the shared CPU
        for v in variants:
            v.server_args = ["--intra-op-threads", "1", *v.server_args]
    clips = loadgen.make_clips(args.mix, args.clips, args.seed)
    requests = loadgen.build_requests(clips)
    audio_s = [len(c) / loadgen.SAMPLE_RATE_HZ for c in clips]
    args.out.mkdir(parents=True, exist_ok=True)
    machine = loadgen.machine_description()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    rows = [run_round(args.model_repo, v, rnd, args, requests, audio_s)
            for rnd in range(args.rounds) for v in variants]  # variants alternate within each round
    command = "python -m benchmarks.rss_open_loop " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    summ = summary(rows)
    meta = {
        "command": command, "machine": machine, "cpu_flags": cpu_flags(), "started": started,
        "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "model_repo": str(args.model_repo),
        "minutes": args.minutes, "rate_rps": args.rate, "rounds": args.rounds, "mix": args.mix,
        "clips": len(clips), "clip_audio_s": round(sum(audio_s), 2), "max_clip_s": round(max(audio_s), 2),
        "goal_mib": GOAL_MIB, "quick": args.quick, "note": args.note,
    }
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "summary": summ, "rows": rows}, indent=1, default=str) + "\n",
        encoding="utf-8")
    report = [
        "# Server RSS over an open-loop run (issue 24)", "",
        f"- command: `{command}`",
        f"- model: `{args.model_repo}`; {args.rounds} rounds x {args.minutes:g} min open loop (Poisson, "
        f"{args.rate:g} requests/s offered), a fresh server process per round, variants alternating",
        f"- workload: {len(clips)} `{args.mix}` clips ({sum(audio_s):.1f} s of audio, longest "
        f"{max(audio_s):.1f} s), raw PCM f32le",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; CPU flags: "
        f"{cpu_flags()}; onnxruntime {machine['onnxruntime']}; {started} – {meta['ended']}",
        "- peak PSS = the largest proportional set size (`Pss` of `/proc/PID/smaps_rollup`) sampled every "
        f"{args.sample_s:g} s from serving to the end of the round: the memory the process holds, a page "
        "mapped twice counted once (the adaptive runner maps its one pre-packed copy of the weights in two "
        "sessions), as the container's memory accounting counts it. The goal (≤ 1,600 MiB) is read on it. "
        "Peak RSS = the server's `VmHWM` at the end of the round (start-up and warm-up included), which "
        "counts those weights once per mapping; cells: median (min–max) over the rounds",
        *([f"- **note**: {args.note}"] if args.note else []), "",
        *table(summ), "",
    ]
    (args.out / "report.md").write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
