"""Requests/s of the server on the null model against a bare grpc.aio echo server, same machine, same load.

    python -m benchmarks.grpc_echo --out benchmarks/results/cpu_engines/null_vs_echo.json

The echo server implements ``EmotionRecognizer.Recognize`` with no work at all (it returns one fixed,
realistically sized response), in its own process like the real server. Both are driven by the same
closed-loop clients (``--concurrency`` over ``--processes`` client processes, short clips, raw f32 audio).
What the null-model server costs above the echo server (server CPU ms per request) is what this project
adds per request: decoding, admission, the batcher, the runner's plumbing, metrics.

``--profile-s N`` also samples the null-model server with py-spy (``pip install py-spy``; not a project
dependency) for N seconds of the measured run and adds where its CPU goes: self time per function and per
area (grpc, asyncio, this project's packages, numpy, ...), so what is left above the echo server is named.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class _Handoff:
    """The least a server that runs its model off the event loop must do per request: hand the request to a
    worker thread and get it back. One worker thread takes whatever has queued (a batch) and resolves the
    batch's futures with one ``call_soon_threadsafe``, as the server's batcher and runner do; no model, no
    decoding, no admission (``--serve-echo PORT --handoff``; ``benchmarks.lean_path``'s ``hop`` row)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[tuple[Any, asyncio.Future[None]]] = queue.SimpleQueue()
        threading.Thread(target=self._work, name="handoff", daemon=True).start()

    def submit(self, payload: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        self._jobs.put((payload, future))
        return future

    def _work(self) -> None:
        while True:
            batch = [self._jobs.get()]
            while True:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            self._loop.call_soon_threadsafe(self._done, batch)

    @staticmethod
    def _done(batch: list[tuple[Any, asyncio.Future[None]]]) -> None:
        for _, future in batch:
            if not future.done():
                future.set_result(None)


async def _serve_echo(port: int, handoff: bool = False) -> None:
    import grpc
    from emotion.v1 import emotion_pb2, emotion_pb2_grpc

    labels = ["angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown"]
    scores = [emotion_pb2.EmotionScore(index=i, label=name, score=1.0 / 9) for i, name in enumerate(labels)]
    reply = emotion_pb2.RecognizeResponse(
        utterance=emotion_pb2.UtteranceResult(label="neutral", confidence=1.0 / 9, scores=scores),
        duration_s=1.0,
    )

    hop = _Handoff(asyncio.get_running_loop()) if handoff else None

    class Echo(emotion_pb2_grpc.EmotionRecognizerServicer):  # type: ignore[misc]
        async def Recognize(self, request: Any, context: Any) -> Any:
            if hop is not None:
                await hop.submit(request.audio)
            return reply

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    emotion_pb2_grpc.add_EmotionRecognizerServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def _measure(
    target: str, pid: int, concurrency: int, processes: int, run_s: float, label: str
) -> dict[str, Any]:
    from benchmarks import loadgen

    loadgen.closed_loop_processes(target, "short", "f32", 12, 0, concurrency, 2.0, processes)  # warm
    load = loadgen.load_average()[0]
    cpu0, threads0, machine0 = loadgen.process_cpu_s(pid), loadgen.thread_cpu_s(pid), loadgen.machine_cpu_s()
    records, wall = loadgen.closed_loop_processes(
        target, "short", "f32", 12, 0, concurrency, run_s, processes
    )
    cpu = loadgen.process_cpu_s(pid) - cpu0
    machine1 = loadgen.machine_cpu_s()
    busy, total = machine1[0] - machine0[0], machine1[1] - machine0[1]
    groups = loadgen.thread_groups(pid, threads0, loadgen.thread_cpu_s(pid))
    ok = sum(1 for r in records if r.code == "OK")
    row = {
        "label": label,
        "requests_per_s": ok / wall,
        "ok": ok,
        "errors": len(records) - ok,
        "server_cpu_ms_per_req": 1e3 * cpu / ok if ok else float("nan"),
        # The same CPU by thread (loadgen.THREAD_GROUPS): whose work each request's CPU is.
        "threads_cpu_ms_per_req": {k: 1e3 * v / ok if ok else float("nan") for k, v in groups.items()},
        "loadavg_1m": round(load, 2),
        # The share of all the machine's cores busy during the run (server, clients and anything else): near
        # 1, the machine is the limit; well below, something in the server is.
        "machine_busy_share": round(busy / total, 3) if total > 0 else float("nan"),
    }
    print(json.dumps(row), flush=True)
    return row


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _area(path: str) -> str:
    """A coarse owner of a source file: this project's package, or the library it belongs to."""
    for name in ("batching", "server", "clients", "modelrepo", "export"):
        if f"emotion2vec_serving/{name}/" in path or (f"/{name}/" in path and "site-packages" not in path):
            return f"emotion2vec_serving.{name}"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)
        return "stdlib " + (rest[1].split("/", 1)[0].removesuffix(".py") if len(rest) > 1 else "")
    return "other"


#: The area of ``Handle._run``'s self time in a profile (``summarise_profile``).
GRPC_CALLBACKS = "grpc.aio callbacks (Cython, self time of asyncio's Handle._run)"


def collapsed_stacks(collapsed: str) -> Iterator[tuple[str, int]]:
    """(stack, samples) of each line of py-spy's raw (collapsed stacks) output."""
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack, int(count_text)


def summarise_profile(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self time per function and per area from py-spy's raw (collapsed stacks) output."""
    by_function: collections.Counter[str] = collections.Counter()
    by_area: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in collapsed_stacks(collapsed):
        leaf = stack.split(";")[-1]
        match = _FRAME.match(leaf)
        func, path = (match["func"], match["file"]) if match else (leaf, "")
        total += count
        where = "/".join(path.split("/")[-2:])
        by_function[f"{func} ({where})"] += count
        # grpc.aio's callbacks are Cython, invisible to py-spy: their time is the self time of the asyncio
        # handle that runs them.
        by_area[GRPC_CALLBACKS if func == "Handle._run" else _area(path)] += count

    def share(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"name": k, "self_pct": round(100 * v / total, 1)} for k, v in counter.most_common(top)]
    return {"samples": total, "by_area": share(by_area), "by_function": share(by_function)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--handoff", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--run-s", type=float, default=15.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile-s", type=float, default=0.0,
                        help="sample the null-model server with py-spy for this many seconds (0: no profile)")
    args = parser.parse_args(argv)
    if args.serve_echo:
        asyncio.run(_serve_echo(args.serve_echo, args.handoff))
        return 0

    from benchmarks.suite.null_model import build_null_model
    from benchmarks.suite.server_process import ServerProcess, free_port

    rows = []
    port = free_port()
    echo = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.grpc_echo", "--serve-echo", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        rows.append(
            _measure(
                f"127.0.0.1:{port}",
                echo.pid,
                args.concurrency,
                args.processes,
                args.run_s,
                "bare grpc.aio echo server",
            )
        )
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    repo = build_null_model(Path.home() / ".cache" / "emotion2vec-bench" / "null_model")
    profile: dict[str, Any] | None = None
    with ServerProcess(repo, ["--no-warmup"]) as srv, tempfile.TemporaryDirectory() as tmp:
        spy = None
        if args.profile_s > 0:
            exe = shutil.which("py-spy")
            if exe is None:
                raise SystemExit("--profile-s needs py-spy on PATH (pip install py-spy)")
            raw = Path(tmp) / "profile.txt"
            # Starts with the 2 s warm pass; ends inside the measured run when profile_s < run_s.
            command = [exe, "record", "--pid", str(srv.pid), "--duration", str(int(args.profile_s)),
                       "--rate", "250", "--format", "raw", "--full-filenames", "--output", str(raw),
                       "--nonblocking"]
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows.append(
            _measure(
                srv.target, srv.pid, args.concurrency, args.processes, args.run_s, "this server, null model"
            )
        )
        if spy is not None:
            spy.wait(timeout=args.profile_s + 60)
            profile = summarise_profile(raw.read_text(encoding="utf-8"))
    echo_row, null_row = rows
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m benchmarks.grpc_echo " + " ".join(argv or sys.argv[1:]),
        "rows": rows,
        "null_over_echo_rps": null_row["requests_per_s"] / echo_row["requests_per_s"],
        "added_cpu_ms_per_req": null_row["server_cpu_ms_per_req"] - echo_row["server_cpu_ms_per_req"],
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(),
    }
    if profile is not None:
        result["null_model_server_profile"] = profile
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
