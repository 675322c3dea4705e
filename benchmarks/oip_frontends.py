"""Front-end cost: the same work through emotion.v1 gRPC, Open Inference Protocol gRPC and OIP REST.

1. The null model (benchmarks/suite/null_model.py: the model contract with almost no compute) in closed loop:
   requests per second and latency of each front end, so the difference is the protocol's own cost
   (parsing, tensors, JSON/binary framing) on top of the shared core, batcher and runner.
2. A real model (the large checkpoint's fp32 repository, when given) on the same stream of clips through
   emotion.v1 and OIP gRPC: audio-seconds per second, expected equal within noise.

Each client sends float32 16 kHz samples (emotion.v1 raw f32le PCM; OIP ``WAVEFORM`` as raw tensor contents;
REST with the binary tensor extension), one clip per request, from one process with ``--concurrency``
calls in flight. The 1-minute load average is recorded before every row (the machine may be shared)::

    python -m benchmarks.oip_frontends --out benchmarks/results/oip --rounds 3 \\
        [--large-repo .cache/bench/large_fp32 --large-mix fixed:3.0] [--run-s 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import load_average, make_clips
from benchmarks.suite.null_model import build_null_model
from benchmarks.suite.server_process import ServerProcess
from emotion2vec_serving.modelrepo import load_manifest

Call = Callable[[int], Awaitable[None]]


async def _closed_loop(call: Call, n_clips: int, concurrency: int, duration_s: float,
                       audio_s: Sequence[float]) -> dict[str, Any]:
    latencies: list[float] = []
    audio_done = 0.0
    errors = 0
    start = time.monotonic()
    stop_at = start + duration_s

    async def client(c: int) -> None:
        nonlocal audio_done, errors
        i = c
        while time.monotonic() < stop_at:
            k = i % n_clips
            t0 = time.monotonic()
            try:
                await call(k)
            except Exception:
                errors += 1
            else:
                latencies.append(time.monotonic() - t0)
                audio_done += audio_s[k]
            i += concurrency

    await asyncio.gather(*(client(c) for c in range(concurrency)))
    wall = time.monotonic() - start
    lat = np.array(latencies) * 1000.0 if latencies else np.array([float("nan")])
    return {
        "ok": len(latencies), "errors": errors, "wall_s": round(wall, 2),
        "req_per_s": round(len(latencies) / wall, 1), "audio_s_per_s": round(audio_done / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }  # fmt: skip


def _v1_client(target: str, clips: Sequence[np.ndarray]) -> tuple[Any, Call]:
    import grpc
    from emotion.v1 import emotion_pb2, emotion_pb2_grpc

    channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                         ("grpc.max_send_message_length", 64 << 20)])
    stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
    requests = [emotion_pb2.RecognizeRequest(audio=emotion_pb2.Audio(raw=emotion_pb2.RawAudio(
        data=c.astype("<f4").tobytes(), encoding=emotion_pb2.PCM_ENCODING_F32LE, sample_rate_hz=16000,
        channels=1))) for c in clips]

    async def call(k: int) -> None:
        await stub.Recognize(requests[k], timeout=120)

    return channel, call


def _oip_grpc_client(target: str, model: str, clips: Sequence[np.ndarray]) -> tuple[Any, Call]:
    import grpc
    from emotion.oip import grpc_service_pb2 as pb
    from emotion.oip import grpc_service_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                         ("grpc.max_send_message_length", 64 << 20)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    requests = []
    for c in clips:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, len(c)])
        request.outputs.add(name="PROBS")
        request.outputs.add(name="LABEL")
        request.raw_input_contents.append(c.astype("<f4").tobytes())
        requests.append(request)

    async def call(k: int) -> None:
        await stub.ModelInfer(requests[k], timeout=120)

    return channel, call


def _oip_rest_client(base_url: str, model: str, clips: Sequence[np.ndarray],
                     concurrency: int) -> tuple[Any, Call]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                    timeout=aiohttp.ClientTimeout(total=120))
    bodies = []
    for c in clips:
        raw = c.astype("<f4").tobytes()
        header = json.dumps({
            "inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": [1, len(c)],
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "PROBS", "parameters": {"binary_data": True}}, {"name": "LABEL"}],
        }).encode()
        bodies.append((header + raw, {"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"}))
    url = f"{base_url}/v2/models/{model}/infer"

    async def call(k: int) -> None:
        body, headers = bodies[k]
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

    return session, call


async def _run_front_end(kind: str, srv: ServerProcess, model: str, clips: Sequence[np.ndarray],
                         concurrency: int, duration_s: float) -> dict[str, Any]:
    if kind == "emotion.v1 gRPC":
        handle, call = _v1_client(srv.target, clips)
    elif kind == "OIP gRPC":
        handle, call = _oip_grpc_client(srv.target, model, clips)
    else:
        handle, call = _oip_rest_client(srv.http_url, model, clips, concurrency)
    audio_s = [len(c) / 16000 for c in clips]
    try:
        for k in range(min(len(clips), concurrency)):  # connect and warm the path
            await call(k)
        row = await _closed_loop(call, len(clips), concurrency, duration_s, audio_s)
    finally:
        await handle.close()
    return row


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| front end | load 1m | clips | concurrency | ok | errors | req/s | audio-s/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['front_end']} | {r['load_1m']:.2f} | {r['clips']} | {r['concurrency']} | "
                     f"{r['ok']} | {r['errors']} | {r['req_per_s']} | {r['audio_s_per_s']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} |")
    return lines


def _section(title: str, model_repo: Path, model: str, clips: Sequence[np.ndarray],
             extra_args: Sequence[str], kinds: Sequence[str], concurrency: int,
             run_s: float, rounds: int = 1) -> list[dict[str, Any]]:
    """Each front end for ``run_s``, in ``rounds`` alternating rounds (A B A B ...: on a shared machine both
    see the same load on average)."""
    rows = []
    with ServerProcess(model_repo, ["--no-warmup", *extra_args]) as srv:
        for r in range(rounds):
            for kind in kinds:
                load = round(load_average()[0], 2)
                row = asyncio.run(_run_front_end(kind, srv, model, clips, concurrency, run_s))
                row.update(section=title, front_end=kind if rounds == 1 else f"{kind} (round {r + 1})",
                           kind=kind, load_1m=load, clips=len(clips), concurrency=concurrency)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _totals(rows: list[dict[str, Any]]) -> list[str]:
    """Per front end over its rounds: calls, audio-s/s and req/s over the summed wall time."""
    lines = ["| front end | rounds | ok | errors | req/s | audio-s/s |", "|---|---|---|---|---|---|"]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        wall = sum(r["wall_s"] for r in mine)
        audio = sum(r["audio_s_per_s"] * r["wall_s"] for r in mine)
        ok = sum(r["ok"] for r in mine)
        lines.append(f"| {kind} | {len(mine)} | {ok} | {sum(r['errors'] for r in mine)} | "
                     f"{ok / wall:.2f} | {audio / wall:.2f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/oip")
    parser.add_argument("--run-s", type=float, default=10.0, help="seconds per null-model row")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (null model)")
    parser.add_argument("--large-repo", default="", help="a real model repository (manifest.json) for part 2")
    parser.add_argument("--large-run-s", type=float, default=30.0)
    parser.add_argument("--large-concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per front end (A B A B)")
    parser.add_argument("--large-mix", default="realistic", help="clip lengths (loadgen mixes)")
    parser.add_argument("--skip-null", action="store_true", help="only the real-model part")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = tuple(round(x, 2) for x in load_average())
    rows: list[dict[str, Any]] = []
    if not args.skip_null:
        with tempfile.TemporaryDirectory(prefix="null-model-") as tmp:
            null_repo = build_null_model(tmp)
            null_name = load_manifest(null_repo).model_name
            short = make_clips("fixed:1.0", 16, seed=0)
            rows += _section("null model", null_repo, null_name, short, [],
                             ("emotion.v1 gRPC", "OIP gRPC", "OIP REST"), args.concurrency, args.run_s,
                             rounds=args.rounds)
    if args.large_repo:
        repo = Path(args.large_repo)
        name = load_manifest(repo).model_name
        clips = make_clips(args.large_mix, 12, seed=0)
        rows += _section("large model", repo, name, clips, ["--max-batch-size", "4"],
                         ("emotion.v1 gRPC", "OIP gRPC"), args.large_concurrency, args.large_run_s,
                         rounds=args.rounds)
    ended = tuple(round(x, 2) for x in load_average())
    command = "python -m benchmarks.oip_frontends " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {platform.platform()}"
    (out / "results.json").write_text(json.dumps({"command": command, "machine": machine,
                                                  "load_start": started, "load_end": ended, "rows": rows},
                                                 indent=2) + "\n")
    report = [
        "# Front-end cost: emotion.v1 gRPC vs Open Inference Protocol gRPC and REST", "",
        f"- command: `{command}`", f"- machine: {machine}",
        f"- load average at start {started}, at end {ended} (each row has the 1-minute load before it; "
        "the machine was shared with other work)", "",
    ]
    for title in dict.fromkeys(r["section"] for r in rows):
        part = [r for r in rows if r["section"] == title]
        report += [f"## {title}", "", *_table(part), ""]
        if len(part) > len({r["kind"] for r in part}):
            report += ["Totals over the rounds:", "", *_totals(part), ""]
    (out / "report.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
