"""The GPU device check (issue 15): one command that proves the GPU path, writing a JSON + markdown report.

    python -m benchmarks.gpu_check --out benchmarks/results/gpu            # on a GPU machine, <= 8 min
    python -m benchmarks.gpu_check --out /tmp/gc --providers CPUExecutionProvider --quick   # CI, seconds

It builds what it needs unless given cached paths (``--checkpoint``, ``--fp32-repo``, ``--fp16-repo``): a
random-weight checkpoint of ``--size`` (large by default; tiny with ``--quick``) and its fp32 and fp16
exports, through the project's own exporter. Then, each step recorded with its numbers, pass/fail and time:

1. provider: the runner's active provider is the first one asked for (CUDA or TensorRT), with the CUDA
   options really applied (``get_provider_options``); GetModelInfo of the real server says the same (step 4).
2. exactness: fp32 alone vs in bucket-padded batches (<= 1e-4), FunASR parity on this device (fp32, when
   funasr is importable), fp16 drift against fp32 (cosine >= 0.999, max |dprob| reported), and what TF32
   would change (GPU only).
3. offline: throughput table, batch 1-64 x length 1-30 s (audio-s/s, device memory), cold vs warm cost of a
   new input length with heuristic and exhaustive cuDNN search, and IO binding vs plain runs.
4. server: the real server (``python -m emotion2vec_serving.server``) under the realistic mix, closed and
   open loop (80 % of the closed-loop throughput): audio-s/s, x real time, p50/p99, mean batch, padding
   waste, the batch sizes formed.
5. fallback: an injected CUDA failure moves the runner to CPU and back after the cool-down; a huge request
   runs out of memory, is split, and the other requests are served (the batcher learns the size that fits).
   On CPU (``--providers CPUExecutionProvider``) both are simulated (a CPU session labelled CUDA, and an
   injected out-of-memory above a padded-size budget) and the report says so.
6. a 10-minute recording through Recognize, when the server supports long recordings (skipped otherwise).

Targets (reported, never asserted as timings): large fp16 >= 2,000x real time through the server; >= 0.9x
the best offline throughput; mean batch >= 8 under saturation; p99 at 80 % load <= 1 s for clips <= 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RATE = 16000
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


@dataclass
class Plan:
    """Sizes of everything the check does (``--quick`` shrinks them to seconds on the tiny model)."""

    size: str
    exact_lengths: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    lengths_s: tuple[float, ...]
    fp32_batch_sizes: tuple[int, ...]
    server_max_batch: int
    closed_concurrency: int
    load_s: float
    new_lengths: int
    long_recording_s: float
    cell_budget_s: float
    offline_budget_s: float

    @classmethod
    def make(cls, quick: bool, gpu: bool) -> Plan:
        if quick:
            return cls(
                size="tiny",
                exact_lengths=(400, 3_210, 16_000, 53_333),
                batch_sizes=(1, 2, 4),
                lengths_s=(1.0, 2.0),
                fp32_batch_sizes=(1, 4),
                server_max_batch=8,
                closed_concurrency=4,
                load_s=3.0,
                new_lengths=3,
                long_recording_s=75.0,
                cell_budget_s=5.0,
                offline_budget_s=30.0,
            )
        return cls(
            size="large",
            exact_lengths=(400, 3_210, 16_000, 53_333, 160_000, 480_000),
            batch_sizes=(1, 2, 4, 8, 16, 32, 64),
            lengths_s=(1.0, 2.0, 5.0, 10.0, 20.0, 30.0),
            fp32_batch_sizes=(1, 8, 32) if gpu else (1, 2),
            server_max_batch=64 if gpu else 8,
            closed_concurrency=96 if gpu else 4,
            load_s=15.0,
            new_lengths=5,
            long_recording_s=600.0,
            cell_budget_s=8.0,
            offline_budget_s=100.0,
        )


@dataclass
class Step:
    name: str
    title: str
    status: str = "not run"  # passed | failed | skipped | error
    reason: str = ""
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)


class Check:
    """Runs the steps, records each one, writes ``report.json`` and ``report.md`` to ``out``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.providers = tuple(p.strip() for p in args.providers.split(",") if p.strip())
        self.gpu = self.providers[0] in GPU_PROVIDERS
        self.plan = Plan.make(args.quick, self.gpu)
        if args.size:
            self.plan.size = args.size
        self.simulated = not self.gpu
        self.steps: list[Step] = []
        self.started = time.monotonic()
        self.meta: dict[str, Any] = {}
        self.checkpoint: Path | None = Path(args.checkpoint) if args.checkpoint else None
        self.repos: dict[str, Path] = {}
        if args.fp32_repo:
            self.repos["fp32"] = Path(args.fp32_repo)
        if args.fp16_repo:
            self.repos["fp16"] = Path(args.fp16_repo)

    # ------------------------------------------------------------------------------------------ plumbing

    def log(self, message: str) -> None:
        print(f"[gpu_check {time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def step(self, name: str, title: str, fn: Callable[[Step], None]) -> Step:
        st = Step(name, title)
        self.steps.append(st)
        self.log(f"step {name}: {title}")
        t0 = time.monotonic()
        try:
            fn(st)
            if st.status == "not run":
                st.status = "passed"
        except _Skip as skip:
            st.status, st.reason = "skipped", str(skip)
        except AssertionError as exc:
            st.status, st.reason = "failed", str(exc) or "assertion failed"
        except Exception as exc:  # recorded, the other steps still run
            st.status, st.reason = "error", f"{type(exc).__name__}: {exc}"
            st.numbers["traceback"] = traceback.format_exc()[-3000:]
        st.seconds = round(time.monotonic() - t0, 2)
        self.log(f"step {name}: {st.status} in {st.seconds:.1f} s {st.reason}")
        self.write()
        return st

    def runner(
        self,
        precision: str,
        *,
        factory: Any = None,
        providers: tuple[str, ...] | None = None,
        on_change: Callable[..., None] | None = None,
        **settings_overrides: Any,
    ) -> Any:
        """A real ``Runner`` built from server ``Settings`` the way the server builds it (buckets on GPU)."""
        from emotion2vec_serving.modelrepo.manifest import load_manifest
        from emotion2vec_serving.server.config import Settings
        from emotion2vec_serving.server.runtime.contract import RunnerOptions
        from emotion2vec_serving.server.runtime.engines.onnxruntime import ort_session_factory
        from emotion2vec_serving.server.runtime.runner import Runner

        base: dict[str, Any] = {
            "providers": providers or self.providers,
            "max_duration_s": 30.0,
            "max_batch_size": max(self.plan.batch_sizes),
            "gpu_cooldown_s": 0.0,
        }
        settings = Settings(**{**base, **settings_overrides})
        manifest = load_manifest(self.repos[precision])
        gpu_options, buckets = settings.gpu_options(f"gpu-check-{precision}")
        options = RunnerOptions(
            providers=settings.providers,
            intra_op_threads=settings.effective_intra_op_threads,
            gpu=gpu_options,
            length_buckets=buckets,
            gpu_cooldown_s=settings.gpu_cooldown_s,
            gpu_failures_before_fallback=settings.gpu_failures_before_fallback,
            run_timeout_s=0,
        )
        return Runner(
            manifest, options, session_factory=factory or ort_session_factory, on_provider_change=on_change
        )

    def write(self) -> None:
        report = {
            "meta": {**self.meta, "elapsed_s": round(time.monotonic() - self.started, 1)},
            "steps": [st.__dict__ for st in self.steps],
            "passed": all(st.status in ("passed", "skipped") for st in self.steps),
        }
        (self.out / "report.json").write_text(json.dumps(_clean(report), indent=2, default=_jsonable) + "\n")
        (self.out / "report.md").write_text(markdown(report))

    # ------------------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        import onnxruntime as ort

        self.meta.update(
            {
                "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.gpu_check", *sys.argv[1:]]),
                "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                "providers_asked": list(self.providers),
                "onnxruntime": ort.__version__,
                "onnxruntime_providers": ort.get_available_providers(),
                "quick": bool(self.args.quick),
                "simulated_gpu_faults": self.simulated,
                "size": self.plan.size,
                "machine": _machine(),
            }
        )
        cache = Path(self.args.cache)
        cache.mkdir(parents=True, exist_ok=True)
        if self.checkpoint is None and len(self.repos) < 2:
            self.checkpoint = cache / f"ckpt_{self.plan.size}"
            if not (self.checkpoint / "model.pt").is_file():
                self.log(f"building a {self.plan.size} random-weight checkpoint in {self.checkpoint}")
                _export_cli(
                    ["checkpoint", "--size", self.plan.size, "--seed", "0", "--out", str(self.checkpoint)]
                )
        for precision in ("fp32", "fp16"):
            if precision in self.repos:
                continue
            repo = cache / f"repo_{self.plan.size}_{precision}"
            if not (repo / "manifest.json").is_file():
                self.log(f"exporting {precision} to {repo}")
                t0 = time.monotonic()
                _export_cli(
                    [
                        "onnx",
                        "--source",
                        str(self.checkpoint),
                        "--out",
                        str(repo),
                        "--precision",
                        precision,
                        "--no-verify",
                    ]
                )
                self.meta[f"export_{precision}_s"] = round(time.monotonic() - t0, 1)
            self.repos[precision] = repo
        self.meta["repos"] = {k: str(v) for k, v in self.repos.items()}
        self.meta["checkpoint"] = str(self.checkpoint) if self.checkpoint else None
        self.meta["device_memory_total_mb"] = _device_memory_mb(total=True)

    # ---------------------------------------------------------------------------------------- 1 provider

    def step_provider(self, st: Step) -> None:
        runner = self.runner("fp32")
        try:
            st.numbers["active_provider"] = runner.provider
            st.numbers["engine"] = runner.engine
            session = _real_session(runner)
            if session is not None:
                options = session.get_provider_options()
                st.numbers["provider_options"] = {k: options.get(k, {}) for k in options}
                if runner.provider == CUDA:
                    cuda = options.get(CUDA, {})
                    for key, want in (("cudnn_conv_algo_search", "HEURISTIC"), ("use_tf32", "0")):
                        assert str(cuda.get(key)) == want, (
                            f"CUDA option {key}={cuda.get(key)!r}, wanted {want}"
                        )
                    st.numbers["gpu_mem_limit_mb"] = int(cuda.get("gpu_mem_limit", 0)) // (1 << 20)
            st.numbers["length_buckets"] = (
                None if runner.length_buckets is None else len(runner.length_buckets)
            )
            st.numbers["nvidia_tf32_override"] = os.environ.get("NVIDIA_TF32_OVERRIDE")
            assert runner.provider == self.providers[0], (
                f"asked for {self.providers[0]}, running on {runner.provider}"
            )
        finally:
            runner.close()

    # -------------------------------------------------------------------------------------- 2 exactness

    def step_exactness(self, st: Step) -> None:
        from emotion2vec_serving.export.signals import speech_like

        clips = [speech_like(n, seed=1000 + i) for i, n in enumerate(self.plan.exact_lengths)]
        fp32 = self.runner("fp32")
        try:
            alone = [fp32.run([c])[0] for c in clips]
            rng = np.random.default_rng(0)
            worst_prob = worst_emb = 0.0
            for _ in range(3):
                idx = rng.choice(len(clips), size=min(4, len(clips)), replace=False)
                for i, item in zip(idx, fp32.run([clips[i] for i in idx]), strict=True):
                    worst_prob = max(worst_prob, _maxabs(item.probs, alone[i].probs))
                    worst_emb = max(worst_emb, _maxabs(item.embedding, alone[i].embedding))
            st.numbers["batch_exact_max_abs_prob"] = worst_prob
            st.numbers["batch_exact_max_abs_embedding"] = worst_emb
            parity = self._funasr_parity(clips, alone, fp32)
            st.numbers["funasr_parity"] = parity
            fp16 = self.runner("fp16")
            try:
                halves = [fp16.run([c])[0] for c in clips]
                st.numbers["fp16_provider"] = fp16.provider
            finally:
                fp16.close()
            st.numbers["fp16_max_abs_prob"] = max(
                _maxabs(h.probs, a.probs) for h, a in zip(halves, alone, strict=True)
            )
            st.numbers["fp16_min_cosine_embedding"] = min(
                _cosine(h.embedding, a.embedding) for h, a in zip(halves, alone, strict=True)
            )
            st.numbers["fp16_top1_agreement"] = float(
                np.mean(
                    [
                        int(np.argmax(h.probs)) == int(np.argmax(a.probs))
                        for h, a in zip(halves, alone, strict=True)
                    ]
                )
            )
            if self.gpu and fp32.provider == CUDA:
                # TF32 in a child process: NVIDIA_TF32_OVERRIDE=0 (set here) would disable it in this one.
                tf32_probs = _tf32_child(self.repos["fp32"], self.providers, self.plan.exact_lengths)
                st.numbers["tf32_max_abs_prob_if_enabled"] = max(
                    _maxabs(p, a.probs) for p, a in zip(tf32_probs, alone, strict=True)
                )
        finally:
            fp32.close()
        assert worst_prob <= 1e-4 and worst_emb <= 1e-4, (
            f"not batch-exact: max |dprob| {worst_prob:.2e}, |demb| {worst_emb:.2e} > 1e-4"
        )
        if isinstance(parity, dict) and "max_abs" in parity:
            worst = max(parity["max_abs"].values())
            assert worst <= 1e-4, f"FunASR parity {worst:.2e} > 1e-4"
        assert st.numbers["fp16_min_cosine_embedding"] >= 0.999, "fp16 embedding cosine < 0.999"

    def _funasr_parity(self, clips: list[np.ndarray], alone: list[Any], runner: Any) -> dict[str, Any] | str:
        if self.checkpoint is None:
            return "skipped: no checkpoint given (cached repositories only)"
        try:
            from emotion2vec_serving.export.verify import _load_funasr, funasr_reference
        except Exception as exc:  # the export extra is not installed
            return f"skipped: funasr not importable ({exc})"
        automodel = _load_funasr(self.checkpoint)
        manifest = runner.manifest
        enabled = np.array([label.enabled for label in manifest.labels], dtype=bool)
        maxima = {"probs": 0.0, "embedding": 0.0, "frame_features": 0.0}
        for clip, item in zip(clips, alone, strict=True):
            ref = funasr_reference(automodel, clip)
            assert item.frame_features.shape[0] == ref["feats"].shape[0], "frame count differs from FunASR"
            maxima["probs"] = max(maxima["probs"], _maxabs(item.probs[enabled], ref["scores"]))
            maxima["embedding"] = max(maxima["embedding"], _maxabs(item.embedding, ref["embedding"]))
            maxima["frame_features"] = max(
                maxima["frame_features"], _maxabs(item.frame_features, ref["feats"])
            )
        return {
            "reference": "funasr.AutoModel on CPU, one clip at a time",
            "device": runner.provider,
            "max_abs": maxima,
        }

    # ---------------------------------------------------------------------------------------- 3 offline

    def step_offline(self, st: Step) -> None:
        table: list[dict[str, Any]] = []
        for precision, sizes in (("fp16", self.plan.batch_sizes), ("fp32", self.plan.fp32_batch_sizes)):
            runner = self.runner(precision)
            budget_end = time.monotonic() + self.plan.offline_budget_s / 2
            try:
                for seconds in self.plan.lengths_s:
                    for bs in sizes:
                        row: dict[str, Any] = {"precision": precision, "batch": bs, "length_s": seconds}
                        table.append(row)
                        if time.monotonic() > budget_end:
                            row["result"] = "skipped: time budget"
                            continue
                        row.update(_time_cell(runner, bs, seconds, self.plan.cell_budget_s))
            finally:
                runner.close()
        st.numbers["table"] = table
        done = [r for r in table if "audio_s_per_s" in r]
        assert done, "no offline cell ran"
        for precision in ("fp16", "fp32"):
            cells = [r for r in done if r["precision"] == precision]
            if cells:
                best = max(cells, key=lambda r: r["audio_s_per_s"])
                st.numbers[f"best_{precision}"] = {k: best[k] for k in ("batch", "length_s", "audio_s_per_s")}
        st.numbers["new_length_cost"] = self._new_length_cost()
        st.numbers["io_binding"] = self._io_binding()

    def _new_length_cost(self) -> list[dict[str, Any]]:
        """First run at a never-seen exact length vs the second run, per cuDNN search mode (buckets off)."""
        from emotion2vec_serving.export.signals import speech_like

        out = []
        modes = ("heuristic", "exhaustive") if self.gpu else ("heuristic",)
        for mode in modes:
            runner = self.runner("fp16", cudnn_conv_algo_search=mode, length_buckets="off")
            try:
                runner.run([speech_like(RATE, seed=1)])
                first, second = [], []
                for k in range(self.plan.new_lengths):
                    clip = speech_like(int(RATE * (2.0 + 0.731 * k)) + 17 * k, seed=k)
                    t0 = time.perf_counter()
                    runner.run([clip])
                    first.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    runner.run([clip])
                    second.append(time.perf_counter() - t0)
                out.append(
                    {"cudnn_conv_algo_search": mode, "first_run_ms": _ms(first), "second_run_ms": _ms(second)}
                )
            finally:
                runner.close()
        return out

    def _io_binding(self) -> dict[str, Any]:
        """One batch (8 x 5 s, fp16): plain session.run of every output vs IO binding keeping the input and
        the large frame features on the device and copying back only what utterance answers need."""
        from emotion2vec_serving.export.signals import speech_like

        runner = self.runner("fp16")
        try:
            session = _real_session(runner)
            if session is None:
                return {"result": "skipped: not an ONNX Runtime session"}
            bs, n = 8, 5 * RATE
            wave = np.stack([speech_like(n, seed=i) for i in range(bs)]).astype(np.float32)
            lengths = np.full(bs, n, dtype=np.int64)
            names = [o.name for o in session.get_outputs()]
            feeds = {"waveform": wave, "lengths": lengths}
            session.run(names, feeds)
            plain = _repeat(lambda: session.run(names, feeds), 5)
            small = [x for x in names if x not in ("frame_features", "frame_probs")]
            only_small = _repeat(lambda: session.run(small, feeds), 5)
            device = "cuda" if runner.provider == CUDA else "cpu"
            binding = session.io_binding()

            def bound() -> None:
                binding.bind_cpu_input("waveform", wave)
                binding.bind_cpu_input("lengths", lengths)
                for name in names:
                    binding.bind_output(name, device if name.startswith("frame_f") else "cpu")
                session.run_with_iobinding(binding)
                binding.get_outputs()

            bound()
            with_binding = _repeat(bound, 5)
            return {
                "batch": bs,
                "length_s": n / RATE,
                "device": device,
                "run_all_outputs_ms": _ms(plain),
                "run_without_frame_outputs_ms": _ms(only_small),
                "io_binding_frame_features_on_device_ms": _ms(with_binding),
            }
        finally:
            runner.close()

    # ----------------------------------------------------------------------------------------- 4 server

    def step_server(self, st: Step) -> None:
        from benchmarks import loadgen
        from benchmarks.suite.server_process import ServerProcess

        precision = "fp16" if self.gpu else "fp32"
        args = [
            "--providers",
            ",".join(self.providers),
            "--max-batch-size",
            str(self.plan.server_max_batch),
            "--max-batch-audio-s",
            str(64 * 30 if self.gpu else 60),
            "--max-queue-requests",
            "4096",
            "--max-queue-audio-s",
            "100000",
            "--max-concurrent-rpcs",
            "0",
            "--warmup-max-s",
            "30",
            "--max-duration-s",
            "30",
        ]
        clips = loadgen.make_clips("realistic", 400 if self.gpu else 60, seed=0)
        requests = loadgen.build_requests(clips, "f32")
        audio_s = [len(c) / RATE for c in clips]
        with ServerProcess(self.repos[precision], args, startup_timeout_s=300) as server:
            info = asyncio.run(_model_info(server.target))
            st.numbers["model_info"] = info
            assert info["execution_provider"] == self.providers[0], (
                f"GetModelInfo says {info['execution_provider']}, asked {self.providers[0]}"
            )
            before = loadgen.scrape(server.metrics_url)
            if self.gpu:  # one Python client process cannot offer thousands of audio-seconds per second
                records, wall = loadgen.closed_loop_processes(
                    server.target,
                    "realistic",
                    "f32",
                    len(clips),
                    0,
                    self.plan.closed_concurrency,
                    self.plan.load_s,
                    processes=4,
                )
            else:
                records, wall = asyncio.run(
                    loadgen.closed_loop(
                        server.target, requests, audio_s, self.plan.closed_concurrency, self.plan.load_s
                    )
                )
            after = loadgen.scrape(server.metrics_url)
            closed = loadgen.summarize(
                "closed", "closed", self.plan.closed_concurrency, records, wall, before, after
            )
            st.numbers["closed_loop"] = _result(closed)
            rate = 0.8 * closed.rps
            before = loadgen.scrape(server.metrics_url)
            records, wall = asyncio.run(
                loadgen.open_loop(server.target, requests, audio_s, rate, self.plan.load_s)
            )
            after = loadgen.scrape(server.metrics_url)
            opened = loadgen.summarize("open 80%", "open", rate, records, wall, before, after)
            st.numbers["open_loop_80pct"] = _result(opened)
            short = [r.latency_s for r in records if r.code == "OK" and r.audio_s <= 10.0]
            st.numbers["open_loop_80pct"]["p99_ms_clips_le_10s"] = loadgen.percentile_ms(short, 99)
        offline = next((s for s in self.steps if s.name == "3"), None)
        best = (offline.numbers.get(f"best_{precision}") or {}) if offline else {}
        if best:
            st.numbers["closed_vs_best_offline"] = closed.audio_s_per_s / best["audio_s_per_s"]
        st.numbers["targets"] = {
            "x_real_time >= 2000 (large fp16, GPU)": closed.audio_s_per_s,
            ">= 0.9 x best offline": st.numbers.get("closed_vs_best_offline"),
            "mean batch >= 8 under saturation": closed.extra.get(
                "server_mean_batch_size", closed.mean_batch_size
            ),
            "p99 <= 1000 ms at 80 % load, clips <= 10 s": st.numbers["open_loop_80pct"][
                "p99_ms_clips_le_10s"
            ],
        }
        assert closed.ok > 0 and closed.errors == 0, f"closed loop: {closed.ok} ok, {closed.errors} errors"
        assert opened.errors == 0, f"open loop: {opened.errors} errors"
        if self.gpu:
            assert st.numbers["targets"]["mean batch >= 8 under saturation"] > 1, "the server did not batch"

    # --------------------------------------------------------------------------------------- 5 fallback

    def step_fallback(self, st: Step) -> None:
        from emotion2vec_serving.batching import BatchPolicy, DynamicBatcher
        from emotion2vec_serving.export.signals import speech_like
        from emotion2vec_serving.server.runtime.contract import (
            RunnerOutOfMemory,
            is_out_of_memory,
            split_on_error,
        )
        from emotion2vec_serving.server.runtime.engines.onnxruntime import ort_session_factory

        injector = _Injector(ort_session_factory, relabel=not self.gpu)
        cooldown = 1.0 if self.args.quick else 3.0
        changes: list[tuple[Any, ...]] = []
        # On CPU the sessions asked for CUDA are CPU sessions labelled CUDA (a simulation, reported).
        runner = self.runner(
            "fp32",
            factory=injector,
            providers=self.providers if self.gpu else (CUDA, CPU),
            on_change=lambda *a: changes.append(a),
            gpu_cooldown_s=cooldown,
            gpu_failures_before_fallback=2,
        )
        try:
            gpu_provider = runner.provider
            st.numbers["simulated"] = self.simulated
            assert gpu_provider in GPU_PROVIDERS, f"not on a GPU provider: {gpu_provider}"
            clip = speech_like(2 * RATE, seed=3)
            injector.broken.set()
            outcomes = []
            for _ in range(3):
                try:
                    outcomes.append(runner.run([clip])[0].provider)
                except Exception as exc:
                    outcomes.append(type(exc).__name__)
            st.numbers["runs_while_broken"] = outcomes
            assert runner.provider == CPU, f"still on {runner.provider} after injected device failures"
            injector.broken.clear()
            t0 = time.monotonic()
            while runner.provider != gpu_provider and time.monotonic() - t0 < 10 * cooldown + 30:
                time.sleep(0.05)
            st.numbers["returned_after_s"] = round(time.monotonic() - t0, 2)
            st.numbers["provider_changes"] = [list(c) for c in changes]
            assert runner.provider == gpu_provider, "did not return to the GPU after the cool-down"
            assert runner.run([clip])[0].provider == gpu_provider
        finally:
            runner.close()

        # Out of memory: a real limit on a GPU (weights + a little), an injected one on CPU.
        weights = sum(p.stat().st_size for p in self.repos["fp16"].glob("*.onnx*"))
        limit_mb = (int(weights * 1.3) >> 20) + 1024  # one 30 s item fits, 64 of them do not
        if self.gpu:
            runner = self.runner("fp16", gpu_mem_limit_mb=limit_mb)
            st.numbers["oom_gpu_mem_limit_mb"] = limit_mb
            if runner.provider not in GPU_PROVIDERS:
                runner.close()
                raise AssertionError(f"with a {limit_mb} MiB limit the model did not load on the GPU")
        else:
            oom = _Injector(ort_session_factory, relabel=False, oom_above=4 * 4 * RATE)
            runner = self.runner("fp16", factory=oom)
            st.numbers["oom_injected_above_padded_samples"] = 16 * RATE
        errors: list[str] = []
        try:
            batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
                runner.run,
                BatchPolicy(
                    max_batch_size=64,
                    max_batch_cost=64 * 30 * RATE,
                    max_queue_delay_s=0.05,
                    max_queue_requests=1000,
                    max_queue_cost=10**10,
                ),
                split_on_error=split_on_error,
                out_of_memory=is_out_of_memory,
                observer=_ErrorLog(errors),
            )
            huge_len = 30 * RATE if self.gpu else 4 * RATE
            huge = [speech_like(huge_len, seed=100 + i) for i in range(64 if self.gpu else 8)]
            small = [speech_like(RATE, seed=200 + i) for i in range(16)]

            async def drive() -> list[Any]:
                await batcher.start()
                try:
                    return await asyncio.gather(
                        *(batcher.submit(c, cost=runner.cost(len(c))) for c in [*huge, *small]),
                        return_exceptions=True,
                    )
                finally:
                    await batcher.close()

            results = asyncio.run(drive())
            failed = [r for r in results if isinstance(r, BaseException)]
            st.numbers["oom_batch_errors"] = errors[:20]
            st.numbers["oom_requests"] = len(results)
            st.numbers["oom_failed_requests"] = [type(r).__name__ for r in failed][:10]
            st.numbers["learnt_max_items_at_huge_length"] = batcher.latency_model.max_items(huge_len, 64)
            st.numbers["out_of_memory_seen"] = any("OutOfMemory" in e for e in errors)
            small_ok = all(not isinstance(r, BaseException) for r in results[len(huge) :])
            assert small_ok, "short requests failed beside the huge ones"
            assert all(not isinstance(r, BaseException) or isinstance(r, RunnerOutOfMemory) for r in results)
            if not st.numbers["out_of_memory_seen"]:
                st.reason = "no out-of-memory happened at this limit (nothing to split)"
        finally:
            runner.close()

    # ------------------------------------------------------------------------------------ 6 long audio

    def step_long_recording(self, st: Step) -> None:
        from emotion.v1 import emotion_pb2

        from emotion2vec_serving.server.config import Settings

        has_segments = "segments" in emotion_pb2.RecognizeResponse.DESCRIPTOR.fields_by_name
        if not has_segments or "max_audio_s" not in Settings.__dataclass_fields__:
            raise _Skip(
                "long recordings (issue 13) are not in this server: no RecognizeResponse.segments / "
                "--max-audio-s"
            )
        from benchmarks.suite.server_process import ServerProcess
        from emotion2vec_serving.export.signals import speech_like

        seconds = self.plan.long_recording_s
        precision = "fp16" if self.gpu else "fp32"
        pcm = (np.clip(speech_like(int(seconds * RATE), seed=5), -1, 1) * 32767).astype("<i2").tobytes()
        args = [
            "--providers",
            ",".join(self.providers),
            "--max-audio-s",
            str(max(seconds, 600)),
            "--max-message-bytes",
            str(64 << 20),
            "--warmup-max-s",
            "10",
        ]
        with ServerProcess(self.repos[precision], args, startup_timeout_s=300) as server:
            t0 = time.monotonic()
            response = asyncio.run(_recognize_pcm(server.target, pcm))
            wall = time.monotonic() - t0
        st.numbers.update(
            {
                "audio_s": seconds,
                "wall_s": round(wall, 2),
                "x_real_time": seconds / wall,
                "segments": len(response.segments),
                "label": response.utterance.label,
            }
        )
        assert len(response.segments) >= 2, "a long recording came back without segments"

    # -------------------------------------------------------------------------------------------- main

    def run(self) -> int:
        self.step("0", "build or load the checkpoint and the fp32/fp16 repositories", lambda st: self.setup())
        if self.steps[-1].status != "passed":
            return 1
        plan: list[tuple[str, str, Callable[[Step], None]]] = [
            ("1", "the active provider is the one asked for, with the CUDA options", self.step_provider),
            ("2", "batch-exactness, FunASR parity, fp16 drift (TF32 off)", self.step_exactness),
            ("3", "offline throughput table, new-length cost, IO binding", self.step_offline),
            ("4", "the real server under the realistic mix (closed and open loop)", self.step_server),
            (
                "5",
                "device failure -> CPU -> back after the cool-down; out of memory splits",
                self.step_fallback,
            ),
            ("6", "a long recording through Recognize", self.step_long_recording),
        ]
        wanted = {x.strip() for x in self.args.steps.split(",") if x.strip()}
        for name, title, fn in plan:
            if name in wanted:
                self.step(name, title, fn)
            else:
                self.steps.append(Step(name, title, "skipped", "not asked for (--steps)"))
        self.write()
        failed = [st.name for st in self.steps if st.status in ("failed", "error")]
        self.log(
            f"done in {time.monotonic() - self.started:.0f} s; report in {self.out}; "
            + (f"FAILED steps {failed}" if failed else "all steps passed or skipped")
        )
        return 1 if failed else 0


