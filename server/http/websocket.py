"""The web API's live stream (``GET /v1/stream``, a WebSocket): first a JSON config message, then binary PCM
chunks, then ``{"end": true}``; the server sends ``{"type": "started"}``, a JSON ``segment`` message per
recognised segment and one ``summary`` at the end (``clients/schema.py`` writes both), or one ``error``
message and closes with code 4000 + the HTTP status (4400 a bad config or message, 4401 no valid token,
4429 too many streams, 4503 draining...).

Time limits (the same as gRPC's, ``calls.streams.StreamClock``): the config must arrive within
``--stream-idle-timeout-s`` of the connect (an absolute deadline: pings do not extend it); then a stream
that receives no audio for that long, or that is open longer than ``--stream-max-open-s``, ends. These
close with 4504 (DEADLINE_EXCEEDED) and the reason text ``config_timeout``, ``idle_timeout`` or
``duration_limit``, which the error message also carries as ``"reason"``.

Every stream goes through :meth:`~emotion2vec_serving.server.calls.core.EmotionCore.stream` (protocol
``ws``). Browsers cannot set headers on a WebSocket, so with bearer tokens configured the token may come as
the ``Authorization`` header, the subprotocol ``bearer.<token>`` (offered beside ``emotion.v1``), or as
``"token"`` in the config message; all go through the one check of ``http/auth.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from aiohttp import WSMsgType, web

from emotion2vec_serving.clients.schema import model_ref_json, stream_segment_json, stream_summary_json
from emotion2vec_serving.clients.wire import PROTOCOL_WS
from emotion2vec_serving.server import tracing
from emotion2vec_serving.server.auth import WS_BEARER_PREFIX, Credentials
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.errors import (
    CallFailed,
    Failure,
    InvalidRequest,
    StreamTimeout,
    classify,
)
from emotion2vec_serving.server.calls.streams import SegmentationSettings, StreamSettings
from emotion2vec_serving.server.calls.types import CallContext
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.http.auth import HttpAuth, credentials
from emotion2vec_serving.server.http.responses import failure_response, json_response
from emotion2vec_serving.server.http.status import http_error
from emotion2vec_serving.server.tracing import CallTrace

__all__ = ["WS_PROTOCOL", "add_routes"]

log = logging.getLogger(__name__)

WS_PROTOCOL = "emotion.v1"
#: Largest text (JSON) message accepted on the stream, and largest binary chunk.
_WS_MAX_MSG_BYTES = 4 * 1024 * 1024
_RPC = "StreamRecognize"
_TOKEN_ADVICE = ("this server needs a bearer token: send it as \"token\" in the config message or as the "
                 f"subprotocol '{WS_BEARER_PREFIX}<token>'")


class _Streams:
    def __init__(self, core: EmotionCore, settings: Settings, auth: HttpAuth) -> None:
        self.core = core
        self.settings = settings
        self.auth = auth

    async def stream(self, request: web.Request) -> web.StreamResponse:
        creds = credentials(request, websocket=True)
        # A token presented with the upgrade request is checked before the upgrade (a plain 401); without
        # one, the upgrade succeeds and the token must come in the config message.
        authorised = not self.auth.enabled
        if self.auth.enabled and creds.presented:
            refused = self.auth.check(request, protocol=PROTOCOL_WS, rpc=_RPC, creds=creds)
            if refused is not None:
                return failure_response(refused)
            authorised = True
        config_by = time.monotonic() + self.settings.stream_idle_timeout_s  # from the connect, absolute
        ws = web.WebSocketResponse(protocols=(WS_PROTOCOL,), max_msg_size=_WS_MAX_MSG_BYTES,
                                   autoping=True, heartbeat=None)
        if not ws.can_prepare(request).ok:
            return json_response(
                {"error": "this endpoint is a WebSocket: connect with a WebSocket client"}, 400)
        await ws.prepare(request)
        try:
            await self._stream_session(ws, authorised=authorised, config_by=config_by,
                                       trace=tracing.incoming(lambda: request.headers))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # never let one stream end without a word
            log.exception("web stream failed")
            await self._ws_error(ws, classify(exc))
        finally:
            if not ws.closed:
                await ws.close()
        return ws

    async def _ws_error(self, ws: web.WebSocketResponse, failure: Failure, reason: str | None = None) -> None:
        """One error message, then the close: 4000 + the HTTP status, with the kind as the reason text (or
        ``reason``, the stream ending, for a time limit)."""
        status, body, _headers = http_error(failure)
        message = {"type": "error", "code": failure.kind.value, "status": status, **body}
        if reason is not None:
            message["reason"] = reason
        if failure.retry_after_ms is not None:
            message["retry_after_ms"] = failure.retry_after_ms
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await ws.send_json(message)
            # 4000 + the HTTP status: the close code carries the outcome for clients that only see it.
            await ws.close(code=4000 + status, message=(reason or failure.kind.value).encode())

    def _ended(self, reason: str) -> None:
        """Count a stream that ended before the core admitted it (the core counts the others)."""
        self.core.metrics.observe_stream_end(PROTOCOL_WS, reason)

    async def _stream_session(self, ws: web.WebSocketResponse, *, authorised: bool, config_by: float,
                              trace: CallTrace | None = None) -> None:
        refused_call = CallContext(protocol=PROTOCOL_WS, rpc=_RPC)
        try:
            # One deadline around the whole wait: ``receive(timeout=...)`` would start again at every ping.
            first = await asyncio.wait_for(ws.receive(), max(0.0, config_by - time.monotonic()))
        except asyncio.TimeoutError:
            idle_s = self.settings.stream_idle_timeout_s
            self._ended("config_timeout")
            await self._ws_error(ws, self.core.refuse(StreamTimeout("config_timeout", (
                f"no config message within {idle_s:g} s of the connect (--stream-idle-timeout-s)")),
                refused_call), reason="config_timeout")
            return
        if first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            self._ended("client_closed")
            return
        try:
            if first.type != WSMsgType.TEXT:
                raise InvalidRequest('the first message must be the JSON config, e.g. {"encoding": "s16le", '
                                     '"sample_rate_hz": 16000}')
            config = _parse_json_object(first.data, "config")
            token = config.pop("token", None)
        except InvalidRequest as exc:
            self._ended("error")
            await self._ws_error(ws, self.core.refuse(exc, refused_call))
            return
        if not authorised:
            refused = self.auth.check_credentials(
                Credentials(token=None if token is None else str(token), how=_TOKEN_ADVICE),
                protocol=PROTOCOL_WS, rpc=_RPC)
            if refused is not None:
                await self._ws_error(ws, refused)
                return
        try:
            settings = _stream_settings(config)
        except InvalidRequest as exc:
            self._ended("error")
            await self._ws_error(ws, self.core.refuse(exc, refused_call))
            return
        call = CallContext(protocol=PROTOCOL_WS, rpc=_RPC, deadline=None,
                           priority=settings.priority, trace=trace)
        card = self.core.model_card()
        client_gone = False
        work: asyncio.Future[None] | None = None

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal client_gone
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    yield bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    if _parse_json_object(msg.data, "control").get("end") is True:
                        return
                    raise InvalidRequest('after the config, send binary PCM chunks and then {"end": true}')
                else:
                    break
            # Closed without {"end": true}: the client went away, like a cancelled gRPC call.
            client_gone = True
            if work is not None:
                work.cancel()
            await asyncio.Event().wait()  # cancelled with the session
            yield b""  # pragma: no cover - unreachable; keeps this function a generator

        async def send(obj: dict[str, Any]) -> None:
            if ws.closed:
                raise asyncio.CancelledError
            try:
                await ws.send_json(obj)
            except ConnectionResetError:
                raise asyncio.CancelledError from None

        async def consume() -> None:
            async with self.core.stream(settings, call) as session:
                await send({"type": "started", "model": model_ref_json(card)})
                async for event in session.run(chunks()):
                    if hasattr(event, "segment_id"):
                        await send(stream_segment_json(event))
                    else:
                        await send(stream_summary_json(event, card))

        work = asyncio.ensure_future(consume())
        try:
            await work
        except CallFailed as failed:
            limit = failed.__cause__  # the admission raises CallFailed from the domain error
            await self._ws_error(ws, failed.failure,
                                 reason=limit.reason if isinstance(limit, StreamTimeout) else None)
            return
        except asyncio.CancelledError:
            if not (client_gone or work.cancelled()) or not work.done():
                raise
            return
        await ws.close()


def _parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidRequest(f"the {what} message is not valid JSON") from None
    except RecursionError:  # JSON nested thousands deep
        raise InvalidRequest(f"the {what} message is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the {what} message must be a JSON object")
    return value


_SEGMENTATION_FIELDS = ("min_segment_s", "max_segment_s", "min_silence_s", "energy_threshold_db",
                        "window_s", "hop_s")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a number")
    return float(value)


def _stream_settings(config: dict[str, Any]) -> StreamSettings:
    known = {"encoding", "sample_rate_hz", "channels", "segmentation", "embedding", "priority"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise InvalidRequest(f"unknown config field(s): {', '.join(unknown)}")
    encoding = config.get("encoding", "s16le")
    if encoding not in ("s16le", "f32le"):
        raise InvalidRequest("encoding must be 's16le' or 'f32le'")
    rate = config.get("sample_rate_hz", 16000)
    channels = config.get("channels", 1)
    for name, value in (("sample_rate_hz", rate), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"{name} must be a positive whole number")
    seg = config.get("segmentation", {}) or {}
    if not isinstance(seg, dict):
        raise InvalidRequest("segmentation must be a JSON object")
    unknown = sorted(set(seg) - {"mode", *_SEGMENTATION_FIELDS})
    if unknown:
        raise InvalidRequest(f"unknown segmentation field(s): {', '.join(unknown)}")
    mode: Literal["energy", "fixed"]
    if seg.get("mode", "energy") == "energy":
        mode = "energy"
    elif seg.get("mode") == "fixed":
        mode = "fixed"
    else:
        raise InvalidRequest("segmentation.mode must be 'energy' or 'fixed'")
    values = {name: _number(seg.get(name, 0.0), f"segmentation.{name}") for name in _SEGMENTATION_FIELDS}
    embedding = config.get("embedding", False)
    if not isinstance(embedding, bool):
        raise InvalidRequest("embedding must be true or false")
    priority = config.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidRequest("priority must be a whole number")
    return StreamSettings(
        encoding=encoding, sample_rate_hz=rate, channels=channels,
        segmentation=SegmentationSettings(mode=mode, **values),
        embedding=embedding, priority=priority,
    )



def add_routes(app: web.Application, core: EmotionCore, settings: Settings, auth: HttpAuth) -> None:
    """``GET /v1/stream``."""
    app.router.add_get("/v1/stream", _Streams(core, settings, auth).stream)
