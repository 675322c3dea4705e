"""Streams are bounded in time, not only in audio (issue 22, item 3), on gRPC StreamRecognize and the
WebSocket /v1/stream alike: no audio for ``--stream-idle-timeout-s`` ends a stream and frees its slot; a
stream open longer than ``--stream-max-open-s`` is ended however much audio it trickles; a WebSocket's
config must come within the idle time of its connect, however often it pings; each ending is counted in
``emotion_stream_endings_total{protocol,reason}``. Also: a WebSocket config nested 5,000 deep is a bad
config (4400), not an internal error.

Real in-process servers (tests/support/servers.py) with short limits (1 s idle) and real clients (grpc.aio,
aiohttp). Each wait is bounded by ``WAIT_S``, far above the limits it waits for, so on a server without
the limits a test fails at that bound instead of hanging. The only timing assertions are lower bounds: a
stream is never ended before its limit (a loaded machine can only make the elapsed time longer).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from emotion.v1 import emotion_pb2 as pb

from tests.support.polling import wait_until_async
from tests.support.servers import Running, StartServer

RATE = 16000
IDLE_S = 1.0
#: Bound on every wait for an ending due after at most a few seconds.
WAIT_S = 30.0
#: Audio is sent every PACE_S: well inside the idle time.
PACE_S = 0.2
TOKEN = "stream-limits-token-0123456789"


def _ws_url(running: Running) -> str:
    return f"ws://127.0.0.1:{running.server.http_port}/v1/stream"


def _tone(duration_s: float) -> np.ndarray:
    t = np.arange(int(duration_s * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)


def _s16(samples: np.ndarray) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def _grpc_config() -> pb.StreamRecognizeRequest:
    config = pb.StreamConfig(encoding=pb.PCM_ENCODING_S16LE, sample_rate_hz=RATE, channels=1)
    return pb.StreamRecognizeRequest(config=config)


def _grpc_audio(samples: np.ndarray) -> pb.StreamRecognizeRequest:
    return pb.StreamRecognizeRequest(audio=_s16(samples))


async def _config_then_wait(release: asyncio.Event) -> AsyncIterator[pb.StreamRecognizeRequest]:
    yield _grpc_config()
    await release.wait()


async def _paced(chunks: int | None, chunk_s: float) -> AsyncIterator[pb.StreamRecognizeRequest]:
    """The config, then ``chunk_s`` of audio every PACE_S (``chunks`` times, or forever), then the end."""
    yield _grpc_config()
    sent = 0
    while chunks is None or sent < chunks:
        yield _grpc_audio(_tone(chunk_s))
        sent += 1
        await asyncio.sleep(PACE_S)  # pacing the audio, as a live source does


async def _grpc_failure(running: Running, requests: AsyncIterator[pb.StreamRecognizeRequest]
                        ) -> tuple[grpc.aio.AioRpcError, float]:
    """The status that ends the stream, and the seconds from the call's start."""
    start = time.monotonic()
    call = running.stub.StreamRecognize(requests)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(_drain(call), WAIT_S)
    return info.value, time.monotonic() - start


async def _drain(call: Any) -> list[Any]:
    return [response async for response in call]