# ------------------------------------------------------------------------------------------------ helpers


class _Skip(Exception):
    pass


class _ErrorLog:
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    def on_batch_error(self, size: int, exc: BaseException, will_retry: bool) -> None:
        self.errors.append(f"{type(exc).__name__} batch={size} retried={will_retry}")


class _Injector:
    """Session factory around the real one: fails runs while ``broken`` (an injected CUDA error), and
    optionally raises out-of-memory above ``oom_above`` padded samples. ``relabel``: on CPU, sessions asked
    for a GPU claim CUDA (a simulation, reported as such)."""

    def __init__(self, real: Callable[..., Any], relabel: bool, oom_above: int = 0) -> None:
        self.real, self.relabel, self.oom_above = real, relabel, oom_above
        self.broken = threading.Event()

    def __call__(self, path: Path, providers: Sequence[str], options: Any) -> Any:
        wants_gpu = any(p in GPU_PROVIDERS for p in providers)
        if self.relabel:
            session = self.real(path, [CPU], options)
            return _Injected(session, self, [CUDA, CPU] if wants_gpu or CUDA in providers else [CPU])
        session = self.real(path, providers, options)
        return _Injected(session, self, session.get_providers())


class _Injected:
    def __init__(self, real: Any, owner: _Injector, providers: list[str]) -> None:
        self.real, self.owner, self.providers = real, owner, providers
        self.session = getattr(real, "session", None)

    def get_providers(self) -> list[str]:
        return list(self.providers)

    def new_run_handle(self) -> Any:
        return self.real.new_run_handle()

    def run(self, names: Any, feeds: dict[str, Any], handle: Any = None) -> list[Any]:
        if self.owner.broken.is_set() and self.providers[0] in GPU_PROVIDERS:
            raise RuntimeError("CUDA failure 999: unspecified launch failure (injected by gpu_check)")
        if self.owner.oom_above and int(np.prod(feeds["waveform"].shape)) > self.owner.oom_above:
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory "
                "(injected by gpu_check)"
            )
        return list(self.real.run(names, feeds, handle))


