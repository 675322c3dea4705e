"""Padding waste and simulated throughput: length-aware batcher vs FIFO pad-to-longest vs equal-shape-only.

    .venv/bin/python benchmarks/simulate_batching.py [--requests 3000] [--seed 1]

Every strategy sees the very same request stream (log-normal lengths, median ~4 s, clipped to 1-30 s) and a
simulated runner (virtual clock, see batching/simulation.py) whose run time is
- gpu: 0.015 + 0.002 * items * longest_s            (fixed launch cost: batching pays)
- cpu: 0.005 + 0.31 * items * longest_s * (1 + 0.025 * (items - 1))
                                                     (2-core CPU, large model: 3.2 audio-s/s at batch 1,
                                                      ~2.7 at batch 8, as measured: batching does not pay)
Two loads: a burst (all requests at once; throughput = audio seconds / makespan) and a steady Poisson
load at 70 % of the batch-1 capacity (latency percentiles). Strategies:
- length-aware adaptive: this batcher (fits the latency model online, from nothing)
- length-aware classic: this batcher's grouping with adaptive=False (wait up to max_queue_delay for 8)
- fifo: first-in-first-out, pad to the longest (Ray Serve / text-embeddings-inference style)
- equal-shape: only identical lengths batch together (Triton without ragged batching)
- batch-1: one request at a time
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
from collections.abc import Callable

from emotion2vec_serving.batching import DECISIONS, BatchPolicy, LatencyModel
from emotion2vec_serving.batching.simulation import SimRequest, simulate

SR = 16000
PROFILES: dict[str, Callable[[int, int], float]] = {
    "gpu": lambda n, L: 0.015 + 0.002 * n * L / SR,
    "cpu": lambda n, L: 0.005 + 0.31 * n * L / SR * (1 + 0.025 * (n - 1)),
}


def lengths(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [int(SR * min(30.0, max(1.0, rng.lognormvariate(1.4, 0.8)))) for _ in range(n)]


def stream(costs: list[int], rate_per_s: float | None, seed: int) -> list[SimRequest]:
    rng = random.Random(seed + 1)
    t, out = 0.0, []
    for c in costs:
        if rate_per_s is not None:
            t += rng.expovariate(rate_per_s)
        out.append(SimRequest(t, c))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()} "
        f"(simulated runners: results do not depend on this machine)"
    )
    base = {
        "max_batch_size": 8,
        "max_batch_cost": SR * 240,
        "max_queue_delay_s": 0.010,
        "max_queue_requests": 10**6,
        "max_queue_cost": 10**13,
    }
    strategies: dict[str, tuple[BatchPolicy, object]] = {
        "length-aware adaptive": (BatchPolicy(**base, adaptive=True), None),  # type: ignore[arg-type]
        "length-aware classic": (BatchPolicy(**base, adaptive=False), None),  # type: ignore[arg-type]
        "fifo pad-to-longest": (BatchPolicy(**base, adaptive=False), DECISIONS["fifo"]),  # type: ignore[arg-type]
        "equal-shape only": (BatchPolicy(**base, adaptive=False), DECISIONS["equal_shape"]),  # type: ignore[arg-type]
        "batch-1": (BatchPolicy(**{**base, "max_batch_size": 1}, adaptive=False), None),  # type: ignore[arg-type]
    }
    costs = lengths(args.requests, args.seed)
    mean_s = sum(costs) / len(costs) / SR
    print(f"stream: {len(costs)} requests, mean {mean_s:.2f} s, total {sum(costs) / SR:.0f} audio-s\n")
    for prof_name, run_time in PROFILES.items():
        single_rate = 1.0 / run_time(1, int(mean_s * SR))  # requests/s at batch 1 (about)
        loads = {"burst": None, "steady 70% of batch-1 capacity": 0.7 * single_rate}
        for load_name, rate in loads.items():
            n = len(costs) if rate is None or prof_name == "gpu" else min(len(costs), 400)
            reqs = stream(costs[:n], rate, args.seed)
            print(f"## profile {prof_name}, {load_name}" + (f" ({rate:.2f} req/s)" if rate else ""))
            print(
                f"{'strategy':24s} {'waste':>7s} {'batch':>6s} {'audio-s/s':>10s} {'p50 s':>8s} {'p99 s':>8s}"
            )
            for name, (policy, fn) in strategies.items():
                rep = simulate(reqs, policy, run_time, model=LatencyModel(), decide_fn=fn)  # type: ignore[arg-type]
                assert rep.outcome == ["ok"] * n
                lat = [f - r.arrival_s for f, r in zip(rep.finish_s, reqs, strict=True) if f is not None]
                thr = sum(r.cost for r in reqs) / SR / rep.makespan_s
                print(
                    f"{name:24s} {rep.padding_waste:7.1%} {rep.mean_batch_size:6.2f} {thr:10.2f} "
                    f"{pct(lat, 0.5):8.3f} {pct(lat, 0.99):8.3f}"
                )
            print()


if __name__ == "__main__":
    main()
