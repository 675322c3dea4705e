"""Baselines measured without the server, on the same clips and the same machine.

- ``offline_limit``: the ONNX model over the clips sorted by length at each batch size, no server, no
  queue: the most throughput the serving stack could reach with this model and these threads.
- ``funasr_sequential``: FunASR ``AutoModel.generate`` one clip at a time in PyTorch (what the popular
  emotion2vec WebUI runs). ``funasr`` is imported only inside this function.
- ``inprocess_policy``: the real ``DynamicBatcher`` in this process, fed an arrival stream, forming batches
  by a named policy: ``none`` (batch of one), ``fifo`` (first-in-first-out, pad to the longest),
  ``equal_shape`` (only identical lengths batch together, as Triton's dynamic batcher does without
  ragged batching), ``length_aware`` (this project's policy). Used because the server cannot be told to
  batch FIFO / equal-shape, and to separate the policies' effect from gRPC costs.
- ``threads_instances``: throughput of ``instances`` sessions in parallel threads with ``threads`` each.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import SAMPLE_RATE_HZ, LoadResult, percentile_ms
from emotion2vec_serving.batching import DECISIONS, DEFAULT_DECISION

MIN_SAMPLES = 400
#: ``none`` (batches of one) and every decision function of the registry (``batching.DECISIONS``).
POLICIES = ("none", *DECISIONS)


class OrtModel:
    """One ONNX Runtime CPU session over a model repository, run on right-padded batches."""

    def __init__(self, repo: str | Path, intra_op_threads: int = 0) -> None:
        import onnxruntime as ort

        from emotion2vec_serving.modelrepo.manifest import load_manifest

        self.manifest = load_manifest(repo)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(self.manifest.onnx_path), options, providers=["CPUExecutionProvider"]
        )

    def run(self, clips: Sequence[np.ndarray]) -> tuple[int, int]:
        """Run one padded batch; return (padded samples, useful samples)."""
        longest = max(MIN_SAMPLES, max(len(c) for c in clips))
        waveform = np.zeros((len(clips), longest), dtype=np.float32)
        for i, c in enumerate(clips):
            waveform[i, : len(c)] = c
        lengths = np.array([len(c) for c in clips], dtype=np.int64)
        self.session.run(None, {"waveform": waveform, "lengths": lengths})
        return longest * len(clips), int(lengths.sum())


def _audio_s(clips: Sequence[np.ndarray]) -> float:
    return sum(len(c) for c in clips) / SAMPLE_RATE_HZ


def offline_limit(
    model: OrtModel, clips: Sequence[np.ndarray], batch_sizes: Sequence[int] = (1, 2, 4, 8)
) -> list[LoadResult]:
    """Throughput over the clips sorted by length at each batch size (one warm-up batch first)."""
    ordered = sorted(clips, key=len)
    model.run(ordered[:1])
    results = []
    for bs in batch_sizes:
        padded = useful = 0
        start = time.perf_counter()
        for i in range(0, len(ordered), bs):
            p, u = model.run(ordered[i : i + bs])
            padded += p
            useful += u
        wall = time.perf_counter() - start
        results.append(
            LoadResult(
                label=f"offline bs={bs}",
                mode="offline",
                offered=float(bs),
                requests=len(ordered),
                ok=len(ordered),
                rejected=0,
                errors=0,
                wall_s=wall,
                audio_s_per_s=_audio_s(ordered) / wall,
                rps=len(ordered) / wall,
                p50_ms=float("nan"),
                p95_ms=float("nan"),
                p99_ms=float("nan"),
                mean_batch_size=float(bs),
                padding_waste=1 - useful / padded,
            )
        )
    return results


def funasr_sequential(
    checkpoint_dir: str | Path, clips: Sequence[np.ndarray], budget_s: float = 120.0
) -> LoadResult:
    """FunASR ``AutoModel.generate`` one clip at a time (PyTorch, CPU), stopping after ``budget_s``."""
    import torch
    from funasr import AutoModel

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModel(model=str(checkpoint_dir), disable_update=True, device="cpu", disable_pbar=True)
    model.generate(clips[0], granularity="utterance", extract_embedding=False, disable_pbar=True)
    latencies: list[float] = []
    done: list[np.ndarray] = []
    start = time.perf_counter()
    for clip in clips:
        t0 = time.perf_counter()
        model.generate(clip, granularity="utterance", extract_embedding=False, disable_pbar=True)
        latencies.append(time.perf_counter() - t0)
        done.append(clip)
        if time.perf_counter() - start > budget_s:
            break
    wall = time.perf_counter() - start
    return LoadResult(
        label="FunASR sequential (PyTorch)",
        mode="funasr",
        offered=1.0,
        requests=len(done),
        ok=len(done),
        rejected=0,
        errors=0,
        wall_s=wall,
        audio_s_per_s=_audio_s(done) / wall,
        rps=len(done) / wall,
        p50_ms=percentile_ms(latencies, 50),
        p95_ms=percentile_ms(latencies, 95),
        p99_ms=percentile_ms(latencies, 99),
        mean_batch_size=1.0,
        batch_sizes={"1": float(len(done))},
        padding_waste=0.0,
    )


class _BatchStats:
    """Batcher observer: counts batches by size and padded / useful samples."""

    def __init__(self) -> None:
        self.sizes: dict[str, float] = {}
        self.padded = 0
        self.useful = 0

    def on_batch(
        self, size: int, padded_cost: int, useful_cost: int, run_s: float, queue_waits_s: list[float]
    ) -> None:
        self.sizes[str(size)] = self.sizes.get(str(size), 0.0) + 1
        self.padded += padded_cost
        self.useful += useful_cost


def inprocess_policy(
    model: OrtModel,
    clips: Sequence[np.ndarray],
    arrivals_s: Sequence[float],
    policy: str,
    max_batch_size: int = 8,
    max_queue_delay_s: float = 0.010,
    max_batch_audio_s: float = 60.0,
    label: str = "",
) -> LoadResult:
    """Serve ``clips[i]`` arriving at ``arrivals_s[i]`` (seconds from start) through the real
    ``DynamicBatcher`` in this process, with the batch-forming decision named by ``policy``.

    ``none``: batches of one. ``length_aware``: this project's policy (adaptive). ``fifo`` and
    ``equal_shape``: the baselines of ``batching.baselines`` passed as the batcher's ``decide``.
    Real time, real model, no gRPC: latency is completion minus arrival. An all-zero arrival list is a
    backlog: it measures saturated throughput.
    """
    import asyncio

    from emotion2vec_serving.batching import BatchPolicy, DynamicBatcher

    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    n = len(clips)
    batch_policy = BatchPolicy(
        max_batch_size=1 if policy == "none" else max_batch_size,
        max_batch_cost=int(max_batch_audio_s * SAMPLE_RATE_HZ),
        max_queue_delay_s=max_queue_delay_s,
        max_queue_requests=max(256, n),
        max_queue_cost=max(16000 * 600, sum(len(c) for c in clips)),
        adaptive=policy in ("none", "length_aware"),
    )
    stats = _BatchStats()
    latencies: list[float] = []

    def run_batch(payloads: list[np.ndarray]) -> list[None]:
        model.run(payloads)
        return [None] * len(payloads)

    async def serve() -> float:
        batcher: DynamicBatcher[np.ndarray, None] = DynamicBatcher(
            run_batch, batch_policy, observer=stats, decide=DECISIONS.get(policy, DECISIONS[DEFAULT_DECISION])
        )
        await batcher.start()
        start = time.perf_counter()

        async def one(i: int) -> None:
            delay = start + arrivals_s[i] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await batcher.submit(clips[i], cost=len(clips[i]))
            latencies.append(time.perf_counter() - start - arrivals_s[i])

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
        await batcher.close()
        return wall

    model.run(clips[:1])  # warm-up outside the clock
    wall = asyncio.run(serve())
    return LoadResult(
        label=label or f"in-process {policy}",
        mode="inprocess",
        offered=n / arrivals_s[-1] if arrivals_s[-1] > 0 else 0.0,  # 0 = backlog
        requests=n,
        ok=n,
        rejected=0,
        errors=0,
        wall_s=wall,
        audio_s_per_s=_audio_s(clips) / wall,
        rps=n / wall,
        p50_ms=percentile_ms(latencies, 50),
        p95_ms=percentile_ms(latencies, 95),
        p99_ms=percentile_ms(latencies, 99),
        mean_batch_size=n / sum(stats.sizes.values()),
        batch_sizes=dict(sorted(stats.sizes.items(), key=lambda kv: int(kv[0]))),
        padding_waste=1 - stats.useful / stats.padded if stats.padded else 0.0,
    )


def poisson_arrivals(n: int, rate_rps: float, seed: int = 0) -> list[float]:
    """``n`` arrival times (seconds from start) of a Poisson process at ``rate_rps``; 0 rate = backlog."""
    if rate_rps <= 0:
        return [0.0] * n
    rng = np.random.default_rng(seed + 11)
    return list(np.cumsum(rng.exponential(1.0 / rate_rps, size=n)))


def threads_instances(
    repo: str | Path, clips: Sequence[np.ndarray], threads: int, instances: int, budget_s: float = 20.0
) -> LoadResult:
    """Batch-of-one throughput of ``instances`` sessions in parallel threads, ``threads`` intra-op each."""
    models = [OrtModel(repo, threads) for _ in range(instances)]
    for m in models:
        m.run(clips[:1])
    lock = threading.Lock()
    next_index = [0]
    done_audio = [0.0]
    done_n = [0]
    start = time.perf_counter()

    def worker(m: OrtModel) -> None:
        while time.perf_counter() - start < budget_s:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            clip = clips[i % len(clips)]
            m.run([clip])
            with lock:
                done_audio[0] += len(clip) / SAMPLE_RATE_HZ
                done_n[0] += 1

    pool = [threading.Thread(target=worker, args=(m,)) for m in models]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    return LoadResult(
        label=f"threads={threads} instances={instances}",
        mode="offline",
        offered=float(instances),
        requests=done_n[0],
        ok=done_n[0],
        rejected=0,
        errors=0,
        wall_s=wall,
        audio_s_per_s=done_audio[0] / wall,
        rps=done_n[0] / wall,
        p50_ms=float("nan"),
        p95_ms=float("nan"),
        p99_ms=float("nan"),
        mean_batch_size=1.0,
        padding_waste=0.0,
        extra={"intra_op_threads": threads, "runner_instances": instances},
    )


def describe(result: LoadResult) -> dict[str, Any]:
    """Row of a result for the JSON dump."""
    return result.to_row()
