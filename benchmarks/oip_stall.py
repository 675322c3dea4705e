"""How long one hostile Open Inference Protocol request stalls the server (issue 22, defect 1).

Starts the real server (``python -m emotion2vec_serving.server``), probes its health from a thread (HTTP
``/v2/health/ready`` and gRPC ``grpc.health.v1`` every 10 ms, each on its own connection kept open) and
sends, one at a time, the requests of the issue: REST AUDIO BYTES ``[40000]`` of empty items, REST WAVEFORM
``[100000, 1]`` as JSON, gRPC ModelInfer AUDIO ``[40000]``, and shapes whose product overflows int64.
Prints, for each, the answer's status and the slowest probe while it ran, and the server's RSS after it::

    python -m benchmarks.oip_stall --model demo [--out benchmarks/results/oip_stall/after.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from emotion2vec_serving.server.process import ServerProcess

BIG_ITEMS = 40_000
BIG_ROWS = 100_000


class Probes:
    """Health probes every ``interval_s`` from a thread: each latency (seconds) with its start time."""

    def __init__(self, server: ServerProcess, interval_s: float = 0.01) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self._server = server
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.samples: list[tuple[float, float, str]] = []  # (start, latency, which)
        self.failures: list[str] = []
        self._channel = grpc.insecure_channel(server.target)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._request = health_pb2.HealthCheckRequest()
        self._thread = threading.Thread(target=self._run, daemon=True, name="probes")

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self._server.http_port or 0, timeout=10)
        while not self._stop.is_set():
            for which in ("http", "grpc"):
                t0 = time.monotonic()
                try:
                    if which == "http":
                        conn.request("GET", "/v2/health/ready")
                        response = conn.getresponse()
                        response.read()
                        ok = response.status == 200
                    else:
                        ok = self._health.Check(self._request, timeout=10).status == 1
                except Exception as exc:  # a probe that fails is a result too
                    self.failures.append(f"{which}: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self._server.http_port or 0, timeout=10)
                    ok = False
                self.samples.append((t0, time.monotonic() - t0, which))
                if not ok:
                    self.failures.append(f"{which}: not ready")
            self._stop.wait(self._interval_s)
        conn.close()

    def start(self) -> Probes:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        self._channel.close()

    def completed_after(self, t: float) -> bool:
        """Whether a probe that started at or after ``t`` has finished (so every probe overlapping a
        request that ended at ``t`` is in ``samples``)."""
        return any(start >= t for start, _, _ in list(self.samples)[-4:])

    def worst_between(self, t0: float, t1: float) -> float:
        """The slowest probe that started or was running in [t0, t1] (seconds)."""
        worst = [lat for start, lat, _ in list(self.samples) if start <= t1 and start + lat >= t0]
        return max(worst, default=0.0)


@contextmanager
def probing(server: ServerProcess) -> Iterator[Probes]:
    probes = Probes(server).start()
    try:
        yield probes
    finally:
        probes.stop()


# --------------------------------------------------------------------------------------------- requests


def rest_infer(server: ServerProcess, model: str, body: bytes,
               headers: dict[str, str] | None = None) -> tuple[int, str]:
    """POST ``body`` to /v2/models/<model>/infer: (status, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port or 0, timeout=120)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", errors="replace")
    finally:
        conn.close()


def rest_audio_items(n: int = BIG_ITEMS) -> bytes:
    """AUDIO BYTES [n], every item empty (about 4 bytes of JSON each)."""
    doc = {"inputs": [{"name": "AUDIO", "datatype": "BYTES", "shape": [n], "data": [""] * n}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def rest_waveform_rows(n: int = BIG_ROWS) -> bytes:
    """WAVEFORM FP32 [n, 1] as nested JSON (about 5 bytes each)."""
    doc = {"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": [n, 1], "data": [[0.0]] * n}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def rest_shape(shape: Sequence[int]) -> bytes:
    doc = {"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": list(shape), "data": [0.0]}]}
    return json.dumps(doc).encode()


