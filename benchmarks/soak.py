"""Soak: a bounded run at steady load against a real server process; memory and latency over time.

Starts ``python -m emotion2vec_serving.server`` (the real CLI) on a free port, waits for SERVING, drives
Recognize calls in an open loop (fixed arrival rate, latency measured from each request's scheduled
time) and samples the server's RSS from /proc every second. Writes a CSV (one row per second) and prints
a summary that says whether memory or latency grew.

    python -m benchmarks.soak --model demo --duration 180 --rate 20 --csv soak.csv

``--model`` is anything ``emotion-server --model`` accepts (``demo`` builds the tiny untrained model once).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emotion2vec_serving.server.process import ServerProcess

# ------------------------------------------------------------------------------------ server process


def rss_mb(server: ServerProcess) -> float:
    """The server's resident set size in MiB (Linux /proc), NaN elsewhere."""
    rss = server.rss_bytes()
    return float("nan") if rss is None else rss / (1024.0 * 1024.0)


def make_request(audio_s: float, seed: int = 0) -> object:
    """A Recognize request with ``audio_s`` of speech-like noise bursts as raw f32le PCM at 16 kHz."""
    from emotion.v1 import emotion_pb2 as pb

    rng = np.random.default_rng(seed)
    n = int(audio_s * 16000)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * np.arange(n) / 16000)
    samples = (0.2 * envelope * rng.standard_normal(n)).astype("<f4")
    raw = pb.RawAudio(
        data=samples.tobytes(), encoding=pb.PCM_ENCODING_F32LE, sample_rate_hz=16000, channels=1
    )
    return pb.RecognizeRequest(audio=pb.Audio(raw=raw))


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {cores} usable core(s), Python {platform.python_version()}, {platform.system()}"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def slope_per_min(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per minute."""
    pts = [(t, y) for t, y in zip(ts, ys, strict=True) if np.isfinite(y)]
    if len(pts) < 3:
        return float("nan")
    t, y = np.array(pts).T
    return float(np.polyfit(t, y, 1)[0] * 60.0)


# ------------------------------------------------------------------------------------------- soak


@dataclass
class Second:
    t: int
    rss_mb: float = float("nan")
    sent: int = 0
    ok: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)


async def soak(
    address: str, server: ServerProcess, duration_s: float, rate: float, audio_s: float, deadline_s: float
) -> list[Second]:
    import grpc
    import grpc.aio
    from emotion.v1 import emotion_pb2_grpc

    seconds = [Second(t) for t in range(int(duration_s) + 1)]
    request = make_request(audio_s)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        start = time.monotonic()

        async def one(scheduled: float) -> None:
            bucket = seconds[min(int(scheduled - start), len(seconds) - 1)]
            bucket.sent += 1
            try:
                await stub.Recognize(request, timeout=deadline_s)
            except grpc.aio.AioRpcError:
                bucket.errors += 1
                return
            bucket.ok += 1
            bucket.latencies_s.append(time.monotonic() - scheduled)  # from the scheduled arrival

        async def sample_rss() -> None:
            while True:
                i = int(time.monotonic() - start)
                if i >= len(seconds):
                    return
                seconds[i].rss_mb = rss_mb(server)
                await asyncio.sleep(1.0)

        sampler = asyncio.ensure_future(sample_rss())
        tasks: list[asyncio.Future[None]] = []
        n = int(duration_s * rate)
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(scheduled)))
        await asyncio.gather(*tasks)
        sampler.cancel()
    return seconds[: int(duration_s)]


