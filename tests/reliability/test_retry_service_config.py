"""The published gRPC service config (deploy/grpc/service_config.json): with it, a plain grpcio channel and no
retry code of its own gets a call the real server shed (RESOURCE_EXHAUSTED, queue full) retried and answered.
The attempts are counted by the server's own metrics. This project's clients use the same config by default.

The server is the real in-process server on port 0 with the real tiny model, its runs held at a gate
(tests/support/faults.py) so the one-request queue is provably full when the call arrives.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from emotion.v1 import emotion_pb2_grpc

from emotion2vec_serving.clients import NO_RETRY, AsyncEmotionClient, Overloaded
from emotion2vec_serving.clients.channel import published_service_config
from tests.support.calls import raw_request, tone
from tests.support.faults import FaultyFactory
from tests.support.polling import wait_until_async
from tests.support.servers import Running, StartServer

SERVICE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "grpc" / "service_config.json"


def _shed(running: Running) -> float:
    return running.metric("emotion_rejections_total", reason="queue_full")


async def _with_full_queue(running: Running, factory: FaultyFactory, gate: threading.Event,
                           call: Callable[[], Awaitable[Any]]) -> Any:
    """Fill the server (one call running at the gate, one queued), start ``call``; once the server has shed
    it at least once, open the gate. Returns the call's outcome (a result or the exception)."""
    before = len(factory.entered)
    batcher = running.server.batcher
    assert batcher is not None

    def hold(seed: int) -> asyncio.Future[Any]:
        return asyncio.ensure_future(running.stub.Recognize(raw_request(tone(0.3, seed=seed)), timeout=30))

    # One after the other: sent together, the second could find the first still queued (queue full).
    held = [hold(0)]
    await wait_until_async(lambda: len(factory.entered) == before + 1, interval_s=0.005,
                           message="the first call reached the model")
    held.append(hold(1))
    await wait_until_async(lambda: batcher.queued_requests == 1, interval_s=0.005,
                           message="the second call is queued")
    shed_before = _shed(running)
    outcome = asyncio.ensure_future(call())
    await wait_until_async(lambda: _shed(running) > shed_before or outcome.done(), interval_s=0.005,
                           message="the call was shed")
    gate.set()
    try:
        result = await outcome
    except Exception as exc:  # the outcome under test may be an error
        result = exc
    await asyncio.gather(*held)
    gate.clear()
    return result


@pytest.fixture
async def held_server(start_server: StartServer) -> tuple[Running, FaultyFactory, threading.Event]:
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running = await start_server(session_factory=factory, max_batch_size=1, max_queue_requests=1,
                                 adaptive_batching=False)
    return running, factory, gate


def test_published_file_is_the_clients_config() -> None:
    assert SERVICE_CONFIG.read_text(encoding="utf-8") == published_service_config()
    policy = json.loads(SERVICE_CONFIG.read_text(encoding="utf-8"))["methodConfig"][0]["retryPolicy"]
    assert set(policy["retryableStatusCodes"]) == {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert 2 <= policy["maxAttempts"] <= 5


async def test_a_plain_channel_with_the_service_config_retries_a_shed_call(
        held_server: tuple[Running, FaultyFactory, threading.Event]) -> None:
    running, factory, gate = held_server
    request = raw_request(tone(0.5, seed=7))

    # Without the service config the shed call fails: the setup really sheds it.
    async with grpc.aio.insecure_channel(running.address) as bare:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(bare)
        refused = await _with_full_queue(running, factory, gate, lambda: stub.Recognize(request, timeout=10))
    assert isinstance(refused, grpc.aio.AioRpcError), refused
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _shed(running) == 1

    # With it, gRPC itself retries (no retry code here) and the call is answered.
    config = SERVICE_CONFIG.read_text(encoding="utf-8")
    options = [("grpc.service_config", config), ("grpc.enable_retries", 1)]
    ok_before = running.metric("emotion_requests_total", rpc="Recognize", code="OK")
    async with grpc.aio.insecure_channel(running.address, options=options) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        answered = await _with_full_queue(running, factory, gate, lambda: stub.Recognize(request, timeout=10))
    assert not isinstance(answered, Exception), answered
    assert answered.utterance.label
    attempts_shed = _shed(running) - 1
    assert 1 <= attempts_shed <= 3, attempts_shed  # maxAttempts 4: at most 3 refusals before the answer
    # Three answered calls: the two held ones and the retried one (each attempt counted once).
    assert running.metric("emotion_requests_total", rpc="Recognize", code="OK") == ok_before + 3


async def test_the_clients_default_channel_retries_and_an_explicit_policy_replaces_it(
        held_server: tuple[Running, FaultyFactory, threading.Event]) -> None:
    running, factory, gate = held_server
    audio = tone(0.5, seed=8)
    async with AsyncEmotionClient(running.address) as client:
        assert client.settings.grpc_retry is not None
        answered = await _with_full_queue(running, factory, gate,
                                          lambda: client.recognize(audio, sample_rate=16000))
    assert not isinstance(answered, Exception), answered
    assert _shed(running) >= 1
    # An explicit policy drives the client's own loop; the channel then retries nothing by itself.
    shed = _shed(running)
    async with AsyncEmotionClient(running.address, retry=NO_RETRY) as client:
        assert client.settings.grpc_retry is None
        refused = await _with_full_queue(running, factory, gate,
                                         lambda: client.recognize(audio, sample_rate=16000))
    assert isinstance(refused, Overloaded), refused
    assert _shed(running) == shed + 1
