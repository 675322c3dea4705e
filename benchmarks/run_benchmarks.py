"""The benchmark suite: the server against its baselines, plus sweeps; writes a markdown report and plots.

Quick mode (CI; tiny model, seconds per run, proves the harness works, says nothing about speed)::

    python -m benchmarks.run_benchmarks --quick --out benchmarks/results/quick

Full mode (by hand; large fp32 and int8 repositories exported beforehand, FunASR checkpoint directory)::

    python -m benchmarks.run_benchmarks --model-repo ~/.cache/emotion2vec-bench/repo_large \\
        --int8-repo ~/.cache/emotion2vec-bench/repo_large_int8 \\
        --checkpoint ~/.cache/emotion2vec-bench/ckpt_large --out benchmarks/results/large

``--sections`` picks parts (default all): offline, funasr, inprocess, server, load, config, threads, null,
int8. Every number is printed with the 1-minute load average measured just before it: on a shared machine a
number taken under load is noise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import baselines, loadgen
from benchmarks.loadgen import SAMPLE_RATE_HZ, LoadResult

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "emotion2vec-bench"
SECTIONS = ("offline", "funasr", "inprocess", "server", "load", "config", "threads", "null", "int8")

# Server settings for each batching baseline. FIFO and equal-shape need a server switch; when the server
# has none, those baselines are measured in-process only (see ``policy_switch``).
POLICY_SETTING = "batch_policy"


@dataclasses.dataclass
class Plan:
    """Sizes of one run of the suite."""

    clips: int  # distinct clips per workload
    run_s: float  # offered-load seconds per server measurement
    concurrency: int  # closed-loop clients for the saturated measurements
    batch_sizes: tuple[int, ...]
    load_fractions: tuple[float, ...]  # open-loop rates as fractions of the saturated request rate
    queue_delays_ms: tuple[float, ...]
    batch_audio_s: tuple[float, ...]
    threads_instances: tuple[tuple[int, int], ...]
    funasr_budget_s: float
    null_concurrency: int
    null_processes: int
    inprocess_open_clips: int  # clips of the in-process open-loop comparison (0: skip it)
    variants: bool  # also measure the secondary variants (non-adaptive, server threads, null max batch 1)


QUICK = Plan(
    clips=8,
    run_s=1.5,
    concurrency=4,
    batch_sizes=(1, 4),
    load_fractions=(0.5,),
    queue_delays_ms=(20.0,),
    batch_audio_s=(),
    threads_instances=((1, 2),),
    funasr_budget_s=5.0,
    null_concurrency=16,
    null_processes=1,
    inprocess_open_clips=8,
    variants=False,
)
FULL = Plan(
    clips=12,
    run_s=20.0,
    concurrency=6,
    batch_sizes=(1, 2, 4),
    load_fractions=(0.5, 0.9, 1.2),
    queue_delays_ms=(0.0, 10.0, 50.0),
    batch_audio_s=(15.0, 60.0),
    threads_instances=((2, 1), (1, 2)),
    funasr_budget_s=60.0,
    null_concurrency=128,
    null_processes=2,
    inprocess_open_clips=0,
    variants=True,
)


class Suite:
    """Runs the sections and collects every result with the load average measured before it."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.results: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.clips = loadgen.make_clips(args.mix, plan.clips, args.seed)
        self.audio_s = [len(c) / SAMPLE_RATE_HZ for c in self.clips]
        self.requests = loadgen.build_requests(self.clips, args.audio_format)
        self.short_clips = loadgen.make_clips("short", plan.clips, args.seed)
        self._model: baselines.OrtModel | None = None

    # ------------------------------------------------------------------ bookkeeping

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def add(self, section: str, result: LoadResult, load_before: float, **extra: Any) -> LoadResult:
        row = {"section": section, "loadavg_1m": round(load_before, 2), **result.to_row(), **extra}
        self.results.append(row)
        self.log(
            f"{section:>9} | {result.label:<34} | {result.audio_s_per_s:8.2f} audio-s/s"
            f" | {result.rps:8.1f} req/s"
            f" | p50 {result.p50_ms:8.0f} ms p99 {result.p99_ms:8.0f} ms | load {load_before:.2f}"
        )
        return result

    @staticmethod
    def load1() -> float:
        return loadgen.load_average()[0]

    @property
    def model(self) -> baselines.OrtModel:
        if self._model is None:
            self._model = baselines.OrtModel(self.args.model_repo, self.args.intra_op_threads)
        return self._model

    def release_model(self) -> None:
        # The in-process session holds the whole model; free it before starting servers (RSS, cores).
        self._model = None

    # ------------------------------------------------------------------ sections

    def offline(self) -> None:
        load = self.load1()
        for r in baselines.offline_limit(self.model, self.clips, self.plan.batch_sizes):
            self.add("offline", r, load)
            load = self.load1()

    def funasr(self) -> None:
        if not self.args.checkpoint:
            self.notes.append("FunASR baseline skipped: no --checkpoint given.")
            return
        load = self.load1()
        # In a child process: importing funasr and torch must not touch this process's measurements.
        code = (
            "import json,sys\nfrom benchmarks import loadgen, baselines\n"
            f"clips = loadgen.make_clips({self.args.mix!r}, {self.plan.clips}, {self.args.seed})\n"
            f"r = baselines.funasr_sequential({str(self.args.checkpoint)!r}, clips,"
            f" {self.plan.funasr_budget_s})\n"
            "print('RESULT' + json.dumps(dataclasses_asdict(r)))\n"
        ).replace("dataclasses_asdict", "__import__('dataclasses').asdict")
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
        if out.returncode != 0 or line is None:
            self.notes.append(f"FunASR baseline failed: {out.stderr.strip().splitlines()[-1:]}")
            self.log(out.stderr[-2000:])
            return
        self.add("funasr", LoadResult(**json.loads(line[len("RESULT") :])), load)

    def inprocess(self) -> None:
        best = self._best("offline")
        for policy in baselines.POLICIES:
            load = self.load1()
            r = baselines.inprocess_policy(
                self.model,
                self.clips,
                baselines.poisson_arrivals(len(self.clips), 0),
                policy,
                max_batch_size=8,
                max_batch_audio_s=60.0,
                label=f"in-process {policy}, backlog",
            )
            self.add("inprocess", r, load, fraction_of_offline=self._fraction(r, best))
        # One open-loop rate below saturation, where the queue delay matters for latency.
        rate = 0.7 * max((r["rps"] for r in self.results if r["section"] == "offline"), default=1.0)
        clips = self.clips[: self.plan.inprocess_open_clips]
        for policy in baselines.POLICIES if clips else ():
            load = self.load1()
            r = baselines.inprocess_policy(
                self.model,
                clips,
                baselines.poisson_arrivals(len(clips), rate, self.args.seed),
                policy,
                label=f"in-process {policy}, {rate:.2f} req/s",
            )
            self.add("inprocess", r, load)

    def _serve(
        self,
        section: str,
        label: str,
        extra_args: Sequence[str],
        *,
        repo: str | Path | None = None,
        mode: str = "closed",
        offered: float | None = None,
        requests: Sequence[Any] | None = None,
        audio_s: Sequence[float] | None = None,
        processes: int = 1,
        mix: str | None = None,
        more: Sequence[tuple[str, str, float]] = (),
        **extra: Any,
    ) -> LoadResult | None:
        """Start a server with ``extra_args``, measure one run (then each of ``more``: (label, mode,
        offered) on the same server process), stop it. Returns the first run's result."""
        from benchmarks.suite.server_process import ServerProcess

        repo = repo or self.args.model_repo
        extra_args = [*shlex.split(self.args.server_args), *extra_args]
        requests = requests if requests is not None else self.requests
        audio_s = audio_s if audio_s is not None else self.audio_s
        first: LoadResult | None = None
        runs = [(label, mode, offered), *more]
        try:
            with ServerProcess(repo, extra_args) as srv:
                # One pass over the distinct clips first: ONNX Runtime's first runs at new shapes grow its
                # memory arena (page faults, allocations), which the server's own warm-up does not cover.
                asyncio.run(
                    loadgen.closed_loop(
                        srv.target,
                        requests,
                        audio_s,
                        self.plan.concurrency,
                        600.0,
                        max_requests=len(requests),
                    )
                )
                for run_label, run_mode, run_offered in runs:
                    load = self.load1()
                    before = loadgen.scrape(srv.metrics_url)
                    cpu_before = loadgen.process_cpu_s(srv.pid)
                    with loadgen.RssSampler(srv.pid) as rss:
                        if run_mode == "open":
                            assert run_offered is not None
                            records, wall = asyncio.run(
                                loadgen.open_loop(
                                    srv.target,
                                    requests,
                                    audio_s,
                                    run_offered,
                                    self.plan.run_s,
                                    self.args.seed,
                                )
                            )
                        elif processes > 1:
                            run_offered = float(run_offered or self.plan.concurrency)
                            records, wall = loadgen.closed_loop_processes(
                                srv.target,
                                mix or self.args.mix,
                                self.args.audio_format,
                                self.plan.clips,
                                self.args.seed,
                                int(run_offered),
                                self.plan.run_s,
                                processes,
                            )
                        else:
                            run_offered = float(run_offered or self.plan.concurrency)
                            records, wall = asyncio.run(
                                loadgen.closed_loop(
                                    srv.target, requests, audio_s, int(run_offered), self.plan.run_s
                                )
                            )
                    after = loadgen.scrape(srv.metrics_url)
                    result = loadgen.summarize(
                        run_label, run_mode, float(run_offered), records, wall, before, after
                    )
                    result.server_peak_rss_mb = rss.peak_mb
                    # Server CPU per request: what the server alone would sustain if it had every core,
                    # separating its cost from the load generator's on a shared machine.
                    cpu = loadgen.process_cpu_s(srv.pid) - cpu_before
                    if result.ok and cpu > 0:
                        result.extra["server_cpu_ms_per_req"] = 1e3 * cpu / result.ok
                        result.extra["server_cpu_share"] = cpu / wall / (os.cpu_count() or 1)
                    result.server_rss_mb = loadgen.RssSampler.read_mb(srv.pid)
                    result.extra["server_hwm_rss_mb"] = loadgen.RssSampler.read_mb(srv.pid, "VmHWM")
                    result.extra["server_args"] = " ".join(shlex.quote(a) for a in extra_args)
                    self.add(section, result, load, **extra)
                    first = first or result
        except (RuntimeError, TimeoutError) as exc:
            self.notes.append(f"{section} / {label}: server failed: {str(exc).splitlines()[0]}")
            self.log(str(exc))
        return first

    def policy_switch(self) -> bool:
        """Whether the server can be told to batch FIFO / equal-shape (a ``--batch-policy`` setting)."""
        from emotion2vec_serving.server.config import Settings

        return POLICY_SETTING in {f.name for f in dataclasses.fields(Settings)}

    def server(self) -> None:
        self.release_model()
        best = self._best("offline")
        configs: list[tuple[str, list[str]]] = [("no batching (max batch 1)", ["--max-batch-size", "1"])]
        if self.policy_switch():
            configs += [
                ("FIFO pad-to-longest", ["--batch-policy", "fifo", "--no-adaptive-batching"]),
                ("equal-shape only", ["--batch-policy", "equal_shape", "--no-adaptive-batching"]),
            ]
        else:
            self.notes.append(
                "Server FIFO / equal-shape baselines: the server has no `--batch-policy` setting; "
                "these two are "
                "measured in-process only (section inprocess)."
            )
        if self.plan.variants:
            configs.append(("this batcher, non-adaptive", ["--no-adaptive-batching"]))
        configs.append(("this batcher (defaults)", []))
        for label, extra_args in configs:
            r = self._serve("server", label, extra_args)
            if r is not None:
                self.results[-1]["fraction_of_offline"] = self._fraction(r, best)

    def load(self) -> None:
        saturated = max(
            (r["rps"] for r in self.results if r["label"] == "this batcher (defaults)"), default=0.0
        ) or max((r["rps"] for r in self.results if r["section"] == "offline"), default=1.0)
        # One server process for every rate, lowest first: the knee shows where latency turns up.
        rates = [max(0.05, f * saturated) for f in self.plan.load_fractions]
        runs = [(f"open loop {rate:.2f} req/s", "open", rate) for rate in rates]
        self._serve("load", runs[0][0], [], mode="open", offered=rates[0], more=runs[1:])

    def config(self) -> None:
        for delay in self.plan.queue_delays_ms:
            self._serve(
                "config",
                f"max_queue_delay_ms={delay:g}",
                ["--max-queue-delay-ms", f"{delay:g}", "--no-adaptive-batching"],
                max_queue_delay_ms=delay,
            )
        for budget in self.plan.batch_audio_s:
            self._serve(
                "config",
                f"max_batch_audio_s={budget:g}",
                ["--max-batch-audio-s", f"{budget:g}", "--no-adaptive-batching"],
                max_batch_audio_s=budget,
            )

    def threads(self) -> None:
        self.release_model()
        for threads, instances in self.plan.threads_instances:
            load = self.load1()
            r = baselines.threads_instances(
                self.args.model_repo, self.clips, threads, instances, budget_s=max(2.0, self.plan.run_s)
            )
            self.add("threads", r, load)
        for threads, instances in self.plan.threads_instances if self.plan.variants else ():
            self._serve(
                "threads",
                f"server threads={threads} instances={instances}",
                ["--intra-op-threads", str(threads), "--runner-instances", str(instances)],
            )

    def null(self) -> None:
        from benchmarks.suite.null_model import build_null_model

        repo = build_null_model(CACHE / "null_model")
        requests = loadgen.build_requests(self.short_clips, self.args.audio_format)
        audio_s = [len(c) / SAMPLE_RATE_HZ for c in self.short_clips]
        self._serve(
            "null",
            "null model, this batcher",
            ["--no-warmup"],
            repo=repo,
            requests=requests,
            audio_s=audio_s,
            offered=self.plan.null_concurrency,
            processes=self.plan.null_processes,
            mix="short",
        )
        if self.plan.variants:
            self._serve(
                "null",
                "null model, max batch 1",
                ["--no-warmup", "--max-batch-size", "1"],
                repo=repo,
                requests=requests,
                audio_s=audio_s,
                offered=self.plan.null_concurrency,
                processes=self.plan.null_processes,
                mix="short",
            )

    def int8(self) -> None:
        if not self.args.int8_repo:
            self.notes.append("int8 comparison skipped: no --int8-repo given.")
            return
        model = baselines.OrtModel(self.args.int8_repo, self.args.intra_op_threads)
        load = self.load1()
        for r in baselines.offline_limit(model, self.clips, self.plan.batch_sizes[:2]):
            r.label = "int8 " + r.label
            self.add("int8", r, load)
            load = self.load1()
        del model
        self._serve("int8", "int8, this batcher (defaults)", [], repo=self.args.int8_repo)

    # ------------------------------------------------------------------ helpers

    def _best(self, section: str) -> float:
        return max(
            (r["audio_s_per_s"] for r in self.results if r["section"] == section), default=float("nan")
        )

    @staticmethod
    def _fraction(result: LoadResult, best: float) -> float:
        return result.audio_s_per_s / best if best and not math.isnan(best) else float("nan")


