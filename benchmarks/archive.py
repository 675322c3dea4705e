"""Archive mode of ``emotion-client recognize`` (issue 21): is the client ever the bottleneck, and what does
a long list cost it?

1. Throughput. A fresh server process (``--model``, default ``demo``) and N generated recordings (espeak-ng
   sentences as 16 kHz WAV, tests/support/archive.py). The server's closed-loop capacity on those recordings
   (an asyncio client keeping ``--concurrency`` Recognize calls in flight, bytes read up front) is the
   target, measured warm (after a first pass over every file) once before and once after the archive run;
   then the archive CLI (``recognize DIR --summary S.csv``, a real subprocess, same concurrency) runs over
   the same files. Reported: both in audio-s/s and the archive's ratio to the mean of the two closed-loop
   passes (issue bound: >= 0.95 on the demo model with 1,000 recordings, and on the large model with 100).
2. Memory. The CLI's peak RSS (``wait4`` rusage of the child) for M listed paths (``--from-list``; every
   path a hard link to one short WAV) against a null server: an in-process gRPC server answering every call
   with a canned response captured from the real one, so only the client's cost is measured.

Run (numbers go to benchmarks/results/archive/, command and machine in the JSON):

    python -m benchmarks.archive --quick            # 100 recordings, 10,000 listed paths
    python -m benchmarks.archive                    # 1,000 recordings, 100,000 listed paths
    python -m benchmarks.archive --model REPO --recordings 100 --listed 0   # a real model, throughput only
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from benchmarks.soak import cpu_flags
from emotion2vec_serving.clients.aio import AsyncEmotionClient
from emotion2vec_serving.server.process import ServerProcess
from tests.support.archive import write_clips

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def make_recordings(folder: Path, n: int) -> list[Path]:
    """N files: 8 distinct espeak-ng clips copied under per-hundred folders (same bytes, different paths)."""
    clips = write_clips(folder / "_src", 8, pitch=50)
    out = []
    for i in range(n):
        path = folder / f"d{i // 100:03d}" / f"rec_{i:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(clips[i % len(clips)].read_bytes())
        out.append(path)
    for clip in clips:
        clip.unlink()
    (folder / "_src").rmdir()
    return out


async def closed_loop(target: str, files: list[Path], concurrency: int) -> dict[str, float]:
    data = [p.read_bytes() for p in files]
    audio = 0.0
    queue = list(range(len(data)))
    async with AsyncEmotionClient(target, timeout_s=600) as client:
        for item in data[: 2 * concurrency]:  # warm the channel
            await client.recognize(item)

        async def worker() -> None:
            nonlocal audio
            while queue:
                i = queue.pop()
                result = await client.recognize(data[i])
                audio += result.duration_s

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - t0
    return {"audio_s": audio, "wall_s": wall, "audio_s_per_s": audio / wall}


def cli(target: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    return subprocess.Popen([sys.executable, "-m", "emotion2vec_serving.clients.cli", "--target", target,
                             "recognize", "--no-progress", *args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def archive_run(target: str, folder: Path, summary: Path, concurrency: int) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = cli(target, str(folder), "--summary", str(summary), "--concurrency", str(concurrency))
    _, err = proc.communicate()
    wall = time.monotonic() - t0
    last = err.decode().strip().splitlines()[-1]
    m = re.search(r"recordings \((\d+) ok.* ([0-9.]+) h audio in ([0-9.]+) s: ([0-9.]+) audio-s/s", last)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"archive run failed ({proc.returncode}): {err.decode()[-2000:]}")
    with open(summary, newline="") as f:
        audio_s = sum(float(row["duration_s"]) for row in csv.DictReader(f))
    run_s = float(m.group(3))
    return {"ok": int(m.group(1)), "audio_s": audio_s, "run_s": run_s, "audio_s_per_s": audio_s / run_s,
            "printed_audio_s_per_s": float(m.group(4)),
            "process_wall_s": wall, "final_line": last}  # fmt: skip


class NullServer(emotion_pb2_grpc.EmotionRecognizerServicer):
    def __init__(self, recognize: Any, info: Any) -> None:
        self.recognize, self.info = recognize, info

    def Recognize(self, request: Any, context: Any) -> Any:
        return self.recognize

    def GetModelInfo(self, request: Any, context: Any) -> Any:
        return self.info


def canned(target: str, sample: Path) -> tuple[Any, Any]:
    with grpc.insecure_channel(target) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        audio = emotion_pb2.Audio(encoded=sample.read_bytes())
        rec = stub.Recognize(emotion_pb2.RecognizeRequest(audio=audio))
        info = stub.GetModelInfo(emotion_pb2.GetModelInfoRequest())
    return rec, info


def rss_run(
    responses: tuple[Any, Any], sample: Path, folder: Path, m: int, concurrency: int
) -> dict[str, Any]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    emotion_pb2_grpc.add_EmotionRecognizerServicer_to_server(NullServer(*responses), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        links = folder / "links"
        links.mkdir()
        listing = folder / "list.txt"
        with open(listing, "w") as f:
            source = sample
            for i in range(m):
                if i % 50_000 == 0 and i:  # a file takes at most 65,000 hard links on ext4: a new copy
                    source = links / f"source{i}.wav"
                    source.write_bytes(sample.read_bytes())
                path = links / f"r{i:06d}.wav"
                os.link(source, path)
                f.write(f"{path}\n")
        t0 = time.monotonic()
        proc = cli(f"127.0.0.1:{port}", "--from-list", str(listing), "--summary", str(folder / "null.csv"),
                   "--concurrency", str(concurrency))  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        err = proc.stderr.read().decode() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"null-server run failed: {err[-2000:]}")
        with open(folder / "null.csv") as f:
            rows = sum(1 for _ in f) - 1
        return {"listed": m, "rows": rows, "peak_rss_mib": usage.ru_maxrss * 1024 / MiB, "wall_s": wall,
                "recordings_per_s": m / wall, "final_line": err.strip().splitlines()[-1]}  # fmt: skip
    finally:
        server.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--recordings", type=int, default=1000)
    ap.add_argument("--listed", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--server-args", default="", help="extra server flags, one string")
    ap.add_argument("--quick", action="store_true", help="100 recordings, 10,000 listed paths")
    ap.add_argument("--out", type=Path, help="write the results JSON here")
    args = ap.parse_args()
    if args.quick:
        args.recordings, args.listed = 100, 10_000
    results: dict[str, Any] = {
        "command": " ".join(sys.argv), "machine": platform.platform(), "cpus": os.cpu_count(),
        "cpu_flags": cpu_flags(), "load_average_1m_start": os.getloadavg()[0], "model": args.model,
        "concurrency": args.concurrency, "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        folder = Path(tmp) / "archive"
        files = make_recordings(folder, args.recordings)
        with ServerProcess(args.model, ["--no-warmup", *args.server_args.split()]) as srv:
            target = srv.target
            asyncio.run(closed_loop(target, files, args.concurrency))  # warm-up pass: every length once
            before = asyncio.run(closed_loop(target, files, args.concurrency))
            results["archive"] = archive_run(target, folder, Path(tmp) / "summary.csv", args.concurrency)
            after = asyncio.run(closed_loop(target, files, args.concurrency))
            responses = canned(target, files[0])
        mean = (before["audio_s_per_s"] + after["audio_s_per_s"]) / 2
        results["closed_loop"] = {"before": before, "after": after, "audio_s_per_s": mean}
        results["ratio"] = results["archive"]["audio_s_per_s"] / results["closed_loop"]["audio_s_per_s"]
        if args.listed:
            rss_dir = Path(tmp) / "rss"
            rss_dir.mkdir()
            results["null_server"] = rss_run(responses, files[0], rss_dir, args.listed, args.concurrency)
    results["load_average_1m_end"] = os.getloadavg()[0]
    results["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
