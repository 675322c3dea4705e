"""CPU engines and precisions on one workload, in one run: accuracy, offline limit, server, FunASR.

    python -m benchmarks.cpu_engines --fp32-repo .cache/bench/large_fp32 \\
        --int8-repo .cache/bench/large_int8 --checkpoint .cache/bench/large_ck \\
        --out benchmarks/results/cpu_engines

Configurations: ONNX Runtime fp32, ONNX Runtime int8 (batch-exact row-wise), OpenVINO f32, OpenVINO bf16
(where the CPU has no native bf16 OpenVINO runs f32: the run says so and does not measure it twice).
For each: accuracy against ONNX Runtime fp32 on the workload's clips (each clip alone: max |Δprob|, min
embedding cosine, top-1 agreement; batch-exactness: alone vs. in padded batches of 4, and as served),
the offline limit (the server's own ``Runner`` over the clips sorted by length at batch sizes 1 and 4, every
shape run once before timing, ``--passes`` timed passes: median and spread), and the server under
``--concurrency`` closed-loop clients for ``--run-s`` (throughput, p50/p99, peak RSS = VmHWM). FunASR
``AutoModel.generate`` one clip at a time on the same clips is the baseline. ``--sections table`` measures
the run-time table (items x seconds) that tests/batching/test_adaptive_curves.py uses.

Every number carries the 1-minute load average taken just before it (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import loadgen
from benchmarks.loadgen import SAMPLE_RATE_HZ

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("accuracy", "offline", "streams", "server", "funasr", "table")


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    repo: Path
    engine: str = "onnxruntime"
    inference_precision: str = "auto"
    instances: int = 1

    def server_args(self, threads: int) -> list[str]:
        """Server flags: ``threads`` cores shared by the runner instances (``threads // instances`` each)."""
        return [
            "--engine",
            self.engine,
            "--inference-precision",
            self.inference_precision,
            "--intra-op-threads",
            str(max(1, threads // self.instances)),
            "--runner-instances",
            str(self.instances),
        ]


def log(text: str) -> None:
    print(f"[cpu_engines {time.strftime('%H:%M:%S')}] {text}", flush=True)


def load1() -> float:
    return round(loadgen.load_average()[0], 2)


def make_runner(config: Config, threads: int) -> Any:
    from emotion2vec_serving.modelrepo.manifest import load_manifest
    from emotion2vec_serving.server.runtime.contract import RunnerOptions
    from emotion2vec_serving.server.runtime.engines import equal_length_batches, session_factory_for
    from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER
    from emotion2vec_serving.server.runtime.runner import Runner

    manifest = load_manifest(config.repo)
    runner = Runner(
        manifest,
        RunnerOptions(
            providers=(CPU_PROVIDER,),
            intra_op_threads=threads,
            instances=config.instances,
            engine=config.engine,
            inference_precision=config.inference_precision,
            arena_shrinkage=True,
        ),
        session_factory=session_factory_for(config.engine),
    )
    served = runner.run
    if not manifest.batch_exact and manifest.batch_exact_equal_length:
        served = equal_length_batches(runner.run)
    return runner, served


# ---------------------------------------------------------------------------------------------- accuracy


def accuracy(configs: Sequence[Config], clips: list[np.ndarray], threads: int) -> list[dict[str, Any]]:
    reference, _ = make_runner(configs[0], threads)
    ref = [reference.run([c])[0] for c in clips]
    reference.close()
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    rows = []
    for config in configs:
        load = load1()
        runner, served = make_runner(config, threads)
        alone = [runner.run([c])[0] for c in clips]
        padded: dict[int, Any] = {}
        as_served: dict[int, Any] = {}
        for k in range(0, len(order), 4):
            group = order[k : k + 4]
            for i, r in zip(group, runner.run([clips[i] for i in group]), strict=True):
                padded[i] = r
            if served == runner.run:  # bound methods: equal, not identical
                as_served.update({i: padded[i] for i in group})
                continue
            for i, r in zip(group, served([clips[i] for i in group]), strict=True):
                as_served[i] = r
        dprob = max(float(np.abs(a.probs - r.probs).max()) for a, r in zip(alone, ref, strict=True))
        cos = min(
            float(
                np.dot(a.embedding, r.embedding) / (np.linalg.norm(a.embedding) * np.linalg.norm(r.embedding))
            )
            for a, r in zip(alone, ref, strict=True)
        )
        top1 = sum(int(np.argmax(a.probs) == np.argmax(r.probs)) for a, r in zip(alone, ref, strict=True))
        batch_padded = max(float(np.abs(padded[i].probs - alone[i].probs).max()) for i in range(len(clips)))
        batch_served = max(
            float(np.abs(as_served[i].probs - alone[i].probs).max()) for i in range(len(clips))
        )
        row = {
            "config": config.name,
            "engine": runner.engine,
            "precision": runner.precision,
            "max_abs_dprob": dprob,
            "min_cosine": cos,
            "top1_agreement": top1 / len(clips),
            "batch_padded_max_abs": batch_padded,
            "batch_as_served_max_abs": batch_served,
            "batch_exact_as_served": batch_served <= 1e-5,
            "clips": len(clips),
            "loadavg_1m": load,
        }
        runner.close()
        log(f"accuracy {config.name}: {json.dumps(row)}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- offline


def offline(
    config: Config, clips: list[np.ndarray], threads: int, passes: int, batch_sizes: Sequence[int] = (1, 4)
) -> list[dict[str, Any]]:
    runner, served = make_runner(config, threads)
    ordered = sorted(clips, key=len)
    audio_s = sum(len(c) for c in ordered) / SAMPLE_RATE_HZ
    rows = []
    for bs in batch_sizes:
        batches = [ordered[i : i + bs] for i in range(0, len(ordered), bs)]
        for b in batches:  # warm: every shape once before timing
            served(b)
        load = load1()
        rates = []
        for _ in range(passes):
            start = time.perf_counter()
            for b in batches:
                served(b)
            rates.append(audio_s / (time.perf_counter() - start))
        rows.append(
            {
                "config": config.name,
                "engine": runner.engine,
                "precision": runner.precision,
                "batch_size": bs,
                "instances": config.instances,
                "passes": passes,
                "audio_s_per_s_median": statistics.median(rates),
                "audio_s_per_s_min": min(rates),
                "audio_s_per_s_max": max(rates),
                "loadavg_1m": load,
            }
        )
        log(
            f"offline {config.name} bs={bs}: median {statistics.median(rates):.2f} audio-s/s "
            f"({min(rates):.2f}..{max(rates):.2f}), load {load}"
        )
    runner.close()
    return rows


def offline_streams(config: Config, clips: list[np.ndarray], threads: int, passes: int) -> dict[str, Any]:
    """``instances`` infer requests (OpenVINO streams) fed from that many threads, batch 1."""
    import threading

    runner, served = make_runner(config, max(1, threads // config.instances))
    ordered = sorted(clips, key=len)
    audio_s = sum(len(c) for c in ordered) / SAMPLE_RATE_HZ

    def one_pass() -> float:
        todo = list(ordered)
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    clip = todo.pop()
                served([clip])

        start = time.perf_counter()
        workers = [threading.Thread(target=work) for _ in range(config.instances)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return audio_s / (time.perf_counter() - start)

    one_pass()  # warm
    load = load1()
    rates = [one_pass() for _ in range(passes)]
    runner.close()
    row = {
        "config": config.name,
        "instances": config.instances,
        "threads_each": max(1, threads // config.instances),
        "audio_s_per_s_median": statistics.median(rates),
        "audio_s_per_s_min": min(rates),
        "audio_s_per_s_max": max(rates),
        "loadavg_1m": load,
    }
    log(f"streams {config.name}: {json.dumps(row)}")
    return row


# ---------------------------------------------------------------------------------------------- server


def server(
    config: Config, clips: list[np.ndarray], threads: int, concurrency: int, run_s: float,
    max_requests: int | None = None,
) -> dict[str, Any]:
    """One closed-loop row on a fresh server: ``run_s`` seconds, or ``max_requests`` requests if sooner."""
    from benchmarks.suite.server_process import ServerProcess

    requests = loadgen.build_requests(clips, "f32")
    audio_s = [len(c) / SAMPLE_RATE_HZ for c in clips]
    with ServerProcess(config.repo, config.server_args(threads)) as srv:
        # One pass over the clips first (arena growth at new shapes is not steady state).
        asyncio.run(
            loadgen.closed_loop(srv.target, requests, audio_s, concurrency, 600.0, max_requests=len(requests))
        )
        load = load1()
        before = loadgen.scrape(srv.metrics_url)
        with loadgen.RssSampler(srv.pid) as rss:
            records, wall = asyncio.run(
                loadgen.closed_loop(srv.target, requests, audio_s, concurrency, run_s,
                                    max_requests=max_requests)
            )
        after = loadgen.scrape(srv.metrics_url)
        result = loadgen.summarize(config.name, "closed", float(concurrency), records, wall, before, after)
        hwm = loadgen.RssSampler.read_mb(srv.pid, "VmHWM")
        info = [line for line in srv.scrape().splitlines() if line.startswith("emotion_model_info{")]
    row = {
        "config": config.name,
        **result.to_row(),
        "server_peak_rss_mb": rss.peak_mb,
        "server_peak_pss_mb": rss.peak_pss_mb,
        "server_vmhwm_mb": hwm,
        "model_info": info[0] if info else "",
        "server_args": " ".join(config.server_args(threads)),
        "loadavg_1m": load,
    }
    log(
        f"server {config.name}: {result.audio_s_per_s:.2f} audio-s/s, p50 {result.p50_ms:.0f} ms, "
        f"p99 {result.p99_ms:.0f} ms, mean batch {result.mean_batch_size:.2f}, VmHWM {hwm:.0f} MB, "
        f"load {load}"
    )
    return row


def funasr(checkpoint: Path, mix: str, n: int, seed: int, budget_s: float) -> dict[str, Any] | None:
    code = (
        "import json,dataclasses\nfrom benchmarks import loadgen, baselines\n"
        f"clips = loadgen.make_clips({mix!r}, {n}, {seed})\n"
        f"r = baselines.funasr_sequential({str(checkpoint)!r}, clips, {budget_s})\n"
        "print('RESULT' + json.dumps(dataclasses.asdict(r)))\n"
    )
    load = load1()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if out.returncode != 0 or line is None:
        log(f"FunASR failed: {out.stderr[-1500:]}")
        return None
    row = {**json.loads(line[len("RESULT") :]), "loadavg_1m": load}
    log(f"funasr: {row['audio_s_per_s']:.2f} audio-s/s over {row['requests']} clips, load {load}")
    return row


# ---------------------------------------------------------------------------------------------- table


def cost_table(
    config: Config,
    threads: int,
    items: Sequence[int] = (1, 2, 4, 8),
    seconds: Sequence[float] = (1.0, 2.0, 4.0),
) -> dict[str, Any]:
    """Run time of n items padded to l seconds on the server's Runner (one timed run after a warm one)."""
    from emotion2vec_serving.export.signals import speech_like

    runner, _ = make_runner(config, threads)
    load = load1()
    table: dict[str, dict[str, float]] = {}
    for sec in seconds:
        batches = {n: [speech_like(int(sec * SAMPLE_RATE_HZ), seed=100 + i) for i in range(n)] for n in items}
        runner.run(batches[max(items)])  # warm: the largest shape of this length
        row = {}
        for n in items:
            start = time.perf_counter()
            runner.run(batches[n])
            row[str(n)] = round(time.perf_counter() - start, 4)
        table[f"{sec:g}"] = row
        log(f"table {config.name} {sec:g} s: {row}")
    runner.close()
    return {"config": config.name, "threads": threads, "run_s": table, "loadavg_1m": load}


# ---------------------------------------------------------------------------------------------- report


def plot(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    servers = results.get("server", [])
    if servers:
        fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=80)
        names = [r["config"] for r in servers]
        values = [r["audio_s_per_s"] for r in servers]
        limits = {
            r["config"]: r["audio_s_per_s_median"] for r in results.get("offline", []) if r["batch_size"] == 1
        }
        ax.bar(names, values, color="#4477aa", label="server, 4 clients")
        ax.scatter(
            names,
            [limits.get(n, float("nan")) for n in names],
            color="black",
            zorder=3,
            marker="_",
            s=400,
            label="offline limit (bs 1, median)",
        )
        fun = results.get("funasr")
        if fun:
            ax.axhline(fun["audio_s_per_s"], color="#cc6677", ls="--", label="FunASR one at a time")
        ax.set_ylabel("audio-s per s")
        ax.set_title(f"large model, 2-core CPU, {results['date']}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "throughput.png")
        plt.close(fig)
        written.append("throughput.png")
    tables = results.get("table", [])
    if tables:
        fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=80)
        for t in tables:
            for sec, row in t["run_s"].items():
                ns = [int(n) for n in row]
                ax.plot(
                    ns, [float(sec) * n / row[str(n)] for n in ns], marker="o", label=f"{t['config']} {sec} s"
                )
        ax.set_xlabel("items per batch")
        ax.set_ylabel("audio-s per s")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=6, ncol=2)
        ax.set_title("does batching pay? (throughput of one batch)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "batching_curves.png")
        plt.close(fig)
        written.append("batching_curves.png")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fp32-repo", type=Path, required=True)
    parser.add_argument("--int8-repo", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="checkpoint directory for the FunASR baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_engines")
    parser.add_argument("--sections", default="accuracy,offline,server,funasr")
    parser.add_argument("--batch-sizes", default="1", help="offline batch sizes, comma-separated")
    parser.add_argument("--mix", default="realistic")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--instances", type=int, default=1,
                        help="runner instances of every server configuration (the cores split between them); "
                        "the second run in results/cpu_engines/README.md used 2")
    parser.add_argument("--run-s", type=float, default=60.0)
    parser.add_argument("--funasr-budget-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]

    from emotion2vec_serving.server.runtime.engines.openvino import cpu_has_native_bf16

    native_bf16 = cpu_has_native_bf16()
    configs = [
        Config("ORT fp32", args.fp32_repo, instances=args.instances),
        Config("ORT int8 (row-wise)", args.int8_repo, instances=args.instances),
        Config("OpenVINO f32", args.fp32_repo, "openvino", "f32", args.instances),
    ]
    if native_bf16:
        configs.append(Config("OpenVINO bf16", args.fp32_repo, "openvino", "bf16", args.instances))
    clips = loadgen.make_clips(args.mix, args.clips, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(
            [sys.executable.rsplit("/", 1)[-1], "-m", "benchmarks.cpu_engines", *(argv or sys.argv[1:])]
        ),
        "machine": loadgen.machine_description(),
        "native_bf16": native_bf16,
        "notes": []
        if native_bf16
        else [
            "This CPU has no native bf16 (no avx512_bf16 / AMX): OpenVINO asked for bf16 compiles f32 "
            "(the runner reports precision fp32), so 'OpenVINO bf16' is the OpenVINO f32 row here."
        ],
        "workload": {
            "mix": args.mix,
            "clips": len(clips),
            "audio_s": round(sum(map(len, clips)) / SAMPLE_RATE_HZ, 1),
            "seed": args.seed,
            "concurrency": args.concurrency,
            "run_s": args.run_s,
        },
    }
    log(f"{len(clips)} clips, {results['workload']['audio_s']} audio-s; native bf16: {native_bf16}")
    if "accuracy" in sections:
        results["accuracy"] = accuracy(configs, clips, args.threads)
    if "offline" in sections:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        results["offline"] = [r for c in configs for r in offline(c, clips, args.threads, args.passes, sizes)]
    if "streams" in sections:
        results["streams"] = [
            offline_streams(
                Config("OpenVINO f32", args.fp32_repo, "openvino", "f32", n), clips, args.threads, args.passes
            )
            for n in (1, 2)
        ]
    if "server" in sections:
        results["server"] = [server(c, clips, args.threads, args.concurrency, args.run_s) for c in configs]
    if "funasr" in sections and args.checkpoint:
        results["funasr"] = funasr(args.checkpoint, args.mix, args.clips, args.seed, args.funasr_budget_s)
    if "table" in sections:
        results["table"] = [cost_table(c, args.threads) for c in configs[:2]]
    results["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    name = "table.json" if sections == ["table"] else "results.json"
    (args.out / name).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    results["plots"] = plot(results, args.out)
    log(f"wrote {args.out / name} and {results['plots']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