def export_repo(checkpoint: Path, repo: Path, precision: str = "fp32") -> Path:
    """Export a checkpoint into a model repository with the project's exporter (in a child process)."""
    code = (
        "import sys\nfrom export.onnx_export import export_repository\n"
        "export_repository(sys.argv[1], sys.argv[2], precision=sys.argv[3], verify=False)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(checkpoint), str(repo), precision], cwd=ROOT, check=True)
    return repo


def ensure_tiny_repo(cache: Path) -> Path:
    """The tiny random-weight model repository (the CI model), generated and exported once into ``cache``."""
    repo = cache / "repo_tiny"
    if (repo / "manifest.json").is_file():
        return repo
    ckpt = cache / "ckpt_tiny"
    code = (
        "import sys\nfrom export.checkpoint import write_checkpoint\n"
        "write_checkpoint(sys.argv[1], 'tiny', 0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(ckpt)], cwd=ROOT, check=True)
    return export_repo(ckpt, repo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds per run (CI)")
    parser.add_argument(
        "--model-repo", type=Path, help="exported model repository (default: tiny in --quick)"
    )
    parser.add_argument("--int8-repo", type=Path, help="int8 repository of the same model")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint directory for the FunASR baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    parser.add_argument("--mix", default="realistic", help="clip length mix (see loadgen.MIXES)")
    parser.add_argument("--format", dest="audio_format", choices=("f32", "wav"), default="f32")
    parser.add_argument(
        "--intra-op-threads", type=int, default=0, help="in-process baselines (0 = all cores)"
    )
    parser.add_argument("--run-s", type=float, help="override seconds per server measurement")
    parser.add_argument("--clips", type=int, help="override the number of clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--server-args",
        default="",
        help="extra server flags for every server run, e.g. '--max-duration-s 30'",
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite report.md and plots from --out/results.json"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        from benchmarks.suite import report

        data = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
        print(report.write_report(args.out, data["meta"], data["results"], plots=not args.no_plots))
        return 0

    plan = dataclasses.replace(QUICK if args.quick else FULL)
    if args.run_s:
        plan.run_s = args.run_s
    if args.clips:
        plan.clips = args.clips
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.model_repo is None:
        if not args.quick:
            parser.error("--model-repo is required outside --quick")
        args.model_repo = ensure_tiny_repo(CACHE)
    args.out.mkdir(parents=True, exist_ok=True)

    from benchmarks.suite import report

    suite = Suite(args, plan)
    machine = loadgen.machine_description()
    started = time.time()
    suite.log(f"machine: {machine}")
    suite.log(
        f"clips: {len(suite.clips)} ({args.mix}), {sum(suite.audio_s):.1f} s of audio; sections {sections}"
    )
    for name in sections:
        getattr(suite, name)()
    command = "python -m benchmarks.run_benchmarks " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    meta = {
        "command": command,
        "machine": machine,
        "loadavg_end": loadgen.load_average(),
        "elapsed_s": round(time.time() - started, 1),
        "model_repo": str(args.model_repo),
        "int8_repo": str(args.int8_repo or ""),
        "checkpoint": str(args.checkpoint or ""),
        "mix": args.mix,
        "clips": len(suite.clips),
        "clip_audio_s": round(sum(suite.audio_s), 2),
        "plan": dataclasses.asdict(plan),
        "notes": suite.notes,
    }
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "results": suite.results}, indent=1, default=str), encoding="utf-8"
    )
    report.write_report(args.out, meta, suite.results, plots=not args.no_plots)
    suite.log(f"report: {args.out / 'report.md'} ({meta['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
