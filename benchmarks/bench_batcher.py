"""Scheduling overhead of the batcher: requests per second through it with a no-op runner.

    .venv/bin/python benchmarks/bench_batcher.py [--requests 100000] [--clients 256] [--max-batch-size 8]

``clients`` concurrent callers each submit one request, await it, and submit the next (closed loop), so the
queue holds up to ``clients`` requests, as in a server with that many requests in flight. Lengths are drawn
log-normal 1-30 s so batch formation does real length-aware work. The runner returns its payloads at once:
what is measured is the batcher (queueing, policy, thread hand-off, futures), not a model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import time

from emotion2vec_serving.batching import BatchPolicy, DynamicBatcher

SR = 16000


def lognormal_costs(n: int, seed: int) -> list[int]:
    """Log-normal durations (median ~4 s) clipped to 1-30 s, in samples."""
    rng = random.Random(seed)
    return [int(SR * min(30.0, max(1.0, rng.lognormvariate(1.4, 0.8)))) for _ in range(n)]


def noop_runner(payloads: list[int]) -> list[int]:
    return payloads


async def run_once(requests: int, clients: int, policy: BatchPolicy, costs: list[int]) -> tuple[float, int]:
    batches = 0

    class CountBatches:
        def on_batch(self, *args: object) -> None:
            nonlocal batches
            batches += 1

    batcher: DynamicBatcher[int, int] = DynamicBatcher(noop_runner, policy, observer=CountBatches())
    await batcher.start()
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            result = await batcher.submit(i, cost=costs[i % len(costs)])
            assert result == i  # every caller gets its own result

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    await batcher.close()
    return requests / elapsed, batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--max-batch-size", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--adaptive", choices=["on", "off"], default="on")
    ap.add_argument(
        "--max-padding-waste",
        type=float,
        default=1.0,
        help="1.0: the waste cap never binds, batches fill to max_batch_size",
    )
    args = ap.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load avg {os.getloadavg()[0]:.2f}"
    )
    costs = lognormal_costs(10_000, seed=1)
    for mbs in args.max_batch_size:
        policy = BatchPolicy(
            max_batch_size=mbs,
            max_batch_cost=SR * 30 * mbs,  # the budget never binds: measure the size limit
            max_queue_requests=max(256, args.clients),
            max_queue_cost=SR * 30 * max(256, args.clients),
            adaptive=args.adaptive == "on",
            max_padding_waste=args.max_padding_waste,
        )
        rates = []
        for _ in range(args.repeats):
            rate, batches = asyncio.run(run_once(args.requests, args.clients, policy, costs))
            rates.append(rate)
        print(
            f"max_batch_size={mbs:3d} waste cap={args.max_padding_waste} clients={args.clients} "
            f"requests={args.requests}: "
            f"best {max(rates):,.0f} req/s, median {sorted(rates)[len(rates) // 2]:,.0f} req/s, "
            f"mean batch {args.requests / batches:.1f}"
        )


if __name__ == "__main__":
    main()