def _real_session(runner: Any) -> Any:
    """The onnxruntime.InferenceSession behind a runner's first session (None if not ONNX Runtime).

    A fixed runner's sessions are in its pool; the adaptive runner's (CPU provider, ``--runner-instances 0``)
    are in its width pool, whose fixed pool stays empty."""
    widths = runner.widths
    if widths is not None:
        session, _threads = widths.acquire(lambda: False)
    else:
        generation, session = runner._acquire()
    try:
        inner = getattr(session, "session", session)
        return inner if hasattr(inner, "get_provider_options") else None
    finally:
        if widths is not None:
            widths.release(session)
        else:
            runner._release(generation, session)


def _time_cell(runner: Any, bs: int, seconds: float, budget_s: float) -> dict[str, Any]:
    from emotion2vec_serving.export.signals import speech_like
    from emotion2vec_serving.server.runtime.contract import RunnerOutOfMemory

    n = int(seconds * RATE)
    batch = [speech_like(n, seed=i) for i in range(bs)]
    try:
        runner.run(batch)  # warm: this shape once before timing
        times = []
        end = time.monotonic() + budget_s
        while len(times) < 2 or (len(times) < 5 and time.monotonic() < end):
            t0 = time.perf_counter()
            runner.run(batch)
            times.append(time.perf_counter() - t0)
    except RunnerOutOfMemory:
        return {"result": "out of memory"}
    median = float(np.median(times))
    return {
        "run_ms": round(1e3 * median, 2),
        "audio_s_per_s": round(bs * seconds / median, 1),
        "device_memory_used_mb": _device_memory_mb(),
        "rss_mb": _rss_mb(),
    }


