"""Drain with open health streams, calls during the drain (served until the GOAWAY, gRPC and HTTP), the RPC
concurrency bound, warm-up metrics and load-time provider fallbacks: each against a real grpc.aio server and
the real tiny ONNX model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from emotion.v1 import emotion_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.app import EmotionServer
from emotion2vec_serving.server.config import parse_settings
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, CUDA_PROVIDER
from tests.support.calls import audio_of
from tests.support.faults import FaultyFactory
from tests.support.polling import wait_until_async as until
from tests.support.servers import SERVER_SETTINGS, Running, StartServer

RATE = 16000
REPO_ROOT = Path(__file__).resolve().parents[2]


def request(seconds: float = 0.5) -> pb.RecognizeRequest:
    return pb.RecognizeRequest(audio=audio_of(int(seconds * RATE)))


async def outcome(call: grpc.aio.UnaryUnaryCall) -> tuple[str, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


async def test_calls_beyond_max_concurrent_rpcs_get_resource_exhausted(start_server: StartServer) -> None:
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running: Running = await start_server(factory, max_concurrent_rpcs=2, max_batch_size=1)
    batcher = running.server.batcher
    assert batcher is not None
    held = [asyncio.ensure_future(outcome(running.stub.Recognize(request(), timeout=30))) for _ in range(2)]
    try:
        await until(lambda: len(factory.entered) == 1 and batcher.queued_requests == 1)
        code, details = await outcome(running.stub.Recognize(request(), timeout=3))
        assert code == "RESOURCE_EXHAUSTED", (code, details)
    finally:
        gate.set()
    assert [await h for h in held] == [("OK", "")] * 2
    # The bound counts calls in progress, not calls ever made.
    assert await outcome(running.stub.Recognize(request(), timeout=10)) == ("OK", "")


async def test_drain_with_an_open_health_watch_exits_promptly_once_idle(start_server: StartServer) -> None:
    running: Running = await start_server(drain_grace_s=15.0)
    health = health_pb2_grpc.HealthStub(running.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    started = time.monotonic()
    await running.server.stop()
    took = time.monotonic() - started
    # Idle at once: only the Watch stream is left, which must not hold the exit for the 15 s grace.
    assert took < 3.0, took
    watch.cancel()


async def test_calls_during_the_drain_are_served_until_the_goaway(start_server: StartServer) -> None:
    """Issue 14: readiness turns NOT_SERVING first and the server keeps serving for the readiness delay;
    then GOAWAY: new calls cannot reach it (this channel knows no other server), and no call that reached it
    is refused or lost."""
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running: Running = await start_server(factory, drain_grace_s=15.0, drain_readiness_delay_s=1.0)
    batcher = running.server.batcher
    assert batcher is not None
    health = health_pb2_grpc.HealthStub(running.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    in_flight = asyncio.ensure_future(outcome(running.stub.Recognize(request(), timeout=30)))
    await until(lambda: len(factory.entered) == 1)
    stopping = asyncio.ensure_future(running.server.stop())
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    # Not ready, still serving: these are accepted (queued behind the gated call).
    during_delay = [asyncio.ensure_future(outcome(running.stub.Recognize(request(0.2), timeout=30)))
                    for _ in range(3)]
    await until(lambda: batcher.queued_requests == 3)
    # After the delay: GOAWAY and the listener closes (a fresh connection cannot even ask for health).
    async def refused() -> bool:
        async with grpc.aio.insecure_channel(running.address) as probe:
            try:
                await health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.UNAVAILABLE
        return False

    await until(refused, 10.0, 0.05, "the server never stopped accepting calls")
    # New calls on the old channel fail to connect: the server itself never refuses one.
    code, details = await outcome(running.stub.Recognize(request(0.2), timeout=5))
    assert code == "UNAVAILABLE" and "shutting down" not in details, (code, details)
    assert not stopping.done()
    gate.set()
    await stopping
    watch.cancel()
    assert await in_flight == ("OK", "")
    assert [await call for call in during_delay] == [("OK", "")] * 3


async def test_warmup_batches_are_not_counted_as_traffic(start_server: StartServer) -> None:
    factory = FaultyFactory()
    running: Running = await start_server(factory, warmup=True, warmup_max_s=2.0, max_batch_size=4)
    assert len(factory.batches) >= 3  # warm-up really ran the model: several lengths and a burst
    for name in ("emotion_batch_size_count", "emotion_inference_duration_seconds_count",
                 "emotion_queue_wait_seconds_count", "emotion_padded_audio_seconds_total",
                 "emotion_useful_audio_seconds_total"):
        assert running.metric(name) == 0, name
    assert await outcome(running.stub.Recognize(request(), timeout=10)) == ("OK", "")
    assert running.metric("emotion_batch_size_count") == 1
    assert running.metric("emotion_inference_duration_seconds_count") == 1
    assert running.metric("emotion_useful_audio_seconds_total") == 0.5


async def test_default_providers_count_a_load_fallback_only_when_cuda_is_missing(
    start_server: StartServer,
) -> None:
    # The default list asks for CUDA first; this onnxruntime may not even offer it (a CPU build).
    running: Running = await start_server(providers=(CUDA_PROVIDER, CPU_PROVIDER))
    info = await running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    if CUDA_PROVIDER not in ort.get_available_providers():
        assert info.execution_provider == CPU_PROVIDER
    cuda_missing = info.execution_provider != CUDA_PROVIDER
    fallbacks = running.metric("emotion_provider_fallbacks_total", from_provider=CUDA_PROVIDER,
                               to_provider=CPU_PROVIDER, reason="unavailable_at_load")
    assert fallbacks == (1 if cuda_missing else 0), (info.execution_provider, fallbacks)
    assert running.metric("emotion_execution_provider", provider=info.execution_provider) == 1


async def test_the_cpu_deployment_counts_no_provider_fallback(manifest: ModelManifest) -> None:
    overlay = (REPO_ROOT / "deploy/k8s/overlays/cpu/kustomization.yaml").read_text()
    found = re.search(r"EMOTION_PROVIDERS=(\S+)", overlay)
    assert found is not None, "the CPU overlay no longer sets EMOTION_PROVIDERS"
    providers = parse_settings([], env={"EMOTION_PROVIDERS": found.group(1)}).providers
    assert providers == (CPU_PROVIDER,)
    server = EmotionServer(dataclasses.replace(SERVER_SETTINGS, providers=providers), manifest)
    await server.start()
    try:
        sample = server.metrics.registry.get_sample_value
        assert sample("emotion_execution_provider", {"provider": CPU_PROVIDER}) == 1
        fallbacks = [s for metric in server.metrics.registry.collect()
                     if metric.name == "emotion_provider_fallbacks" for s in metric.samples
                     if s.name.endswith("_total")]
        assert fallbacks == [], fallbacks
    finally:
        await server.stop()


def _http(url: str, doc: object = None) -> tuple[int | str, object]:
    """(status, JSON body) of one HTTP call; ("refused", None) when nothing listens any more."""
    body = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except (urllib.error.URLError, ConnectionError):
        return "refused", None


async def test_the_http_front_end_drains_too(start_server: StartServer) -> None:
    """Readiness 503 from the SIGTERM on, then the listener closes; a request in progress finishes."""
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running: Running = await start_server(factory, drain_grace_s=15.0, drain_readiness_delay_s=1.0)
    loop = asyncio.get_running_loop()
    base = f"http://127.0.0.1:{running.server.http_port}"
    assert await loop.run_in_executor(None, _http, base + "/v2/health/ready") == (200, {"ready": True})
    model = running.server.manifest.model_name
    wave = np.zeros(8000, np.float32) + 0.01
    doc = {"inputs": [{"name": "WAVEFORM", "shape": [1, 8000], "datatype": "FP32", "data": wave.tolist()}]}
    in_flight = loop.run_in_executor(None, _http, f"{base}/v2/models/{model}/infer", doc)
    await until(lambda: len(factory.entered) == 1)
    stopping = asyncio.ensure_future(running.server.stop())
    await until(lambda: not running.server.health.serving)
    assert (await loop.run_in_executor(None, _http, base + "/v2/health/ready"))[0] == 503

    async def closed() -> bool:
        return (await loop.run_in_executor(None, _http, base + "/v2/health/live"))[0] == "refused"

    await until(closed, 10.0, 0.05, "the HTTP listener never closed")
    assert not in_flight.done()
    gate.set()
    status, answer = await in_flight
    assert status == 200, answer
    await stopping
