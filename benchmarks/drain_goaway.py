"""What plain gRPC clients see when one of two servers drains: the shutdown's GOAWAY vs the connection age's.

Each round starts two null-model servers (``benchmarks/suite/null_model.py``: the serving path with almost no
compute, so calls are short and many cross the GOAWAY), points ``--callers`` closed-loop clients at both
through one plain ``round_robin`` channel (plain stubs: no retry policy, no retry loop), sends SIGTERM to
the first once both serve, and keeps calling until it has exited and a second more. Every failed call is
counted with its status code. Two modes, alternating round by round:

- ``shutdown``: ``--max-connection-age-s 0``: the drain's GOAWAY is ``server.stop()``'s, and gRPC core cancels
  calls that cross it (grpc/grpc#41785): CANCELLED for calls the server never saw.
- ``age``: ``--max-connection-age-s 2``: the listener closes and each connection gets its connection-age
  GOAWAY while the server still serves (server/grpc/listeners.py); ``server.stop()`` comes after.

    python -m benchmarks.drain_goaway --rounds 10 --out benchmarks/results/drain
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
from emotion.v1 import emotion_pb2 as pb
from emotion.v1 import emotion_pb2_grpc

from benchmarks.suite.null_model import build_null_model
from emotion2vec_serving.server.process import ServerProcess

MODES = {"shutdown": "0", "age": "2"}


def _request() -> pb.RecognizeRequest:
    wave = (0.1 * np.sin(np.arange(8000) * 2 * np.pi * 220 / 16000)).astype("<f4")
    return pb.RecognizeRequest(audio=pb.Audio(raw=pb.RawAudio(
        data=wave.tobytes(), encoding=pb.PCM_ENCODING_F32LE, sample_rate_hz=16000, channels=1)))


async def _round(repo: Path, mode: str, callers: int) -> dict[str, Any]:
    args = ["--intra-op-threads", "1", "--no-warmup", "--drain-grace-s", "10", "--drain-readiness-delay-s",
            "1", "--max-connection-age-s", MODES[mode]]
    a = ServerProcess(repo, args, metrics=False, http=False, startup_timeout_s=60).start()
    b = ServerProcess(repo, args, metrics=False, http=False, startup_timeout_s=60).start()
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    channel = grpc.aio.insecure_channel(f"ipv4:{a.target},{b.target}",
                                        options=[("grpc.service_config", config)])
    stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
    request = _request()
    codes: dict[str, int] = {}
    stop = asyncio.Event()
    warm = asyncio.Event()  # 200 calls answered: both servers serve

    async def caller() -> None:
        while not stop.is_set():
            try:
                await stub.Recognize(request, timeout=10)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            codes[code] = codes.get(code, 0) + 1
            if sum(codes.values()) >= 200:
                warm.set()

    tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
    try:
        await asyncio.wait_for(warm.wait(), 60)
        sigterm_at = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.get_running_loop().run_in_executor(None, a.proc.wait, 60)
        drain_s = time.monotonic() - sigterm_at
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await channel.close()
        b.terminate()
        if a.proc.poll() is None:
            a.proc.kill()
    failed = sum(n for code, n in codes.items() if code != "OK")
    return {"mode": mode, "calls": sum(codes.values()), "failed": failed, "codes": codes,
            "drain_s": round(drain_s, 2), "exit_code": rc}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="null-model-") as tmp:
        repo = build_null_model(tmp)
        for i in range(args.rounds):
            for mode in (("shutdown", "age") if i % 2 == 0 else ("age", "shutdown")):
                row = await _round(repo, mode, args.callers)
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {
            "rounds": len(mine), "calls": sum(r["calls"] for r in mine),
            "failed_calls": sum(r["failed"] for r in mine),
            "rounds_with_failures": sum(r["failed"] > 0 for r in mine),
            "median_drain_s": float(np.median([r["drain_s"] for r in mine])),
        }
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_before": load_before,
            "callers": args.callers, "rounds": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds per mode")
    parser.add_argument("--callers", type=int, default=16, help="closed-loop calls in flight")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/drain"))
    args = parser.parse_args()
    result = asyncio.run(_main(args))
    result["load_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drain_goaway.json").write_text(json.dumps(result, indent=1) + "\n")
    for mode, s in result["summary"].items():
        print(f"{mode:9s} rounds {s['rounds']}, with failures {s['rounds_with_failures']}, failed calls "
              f"{s['failed_calls']} of {s['calls']}, median drain {s['median_drain_s']:.2f} s")


if __name__ == "__main__":
    main()
