"""Overload: drive a real server process at a multiple of its measured capacity, then drop the load.

Phases (all against ``python -m emotion2vec_serving.server`` on loopback, with a small queue bound):

1. capacity: closed loop (``--clients`` concurrent callers) for ``--capacity-s``; capacity = OK/s.
2. overload: open loop at ``--factor`` x capacity for ``--overload-s``.
3. recovery: open loop at ``--recovery-factor`` x capacity for ``--recovery-s``.

Per request: status, latency (from its scheduled arrival), and whether a RESOURCE_EXHAUSTED carried the
``retry-after-ms`` hint. Per second: the server's RSS. Writes a CSV timeline and prints a summary:
rejection latency, accepted latency against the deadline, DEADLINE_EXCEEDED count, RSS peak and the
recovery latency.

    python -m benchmarks.overload --model demo --factor 10 --overload-s 20 --csv overload.csv
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.soak import machine, make_request, pct, rss_mb
from emotion2vec_serving.clients.wire import RETRY_AFTER_MS_KEY
from emotion2vec_serving.server.process import ServerProcess


@dataclass
class Result:
    phase: str
    scheduled: float  # seconds since the start of the phase's run
    code: str
    latency_s: float  # from the scheduled arrival (includes any client lag: no coordinated omission)
    retry_hint: bool
    service_s: float  # from the moment the call was actually made (what the server did)


async def _call(stub: object, request: object, deadline_s: float) -> tuple[str, bool]:
    import grpc.aio

    try:
        await stub.Recognize(request, timeout=deadline_s)  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError as exc:
        hint = any(k == RETRY_AFTER_MS_KEY for k, _ in (exc.trailing_metadata() or ()))
        return exc.code().name, hint
    return "OK", False


async def run(
    address: str, server: ServerProcess, args: argparse.Namespace
) -> tuple[float, list[Result], list[tuple[float, float]]]:
    import grpc.aio
    from emotion.v1 import emotion_pb2_grpc

    request = make_request(args.audio_s)
    results: list[Result] = []
    rss: list[tuple[float, float]] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        t0 = time.monotonic()

        async def sample_rss() -> None:
            while True:
                rss.append((time.monotonic() - t0, rss_mb(server)))
                await asyncio.sleep(0.5)

        sampler = asyncio.ensure_future(sample_rss())

        # 1. capacity, closed loop
        done = 0
        end = time.monotonic() + args.capacity_s

        async def client() -> None:
            nonlocal done
            while time.monotonic() < end:
                code, _ = await _call(stub, request, args.deadline_s)
                done += code == "OK"

        await asyncio.gather(*(client() for _ in range(args.clients)))
        capacity = done / args.capacity_s

        # 2. and 3. open loop at a multiple of that
        async def open_loop(phase: str, rate: float, duration_s: float) -> None:
            start = time.monotonic()
            tasks = []

            async def one(scheduled: float) -> None:
                sent = time.monotonic()
                code, hint = await _call(stub, request, args.deadline_s)
                now = time.monotonic()
                results.append(Result(phase, scheduled - t0, code, now - scheduled, hint, now - sent))

            for i in range(int(rate * duration_s)):
                scheduled = start + i / rate
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one(scheduled)))
            await asyncio.gather(*tasks)

        await open_loop("overload", args.factor * capacity, args.overload_s)
        await open_loop("recovery", args.recovery_factor * capacity, args.recovery_s)
        sampler.cancel()
    return capacity, results, rss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--audio-s", type=float, default=4.0, help="seconds of audio per request (default 4)")
    p.add_argument("--deadline-s", type=float, default=2.0, help="per-request deadline (default 2)")
    p.add_argument("--clients", type=int, default=8, help="closed-loop callers for the capacity phase")
    p.add_argument("--capacity-s", type=float, default=8.0)
    p.add_argument(
        "--factor", type=float, default=10.0, help="overload as a multiple of capacity (default 10)"
    )
    p.add_argument("--overload-s", type=float, default=20.0)
    p.add_argument("--recovery-factor", type=float, default=0.5)
    p.add_argument("--recovery-s", type=float, default=8.0)
    p.add_argument("--max-queue-requests", type=int, default=16)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--csv", type=Path, default=Path("overload.csv"))
    p.add_argument("server_args", nargs="*", help="extra emotion-server flags, after --")
    args = p.parse_args(argv)

    print("command:", " ".join([sys.executable, "-m", "benchmarks.overload", *(argv or sys.argv[1:])]))
    print("machine:", machine())
    server_args = [
        "--max-queue-requests", str(args.max_queue_requests),
        "--max-batch-size", str(args.max_batch_size),
        *args.server_args,
    ]  # fmt: skip
    with ServerProcess(args.model, server_args, metrics=False, startup_timeout_s=600.0) as server:
        try:
            rss_start = rss_mb(server)
            capacity, results, rss = asyncio.run(run(server.target, server, args))
            alive = server.proc.poll() is None
        finally:
            rc = server.terminate(60.0)

    with args.csv.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "phase", "code", "latency_ms", "retry_hint"])
        for r in sorted(results, key=lambda r: r.scheduled):
            w.writerow(
                [f"{r.scheduled:.3f}", r.phase, r.code, f"{1000 * r.latency_s:.2f}", int(r.retry_hint)]
            )
    with args.csv.with_suffix(".rss.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_mb"])
        w.writerows([(f"{t:.2f}", f"{m:.1f}") for t, m in rss])

    over = [r for r in results if r.phase == "overload"]
    rec = [r for r in results if r.phase == "recovery"]
    rejected = [r.service_s for r in over if r.code == "RESOURCE_EXHAUSTED"]
    accepted = [r.service_s for r in over if r.code == "OK"]
    lag = [r.latency_s - r.service_s for r in over]
    codes = Counter(r.code for r in over)
    offered = len(over) / args.overload_s
    print(f"capacity (closed loop, {args.clients} clients, {args.audio_s:g} s audio): {capacity:.1f} req/s")
    print(
        f"overload: offered {offered:.1f} req/s ({offered / capacity:.1f}x) for {args.overload_s:g} s: "
        + ", ".join(f"{k} {v}" for k, v in codes.most_common())
    )
    print(
        f"  (latencies below are from the actual call; client lag behind the schedule: p50 "
        f"{1000 * pct(lag, 50):.1f} ms, p99 {1000 * pct(lag, 99):.1f} ms)"
    )
    print(
        f"  RESOURCE_EXHAUSTED latency ms: p50 {1000 * pct(rejected, 50):.2f}, "
        f"p99 {1000 * pct(rejected, 99):.2f}, "
        f"max {1000 * max(rejected, default=float('nan')):.2f}; retry hint on "
        f"{sum(r.retry_hint for r in over if r.code == 'RESOURCE_EXHAUSTED')}/{len(rejected)}"
    )
    print(
        f"  accepted latency ms: p50 {1000 * pct(accepted, 50):.1f}, p99 {1000 * pct(accepted, 99):.1f}, "
        f"max {1000 * max(accepted, default=float('nan')):.1f} (deadline {1000 * args.deadline_s:.0f}); "
        f"goodput {len(accepted) / args.overload_s:.1f} req/s"
    )
    rec_ok = [r.service_s for r in rec if r.code == "OK"]
    first = sorted(rec, key=lambda r: r.scheduled)[:5]
    print(
        f"recovery at {args.recovery_factor:g}x: "
        + ", ".join(f"{k} {v}" for k, v in Counter(r.code for r in rec).most_common())
        + f"; latency ms p50 {1000 * pct(rec_ok, 50):.1f}, p99 {1000 * pct(rec_ok, 99):.1f}; first 5: "
        + ", ".join(f"{r.code} {1000 * r.latency_s:.0f}" for r in first)
    )
    peak = max((m for _, m in rss), default=float("nan"))
    print(
        f"RSS MiB: at start {rss_start:.1f}, peak {peak:.1f}, end {rss[-1][1] if rss else float('nan'):.1f}"
    )
    print(f"server alive after overload: {alive}; exit code after SIGTERM {rc}")
    print(f"csv: {args.csv} and {args.csv.with_suffix('.rss.csv')}")
    bad = set(codes) - {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
    return 0 if alive and rc == 0 and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