class _Ws:
    """What a WebSocket client saw: the JSON messages, the close code and reason, and when it closed."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.started_at: float | None = None  # when "started" arrived
        self.closed_at: float | None = None

    async def read_until_closed(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                message = json.loads(msg.data)
                self.messages.append(message)
                if message.get("type") == "started":
                    self.started_at = time.monotonic()
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                self.close_code, self.close_reason = int(msg.data), str(msg.extra or "")
                break
            elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                self.close_code = ws.close_code
                break
        self.closed_at = time.monotonic()

    def error(self) -> dict[str, Any]:
        errors = [m for m in self.messages if m.get("type") == "error"]
        assert len(errors) == 1, self.messages
        return errors[0]


async def _ws_config_then_wait(url: str) -> _Ws:
    seen = _Ws()
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=("emotion.v1",)) as ws:
        await ws.send_json({"encoding": "s16le", "sample_rate_hz": RATE})
        await asyncio.wait_for(seen.read_until_closed(ws), WAIT_S)
    return seen


async def _ws_paced(url: str, chunks: int | None, chunk_s: float) -> _Ws:
    """Like ``_paced`` over the WebSocket; ends with {"end": true} after ``chunks`` chunks."""
    seen = _Ws()
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=("emotion.v1",)) as ws:
        await ws.send_json({"encoding": "s16le", "sample_rate_hz": RATE})

        async def send() -> None:
            sent = 0
            while chunks is None or sent < chunks:
                await ws.send_bytes(_s16(_tone(chunk_s)))
                sent += 1
                await asyncio.sleep(PACE_S)  # pacing the audio, as a microphone does
            await ws.send_json({"end": True})

        sender = asyncio.create_task(send())
        try:
            await asyncio.wait_for(seen.read_until_closed(ws), WAIT_S)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return seen


def _endings(running: Running, protocol: str, reason: str) -> float:
    return running.metric("emotion_stream_endings_total", protocol=protocol, reason=reason)


async def test_idle_streams_end_and_free_their_slot_while_paced_audio_is_never_cut(
    start_server: StartServer,
) -> None:
    running: Running = await start_server(max_concurrent_streams=1, stream_idle_timeout_s=IDLE_S,
                                          stream_max_open_s=60.0)
    url = _ws_url(running)
    # A WebSocket that sent only its config holds the one stream slot until the idle time passes.
    idle_ws = await _ws_config_then_wait(url)
    assert idle_ws.messages[0]["type"] == "started", idle_ws.messages
    error = idle_ws.error()
    assert (error["status"], error["code"], error["reason"]) == (504, "DEADLINE_EXCEEDED", "idle_timeout")
    assert "no audio" in error["error"] and "--stream-idle-timeout-s" in error["error"], error
    assert (idle_ws.close_code, idle_ws.close_reason) == (4504, "idle_timeout")
    assert idle_ws.started_at is not None and idle_ws.closed_at is not None
    assert idle_ws.closed_at - idle_ws.started_at >= IDLE_S * 0.95  # never before the idle time

    # Its slot is free: a gRPC stream is admitted, and it too ends once idle.
    release = asyncio.Event()
    try:
        failure, elapsed = await _grpc_failure(running, _config_then_wait(release))
    finally:
        release.set()
    assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failure
    assert "no audio" in (failure.details() or ""), failure.details()
    assert elapsed >= IDLE_S * 0.95

    # Streams whose audio keeps coming outlive the idle time several times over, on both protocols.
    chunks = int(2.4 / PACE_S)  # 2.4 s of pacing: more than twice the idle time
    responses = await asyncio.wait_for(_drain(running.stub.StreamRecognize(_paced(chunks, 0.1))), WAIT_S)
    assert responses[-1].WhichOneof("message") == "summary"
    assert responses[-1].summary.duration_s == pytest.approx(chunks * 0.1, abs=1e-3)
    paced_ws = await _ws_paced(url, chunks, 0.1)
    kinds = [m["type"] for m in paced_ws.messages]
    assert kinds[0] == "started" and kinds[-1] == "summary", paced_ws.messages
    assert paced_ws.close_code == 1000

    # A WebSocket closed by its client mid-stream.
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=("emotion.v1",)) as ws:
        await ws.send_json({"encoding": "s16le", "sample_rate_hz": RATE})
        started = await asyncio.wait_for(ws.receive_json(), WAIT_S)
        assert started["type"] == "started"
        await ws.send_bytes(_s16(_tone(0.1)))

    async def counted() -> bool:
        return await asyncio.to_thread(_endings, running, "ws", "client_closed") == 1

    await wait_until_async(counted, timeout_s=WAIT_S, message="the closed WebSocket counted as client_closed")
    for protocol in ("ws", "emotion_v1"):
        assert _endings(running, protocol, "idle_timeout") == 1, protocol
        assert _endings(running, protocol, "completed") == 1, protocol
    assert _endings(running, "emotion_v1", "client_closed") == 0
    assert running.metric("emotion_requests_total", rpc="StreamRecognize", code="DEADLINE_EXCEEDED",
                          protocol="ws") == 1
    assert running.metric("emotion_active_streams") == 0


async def test_a_websocket_that_pings_without_a_config_is_closed_at_the_config_deadline(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pings do not extend the time a config may take; with tokens on, no token is needed to ping."""
    monkeypatch.delenv("EMOTION_AUTH_TOKENS", raising=False)
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    running: Running = await start_server(stream_idle_timeout_s=IDLE_S, auth_token_file=str(tokens))
    seen = _Ws()
    async with aiohttp.ClientSession() as session, session.ws_connect(_ws_url(running), autoping=True) as ws:
        connected = time.monotonic()

        async def ping() -> None:
            while True:
                await ws.ping()
                await asyncio.sleep(PACE_S)  # a keep-alive every PACE_S, five per idle time

        pinger = asyncio.create_task(ping())
        try:
            await asyncio.wait_for(seen.read_until_closed(ws), WAIT_S)
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)
    error = seen.error()
    assert (error["status"], error["code"], error["reason"]) == (504, "DEADLINE_EXCEEDED", "config_timeout")
    assert "no config message" in error["error"], error
    assert (seen.close_code, seen.close_reason) == (4504, "config_timeout")
    assert seen.closed_at is not None and seen.closed_at - connected >= IDLE_S * 0.95
    assert _endings(running, "ws", "config_timeout") == 1