def summarise(rows: list[Second], warmup_s: int) -> dict[str, float]:
    steady = rows[warmup_s:]
    ts = [r.t for r in steady]
    rss = [r.rss_mb for r in steady]
    tenth = max(1, len(steady) // 10)
    first_lat = [x for r in steady[:tenth] for x in r.latencies_s]
    last_lat = [x for r in steady[-tenth:] for x in r.latencies_s]
    rss_first = float(np.nanmedian(rss[:tenth]))
    rss_last = float(np.nanmedian(rss[-tenth:]))
    return {
        "requests": sum(r.sent for r in rows),
        "ok": sum(r.ok for r in rows),
        "errors": sum(r.errors for r in rows),
        "rss_first_mb": rss_first,
        "rss_last_mb": rss_last,
        "rss_peak_mb": float(np.nanmax(rss)),
        "rss_slope_mb_per_min": slope_per_min(ts, rss),
        "p50_first_ms": 1000 * pct(first_lat, 50),
        "p50_last_ms": 1000 * pct(last_lat, 50),
        "p99_first_ms": 1000 * pct(first_lat, 99),
        "p99_last_ms": 1000 * pct(last_lat, 99),
        "p99_slope_ms_per_min": 1000 * slope_per_min(ts, [pct(r.latencies_s, 99) for r in steady]),
    }


def write_csv(path: Path, rows: list[Second]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_mb", "sent", "ok", "errors", "p50_ms", "p99_ms", "max_ms"])
        for r in rows:
            lat = r.latencies_s
            w.writerow(
                [
                    r.t,
                    f"{r.rss_mb:.1f}",
                    r.sent,
                    r.ok,
                    r.errors,
                    f"{1000 * pct(lat, 50):.1f}",
                    f"{1000 * pct(lat, 99):.1f}",
                    f"{1000 * max(lat, default=float('nan')):.1f}",
                ]
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="what emotion-server --model serves (default: demo)")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of steady load (default 180)")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second, open loop (default 20)")
    p.add_argument("--audio-s", type=float, default=2.0, help="seconds of audio per request (default 2)")
    p.add_argument("--deadline-s", type=float, default=5.0, help="per-request deadline (default 5)")
    p.add_argument("--warmup-s", type=int, default=15, help="seconds excluded from the trend (default 15)")
    p.add_argument("--csv", type=Path, default=Path("soak.csv"), help="per-second output (default soak.csv)")
    p.add_argument(
        "--growth-tolerance-mb",
        type=float,
        default=10.0,
        help="RSS change over the run still called 'no growth' (default 10 MiB)",
    )
    p.add_argument("server_args", nargs="*", help="extra emotion-server flags, after --")
    args = p.parse_args(argv)

    print("command:", " ".join([sys.executable, "-m", "benchmarks.soak", *(argv or sys.argv[1:])]))
    print("machine:", machine())
    with ServerProcess(args.model, args.server_args, metrics=False, startup_timeout_s=600.0) as server:
        try:
            print(f"server pid {server.pid} on {server.target}; RSS at SERVING {rss_mb(server):.1f} MiB")
            rows = asyncio.run(
                soak(server.target, server, args.duration, args.rate, args.audio_s, args.deadline_s)
            )
        finally:
            rc = server.terminate(60.0)
    write_csv(args.csv, rows)
    s = summarise(rows, min(args.warmup_s, len(rows) // 3))
    steady_s = len(rows) - min(args.warmup_s, len(rows) // 3)
    rss_growth = s["rss_slope_mb_per_min"] * steady_s / 60.0
    lat_growth = s["p99_slope_ms_per_min"] * steady_s / 60.0
    print(f"requests {s['requests']:.0f}: OK {s['ok']:.0f}, errors {s['errors']:.0f}; server exit code {rc}")
    print(
        f"RSS MiB: first {s['rss_first_mb']:.1f}, last {s['rss_last_mb']:.1f}, peak {s['rss_peak_mb']:.1f}, "
        f"trend {s['rss_slope_mb_per_min']:+.2f} MiB/min ({rss_growth:+.1f} MiB over the steady part)"
    )
    print(
        f"latency ms: p50 {s['p50_first_ms']:.1f} -> {s['p50_last_ms']:.1f}, p99 {s['p99_first_ms']:.1f} -> "
        f"{s['p99_last_ms']:.1f}, p99 trend {s['p99_slope_ms_per_min']:+.2f} ms/min "
        f"({lat_growth:+.1f} ms over the steady part)"
    )
    # Growth = both the fitted trend and the last-vs-first medians exceed the tolerance (one noisy sample
    # cannot decide it either way).
    grew = min(rss_growth, s["rss_last_mb"] - s["rss_first_mb"]) > args.growth_tolerance_mb
    print("memory:", "GROWTH" if grew else "no growth", f"(tolerance {args.growth_tolerance_mb:g} MiB)")
    print(f"csv: {args.csv}")
    return 1 if grew or s["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