def grpc_infer(server: ServerProcess, model: str, request_of: Callable[[Any], Any]) -> tuple[str, str]:
    """One ModelInfer built by ``request_of(pb)``: (status code name, details)."""
    from emotion.oip import grpc_service_pb2 as pb
    from emotion.oip import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        try:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request_of(pb), timeout=120)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
    return "OK", ""


def grpc_audio_items(model: str, n: int = BIG_ITEMS) -> Callable[[Any], Any]:
    def build(pb: Any) -> Any:
        request = pb.ModelInferRequest(model_name=model)
        t = request.inputs.add(name="AUDIO", datatype="BYTES", shape=[n])
        t.contents.bytes_contents.extend([b""] * n)
        return request
    return build


def grpc_shape(model: str, shape: Sequence[int]) -> Callable[[Any], Any]:
    def build(pb: Any) -> Any:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="WAVEFORM", datatype="FP32", shape=list(shape))
        request.raw_input_contents.append(b"\0\0\0\0")
        return request
    return build


def cases(server: ServerProcess, model: str) -> list[tuple[str, Callable[[], tuple[Any, str]]]]:
    """(name, send) for every hostile request of the issue."""
    out: list[tuple[str, Callable[[], tuple[Any, str]]]] = [
        (f"rest AUDIO BYTES [{BIG_ITEMS}] empty", lambda: rest_infer(server, model, rest_audio_items())),
        (f"rest WAVEFORM [{BIG_ROWS},1] json", lambda: rest_infer(server, model, rest_waveform_rows())),
        (f"grpc AUDIO BYTES [{BIG_ITEMS}] empty", lambda: grpc_infer(server, model, grpc_audio_items(model))),
    ]
    for shape in ([4294967296, 4294967296], [2**62 + 1, 4], [10**30, 1]):
        out.append((f"rest shape {shape}", lambda s=shape: rest_infer(server, model, rest_shape(s))))
        if max(shape) < 2**63:  # the proto's dims are int64
            out.append((f"grpc shape {shape}",
                        lambda s=shape: grpc_infer(server, model, grpc_shape(model, s))))
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    out.append(("rest json 5000 deep", lambda: rest_infer(server, model, deep)))
    return out


def measure(server: ServerProcess, model: str, repeats: int = 1) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with probing(server) as probes:
        time.sleep(0.5)
        idle = probes.worst_between(0.0, time.monotonic())
        rows.append({"case": "idle", "status": "", "worst_probe_ms": round(1000 * idle, 1),
                     "rss_mb": round((server.rss_bytes() or 0) / 2**20, 1)})
        for name, send in cases(server, model):
            for _ in range(repeats):
                t0 = time.monotonic()
                status, text = send()
                t1 = time.monotonic()
                while not probes.completed_after(t1):  # every probe sent during the request has finished
                    time.sleep(0.005)
                rows.append({"case": name, "status": status, "message": text[:160],
                             "request_s": round(t1 - t0, 3),
                             "worst_probe_ms": round(1000 * probes.worst_between(t0, t1), 1),
                             "rss_mb": round((server.rss_bytes() or 0) / 2**20, 1)})
        rows.append({"case": "probe failures", "status": len(probes.failures),
                     "message": "; ".join(probes.failures[:3])})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="what emotion-server --model accepts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    flags = ["--no-warmup", "--intra-op-threads", "1", "--log-level", "WARNING"]
    with ServerProcess(args.model, flags, startup_timeout_s=300.0) as server:
        from emotion.oip import grpc_service_pb2 as pb
        from emotion.oip import grpc_service_pb2_grpc as pb_grpc

        with grpc.insecure_channel(server.target) as ch:
            index = pb_grpc.GRPCInferenceServiceStub(ch).RepositoryIndex(pb.RepositoryIndexRequest())
            name = index.models[0].name
        rows = measure(server, name, args.repeats)
    for row in rows:
        print(f"{row['case']:<42} {row.get('status')!s:<18} "
              f"worst probe {row.get('worst_probe_ms', '')!s:>8} ms  rss {row.get('rss_mb', '')!s:>7} MB  "
              f"{row.get('message', '')[:90]}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