def _tf32_child(repo: Path, providers: Sequence[str], lengths: Sequence[int]) -> list[list[float]]:
    """Probabilities of each clip alone on fp32 with TF32 allowed, computed in a fresh process."""
    code = (
        "import json, sys\n"
        "from emotion2vec_serving.export.signals import speech_like\n"
        "from emotion2vec_serving.server.runtime.gpu import GpuOptions\n"
        "from emotion2vec_serving.modelrepo.manifest import load_manifest\n"
        "from emotion2vec_serving.server.runtime.contract import RunnerOptions\n"
        "from emotion2vec_serving.server.runtime.runner import Runner\n"
        "repo, providers, lengths = sys.argv[1], sys.argv[2].split(','), json.loads(sys.argv[3])\n"
        "options = RunnerOptions(providers=tuple(providers), gpu=GpuOptions(tf32=True))\n"
        "r = Runner(load_manifest(repo), options)\n"
        "out = [r.run([speech_like(n, seed=1000 + i)])[0].probs.tolist() for i, n in enumerate(lengths)]\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NVIDIA_TF32_OVERRIDE"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(repo), ",".join(providers), json.dumps(list(lengths))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    probs: list[list[float]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return probs


def _repeat(fn: Callable[[], Any], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _ms(times: Sequence[float]) -> float:
    return round(1e3 * float(np.median(times)), 3) if times else float("nan")


def _maxabs(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _cosine(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))


def _result(r: Any) -> dict[str, Any]:
    row: dict[str, Any] = r.to_row()
    row["x_real_time"] = r.audio_s_per_s
    return row


def _rss_mb() -> float:
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _device_memory_mb(total: bool = False) -> float | None:
    """Used (or total) memory of GPU 0 through nvidia-smi; None without one."""
    field_name = "memory.total" if total else "memory.used"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        info["load_average"] = os.getloadavg()
    try:
        info["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def _export_cli(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "emotion2vec_serving.export", *args], cwd=ROOT, check=True)


async def _model_info(target: str) -> dict[str, Any]:
    import grpc
    from emotion.v1 import emotion_pb2, emotion_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        reply = await emotion_pb2_grpc.EmotionRecognizerStub(channel).GetModelInfo(
            emotion_pb2.GetModelInfoRequest(), timeout=10
        )
    fields = ("model_name", "precision", "execution_provider", "engine")
    return {f: getattr(reply, f) for f in fields if hasattr(reply, f)}


async def _recognize_pcm(target: str, pcm: bytes) -> Any:
    import grpc
    from emotion.v1 import emotion_pb2, emotion_pb2_grpc

    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        audio = emotion_pb2.Audio(
            raw=emotion_pb2.RawAudio(
                data=pcm, encoding=emotion_pb2.PCM_ENCODING_S16LE, sample_rate_hz=RATE, channels=1
            )
        )
        return await emotion_pb2_grpc.EmotionRecognizerStub(channel).Recognize(
            emotion_pb2.RecognizeRequest(audio=audio), timeout=600
        )


def _clean(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# GPU device check (issue 15)",
        "",
        f"- command: `{meta.get('command', '')}`",
        f"- date (UTC): {meta.get('date_utc', '')}",
        f"- machine: {meta.get('machine', {})}",
        f"- onnxruntime {meta.get('onnxruntime', '')}, "
        f"providers asked {meta.get('providers_asked', '')}, model size {meta.get('size', '')}",
        f"- faults simulated (CPU run): {meta.get('simulated_gpu_faults', '')}",
        f"- result: **{'passed' if report['passed'] else 'FAILED'}** in {meta.get('elapsed_s', '')} s",
        "",
        "| step | what | status | s | note |",
        "|---|---|---|---|---|",
    ]
    for st in report["steps"]:
        lines.append(
            f"| {st['name']} | {st['title']} | {st['status']} | {st['seconds']} | "
            f"{st['reason'].replace('|', '/')[:200]} |"
        )
    for st in report["steps"]:
        numbers = {k: v for k, v in st["numbers"].items() if k not in ("table", "traceback")}
        if numbers:
            lines += [
                "",
                f"## step {st['name']}: {st['title']}",
                "",
                "```json",
                json.dumps(numbers, indent=1, default=_jsonable)[:6000],
                "```",
            ]
        if "table" in st["numbers"]:
            lines += [
                "",
                "| precision | batch | length s | run ms | audio-s/s | device MiB used | note |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in st["numbers"]["table"]:
                lines.append(
                    f"| {r['precision']} | {r['batch']} | {r['length_s']:g} | {r.get('run_ms', '')} | "
                    f"{r.get('audio_s_per_s', '')} | {r.get('device_memory_used_mb', '')} | "
                    f"{r.get('result', '')} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder for report.json and report.md")
    parser.add_argument(
        "--providers",
        default="CUDAExecutionProvider,CPUExecutionProvider",
        help="ONNX Runtime providers, first = the one checked (default: CUDA, then CPU)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds (CI; runs on CPU)")
    parser.add_argument(
        "--size",
        choices=["tiny", "base", "large"],
        default=None,
        help="checkpoint size to build (default: large; tiny with --quick)",
    )
    parser.add_argument("--checkpoint", help="cached checkpoint directory (else built)")
    parser.add_argument("--fp32-repo", help="cached fp32 model repository (else exported)")
    parser.add_argument("--fp16-repo", help="cached fp16 model repository (else exported)")
    parser.add_argument(
        "--steps",
        default="1,2,3,4,5,6",
        help="steps to run, comma-separated (rerunning only the failed ones saves device time)",
    )
    parser.add_argument(
        "--cache",
        default=str(ROOT / ".cache" / "gpu_check"),
        help="where built checkpoints and repositories are kept",
    )
    args = parser.parse_args(argv)
    return Check(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
