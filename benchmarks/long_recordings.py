"""Long recordings through a real server process: wall time, x real time, peak RSS, mean batch size, and
short requests' latency while a long recording runs (issue 13).

For each duration a fresh ``python -m emotion2vec_serving.server`` serves the model (``--server-args``
added). The recording is generated speech (tests/support/longform.py: espeak-ng sentences with
pauses). It is sent as a 16 kHz WAV when that fits the 32 MiB message limit, else as Opus at 24 kbit/s
(a 2-hour recording is ~22 MB). Measured per run:

- wall time of the Recognize call and audio seconds per wall second (x real time);
- peak RSS of the server process (``VmHWM`` from /proc) before the call (model loaded, one short call
  served) and after it: the difference is what the long recording cost;
- mean batch size over the call (``emotion_batch_size`` sum/count deltas from /metrics) and segments;
- with ``--short-clients N``: N closed-loop clients send a 1.5 s clip during the long call; their latency
  (p50/p95/max) next to the same clients' latency with no long call running.

Run (by hand; numbers go to benchmarks/results/long_recordings/):

    .venv/bin/python -m benchmarks.long_recordings --model .cache/bench/large_fp32 --durations 600 \\
        --short-clients 2 --out benchmarks/results/long_recordings/large_10min
    .venv/bin/python -m benchmarks.long_recordings --model demo --durations 600,3600,7200 \\
        --short-clients 2 --out benchmarks/results/long_recordings/tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from emotion2vec_serving.server.process import ServerProcess
from tests.support.longform import recording, speech_clip, wav_bytes
from tests.support.metrics import metric_value

MiB = 1 << 20


def vm_hwm_bytes(pid: int) -> int:
    """Peak resident set size of a process (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


def load_average() -> float:
    return os.getloadavg()[0]


def opus_bytes(wav: bytes, bitrate: str = "24k") -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.opus"
        src.write_bytes(wav)
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(src),
                        "-c:a", "libopus", "-b:a", bitrate, str(dst)], check=True)
        return dst.read_bytes()


def recognize(stub: Any, data: bytes, timeout: float) -> emotion_pb2.RecognizeResponse:
    request = emotion_pb2.RecognizeRequest(audio=emotion_pb2.Audio(encoded=data))
    response: emotion_pb2.RecognizeResponse = stub.Recognize(request, timeout=timeout)
    return response


def short_latencies(target: str, clip: bytes, clients: int, stop: threading.Event,
                    max_calls: int | None = None) -> list[float]:
    """Closed-loop clients sending ``clip`` until ``stop`` (or ``max_calls`` each); latencies in seconds."""
    out: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
            n = 0
            while not stop.is_set() and (max_calls is None or n < max_calls):
                t0 = time.monotonic()
                recognize(stub, clip, 120.0)
                with lock:
                    out.append(time.monotonic() - t0)
                n += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"n": len(values), "p50_s": statistics.median(ordered),
            "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max_s": ordered[-1]}


def run_one(model: str, duration_s: float, server_args: list[str], short_clients: int) -> dict[str, Any]:
    rec = recording(duration_s)
    wav = rec.wav()
    data, fmt = (wav, "wav") if len(wav) < 32 * MiB else (opus_bytes(wav), "opus 24 kbit/s")
    del wav
    clip = wav_bytes(speech_clip("Why would you do that to me?"))
    with ServerProcess(model, ["--no-warmup", *server_args], startup_timeout_s=600) as srv:
        pid = srv.pid
        with grpc.insecure_channel(srv.target, options=[("grpc.max_send_message_length", 64 * MiB),
                                                        ("grpc.max_receive_message_length", 64 * MiB)]) as ch:
            stub = emotion_pb2_grpc.EmotionRecognizerStub(ch)
            recognize(stub, clip, 120.0)  # load, first run
            alone: list[float] = []
            if short_clients:
                alone = short_latencies(srv.target, clip, short_clients, threading.Event(), max_calls=5)
            rss_before = vm_hwm_bytes(pid)
            before = srv.scrape()
            load_before = load_average()
            stop = threading.Event()
            during: list[float] = []
            shorts: threading.Thread | None = None
            if short_clients:
                shorts = threading.Thread(
                    target=lambda: during.extend(short_latencies(srv.target, clip, short_clients, stop))
                )
                shorts.start()
            t0 = time.monotonic()
            response = recognize(stub, data, timeout=max(600.0, 10 * duration_s))
            wall = time.monotonic() - t0
            stop.set()
            if shorts is not None:
                shorts.join()
            after = srv.scrape()
            rss_after = vm_hwm_bytes(pid)

    def delta(name: str) -> float:
        return metric_value(after, name) - metric_value(before, name)

    batches = delta("emotion_batch_size_count")
    return {
        "duration_s": duration_s, "format": fmt, "bytes": len(data), "segments": len(response.segments),
        "voiced_s": response.voiced_s, "wall_s": wall, "x_real_time": duration_s / wall,
        "peak_rss_before_mb": rss_before / MiB, "peak_rss_after_mb": rss_after / MiB,
        "peak_rss_added_mb": (rss_after - rss_before) / MiB,
        "mean_batch_size": delta("emotion_batch_size_sum") / batches if batches else 0.0,
        "batches": batches, "load_1min_before": load_before, "load_1min_after": load_average(),
        "short_alone": summary(alone), "short_during": summary(during),
        "label": response.utterance.label,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model repository (or 'demo')")
    parser.add_argument("--durations", default="600", help="recording lengths in seconds, comma-separated")
    parser.add_argument("--server-args", default="", help="extra server flags (one string)")
    parser.add_argument("--short-clients", type=int, default=0, help="closed-loop short-clip clients")
    parser.add_argument("--out", required=True, help="folder for results.json and report.md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for d in (float(x) for x in args.durations.split(",") if x.strip()):
        print(f"== {d:.0f} s recording (load {load_average():.2f})", flush=True)
        row = run_one(args.model, d, args.server_args.split(), args.short_clients)
        print(json.dumps(row), flush=True)
        runs.append(row)
        (out / "results.json").write_text(json.dumps({
            "model": args.model, "server_args": args.server_args, "short_clients": args.short_clients,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(), "runs": runs,
        }, indent=2) + "\n")
    lines = [f"# Long recordings: `{args.model}` {args.server_args}".rstrip(), "",
             "| audio | sent as | segments | wall | × real time | mean batch "
             "| peak RSS before → after (added) | short p50/p95 alone | short p50/p95 during | load 1 min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        alone, during = r["short_alone"], r["short_during"]

        def pp(s: dict[str, float]) -> str:
            return f"{s['p50_s']:.2f} / {s['p95_s']:.2f} s (n={s['n']})" if s else "-"

        lines.append(
            f"| {r['duration_s'] / 60:.0f} min | {r['format']}, {r['bytes'] / MiB:.1f} MiB | {r['segments']} "
            f"| {r['wall_s']:.1f} s | {r['x_real_time']:.1f} | {r['mean_batch_size']:.2f} "
            f"| {r['peak_rss_before_mb']:.0f} → {r['peak_rss_after_mb']:.0f} MB "
            f"(+{r['peak_rss_added_mb']:.0f}) "
            f"| {pp(alone)} | {pp(during)} | {r['load_1min_before']:.1f}–{r['load_1min_after']:.1f} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