async def test_the_wall_clock_limit_ends_streams_that_keep_trickling_audio(start_server: StartServer) -> None:
    limit_s = 3.0
    running: Running = await start_server(stream_idle_timeout_s=IDLE_S, stream_max_open_s=limit_s)
    # 10 ms of audio every PACE_S: never idle, and far below the audio limit, forever.
    (failure, elapsed), trickled_ws = await asyncio.gather(
        _grpc_failure(running, _paced(None, 0.01)), _ws_paced(_ws_url(running), None, 0.01))
    assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failure
    assert "open longer than" in (failure.details() or ""), failure.details()
    assert elapsed >= limit_s * 0.95
    error = trickled_ws.error()
    assert (error["status"], error["reason"]) == (504, "duration_limit")
    assert "--stream-max-open-s" in error["error"], error
    assert (trickled_ws.close_code, trickled_ws.close_reason) == (4504, "duration_limit")
    assert trickled_ws.started_at is not None and trickled_ws.closed_at is not None
    assert trickled_ws.closed_at - trickled_ws.started_at >= limit_s * 0.95
    for protocol in ("ws", "emotion_v1"):
        assert _endings(running, protocol, "duration_limit") == 1, protocol
    assert running.metric("emotion_active_streams") == 0


async def test_a_websocket_config_or_control_nested_5000_deep_is_a_bad_config(
    start_server: StartServer,
) -> None:
    running: Running = await start_server()
    nested = '{"a": ' * 5000 + "1" + "}" * 5000
    for config, then in ((nested, None), (json.dumps({"encoding": "s16le", "sample_rate_hz": RATE}), nested)):
        seen = _Ws()
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(_ws_url(running), protocols=("emotion.v1",)) as ws:
            await ws.send_str(config)
            if then is not None:
                assert (await asyncio.wait_for(ws.receive_json(), WAIT_S))["type"] == "started"
                await ws.send_str(then)
            await asyncio.wait_for(seen.read_until_closed(ws), WAIT_S)
        error = seen.error()
        assert (error["status"], error["code"]) == (400, "INVALID_ARGUMENT"), error
        assert "nested too deeply" in error["error"] and len(error["error"]) < 200, error
        assert "Recursion" not in error["error"]
        assert seen.close_code == 4400
    assert _endings(running, "ws", "error") == 2
    assert running.metric("emotion_requests_total", rpc="StreamRecognize", code="INTERNAL",
                          protocol="ws") == 0
