"""Probes answer whatever the load (issue 14): the gRPC concurrency cap leaves health checks (and the Open
Inference Protocol's live/ready probes) out, yet still refuses calls beyond it before their handlers run.

Against the real in-process server on port 0 with the real tiny model, slowed or held at a gate by the
session wrappers of tests/support/faults.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from emotion.oip import grpc_service_pb2 as oip_pb
from emotion.oip import grpc_service_pb2_grpc as oip_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emotion2vec_serving.server.grpc.health import SERVICE_NAME
from tests.support.calls import raw_request, tone
from tests.support.faults import FaultyFactory
from tests.support.polling import wait_until_async
from tests.support.servers import Running, StartServer

CAP = 4
SERVING = health_pb2.HealthCheckResponse.SERVING


async def _outcome(call: Any) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


async def _check(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 3.0) -> int:
    """One probe as the kubelet sends it (3 s timeout); the status, or raises the RPC error."""
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return int(response.status)


async def test_health_answers_with_the_rpc_cap_reached(start_server: StartServer) -> None:
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running: Running = await start_server(session_factory=factory, max_concurrent_rpcs=CAP, max_batch_size=1)
    slow = [asyncio.ensure_future(_outcome(running.stub.Recognize(raw_request(tone(0.3, seed=i)),
                                                                  timeout=30)))
            for i in range(CAP)]
    try:
        await wait_until_async(lambda: running.server.admission is not None
                               and running.server.admission.inflight == CAP, message="4 calls in progress")
        # The cap is reached: one more call is refused before its handler runs (never reaching the model) ...
        entered = len(factory.entered)
        refused = await _outcome(running.stub.Recognize(raw_request(tone(0.3)), timeout=5))
        assert refused == "RESOURCE_EXHAUSTED"
        assert running.metric("emotion_rejections_total", reason="rpc_limit") == 1
        # ... but every probe answers, on the busy channel and on a new connection (as the kubelet's).
        assert await _check(running.channel) == SERVING
        assert await _check(running.channel, SERVICE_NAME) == SERVING
        async with grpc.aio.insecure_channel(running.address) as fresh:
            assert await _check(fresh) == SERVING
            oip = oip_grpc.GRPCInferenceServiceStub(fresh)
            assert (await oip.ServerLive(oip_pb.ServerLiveRequest(), timeout=3)).live
            assert (await oip.ServerReady(oip_pb.ServerReadyRequest(), timeout=3)).ready
        assert len(factory.entered) == entered
    finally:
        gate.set()
    assert await asyncio.gather(*slow) == ["OK"] * CAP
    # The cap counts calls in progress, not calls ever made: all released.
    admission = running.server.admission
    assert admission is not None
    await wait_until_async(lambda: admission.inflight == 0, message="the slots released")
    assert await _outcome(running.stub.Recognize(raw_request(tone(0.3)), timeout=10)) == "OK"


async def test_liveness_never_fails_under_ten_times_overload(start_server: StartServer) -> None:
    batch_s = 0.05

    def sleep(_feeds: dict[str, Any]) -> None:
        time.sleep(batch_s)

    # The queue holds more than the cap lets in, so the RPC cap, not a full queue, is what sheds (on a fast
    # machine a queue smaller than the cap would refuse first and the cap would never be reached).
    running: Running = await start_server(session_factory=FaultyFactory(fault=sleep), max_concurrent_rpcs=CAP,
                                          max_batch_size=1, max_queue_requests=2 * CAP)
    capacity_rps = 1 / batch_s
    rate = 10 * capacity_rps  # 200 calls/s offered, 20/s served
    request = raw_request(tone(0.3))
    stop = asyncio.Event()
    probes: list[tuple[str, float]] = []

    async def kubelet() -> None:
        """Liveness and readiness every 50 ms on fresh connections, each with the probe's 3 s timeout."""
        while not stop.is_set():
            async with grpc.aio.insecure_channel(running.address) as channel:
                for service in ("", SERVICE_NAME):
                    started = time.monotonic()
                    try:
                        status = "SERVING" if await _check(channel, service) == SERVING else "NOT_SERVING"
                    except grpc.aio.AioRpcError as exc:
                        status = exc.code().name
                    probes.append((status, time.monotonic() - started))
            await asyncio.sleep(0.05)

    prober = asyncio.ensure_future(kubelet())
    calls = []
    started = time.monotonic()
    for i in range(int(rate * 2.0)):  # 2 s of open-loop arrivals
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        calls.append(asyncio.ensure_future(_outcome(running.stub.Recognize(request, timeout=2))))
    outcomes = await asyncio.gather(*calls)
    stop.set()
    await prober
    assert outcomes.count("RESOURCE_EXHAUSTED") >= len(outcomes) / 2, "not overloaded"
    assert "OK" in outcomes
    assert len(probes) >= 10, probes
    assert {status for status, _ in probes} == {"SERVING"}, probes
    assert max(seconds for _, seconds in probes) < 1.0, probes
    assert running.metric("emotion_rejections_total", reason="rpc_limit") >= 1


async def test_refused_tokens_never_hold_a_slot(start_server: StartServer, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls refused for a missing token pass through the cap's count too, and give their slot back."""
    monkeypatch.delenv("EMOTION_AUTH_TOKENS", raising=False)
    token = "health-under-load-token-0123456789"
    tokens = tmp_path / "tokens"
    tokens.write_text(token + "\n", encoding="utf-8")
    running: Running = await start_server(max_concurrent_rpcs=2, auth_token_file=str(tokens))
    for _ in range(5):
        assert await _outcome(running.stub.Recognize(raw_request(tone(0.3)), timeout=5)) == "UNAUTHENTICATED"
    admission = running.server.admission
    assert admission is not None
    await wait_until_async(lambda: admission.inflight == 0, message="refused calls released their slots")
    metadata = (("authorization", f"Bearer {token}"),)
    call = running.stub.Recognize(raw_request(tone(0.3)), timeout=10, metadata=metadata)
    assert await _outcome(call) == "OK"
    assert await _check(running.channel) == SERVING  # health needs no token and no slot
