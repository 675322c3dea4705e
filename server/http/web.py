"""The web front end: a page for people (``GET /``) and the JSON/WebSocket API behind it (``/v1/...``).

Registered on the server's aiohttp application by :func:`add_routes` (``server/http/app.py`` calls it), so it
shares the HTTP listener, TLS and lifetime of the Open Inference Protocol REST front end. Every call goes
through :class:`~emotion2vec_serving.server.calls.core.EmotionCore` (limits, deadlines, admission, drain and
metrics with protocol ``http``, or ``ws`` for the stream); failures are mapped by ``http_status``.

Endpoints (described for machines at ``GET /openapi.json``):

- ``POST /v1/recognize``: one audio file, as the raw request body or as the file part of a
  ``multipart/form-data`` upload. Options ``granularity`` (``utterance``|``frame``), ``embedding``
  (bool), ``smoothing`` (frames, alias ``smoothing_frames``) and ``timeout_s`` come from the query string
  or from form fields. The answer is the ``result.json`` of ``emotion-client recognize`` (same fields), plus
  ``embedding`` (a list) when asked for, as ``emotion-client recognize --json`` prints it.
- ``POST /v1/embed``: the same upload; ``frames`` (bool) adds frame embeddings. The answer has the fields of
  ``emotion-client embed``'s JSON.
- ``GET /v1/model``: the model card (``emotion-client info`` fields, plus engine and limits).
- ``GET /v1/stream`` (WebSocket): first a JSON config message, then binary PCM chunks, then
  ``{"end": true}``; the server sends JSON ``segment`` messages as segments are recognised and one
  ``summary`` at the end (the fields of ``emotion-client stream --json``), or one ``error`` message.

Authentication: when the server has bearer tokens, every ``/v1`` call needs ``Authorization: Bearer
<token>``. Browsers cannot set headers on a WebSocket, so ``/v1/stream`` also accepts the token as a
subprotocol ``bearer.<token>`` (offered beside ``emotion.v1``) or as ``"token"`` in the config message.
The page, its assets and ``/openapi.json`` are public (they hold no data).

Security: uploads are read into memory, bounded by ``--max-message-bytes`` (413 beyond); nothing from a
request ever names a file (static assets come from a fixed in-memory table); the page is served with a
strict Content-Security-Policy (no inline script or style, nothing from another origin); CORS is off
unless ``--cors-allow-origins`` lists origins.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import mimetypes
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import numpy as np
from aiohttp import BodyPartReader, WSMsgType, hdrs, web

from emotion2vec_serving.clients.wire import PROTOCOL_WS, RETRY_AFTER_HEADER, RETRY_AFTER_MS_KEY
from emotion2vec_serving.server.auth import TokenStore
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.errors import (
    CallFailed,
    Failure,
    InvalidRequest,
    Unauthenticated,
    classify,
)
from emotion2vec_serving.server.calls.streams import SegmentationSettings, StreamSettings
from emotion2vec_serving.server.calls.types import AudioInput, CallContext, EmbedOptions, RecognizeOptions
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.http.status import http_error

__all__ = ["CSP", "STATIC_FILES", "add_routes", "openapi_spec"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The page's Content-Security-Policy: everything from this origin only, no inline code, no plugins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; worker-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
WS_PROTOCOL = "emotion.v1"
WS_BEARER_PREFIX = "bearer."
#: Largest text (JSON) message accepted on the stream, and largest binary chunk.
_WS_MAX_MSG_BYTES = 4 * 1024 * 1024
#: Form fields other than the file are small.
_MAX_FIELD_BYTES = 4096
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_GRANULARITIES = ("utterance", "frame")


def _load_static() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of every file in ``server/http/static`` (package data), read once."""
    out: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("emotion2vec_serving.server.http").joinpath("static")
    if not folder.is_dir():
        return out
    for entry in folder.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            kind = {
                ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8",
                ".html": "text/html; charset=utf-8",
                ".ogg": "audio/ogg",
                ".svg": "image/svg+xml",
            }.get(entry.name[entry.name.rfind("."):]) or mimetypes.guess_type(entry.name)[0]
            out[entry.name] = (entry.read_bytes(), kind or "application/octet-stream")
    return out


#: The page's assets, in memory: a request names a key of this table, never a path.
STATIC_FILES: dict[str, tuple[bytes, str]] = _load_static()


# ------------------------------------------------------------------------------------------ JSON shapes


def _timing(t: Any) -> dict[str, Any]:
    return {"queue_ms": float(t.queue_ms), "inference_ms": float(t.inference_ms),
            "decode_ms": float(t.decode_ms), "total_ms": float(t.total_ms), "batch_size": int(t.batch_size)}


def _model_ref(card: Any) -> dict[str, Any]:
    return {"name": card.name, "version": card.version, "precision": card.precision,
            "untrained": bool(card.untrained)}


def _scores(utterance: Any) -> dict[str, float]:
    return {s.label: float(s.score) for s in utterance.scores}


def _segment_json(seg: Any, first_frame: int, *, frames: bool) -> dict[str, Any]:
    """One segment of a long recording (issue 13), as the CLI's result.json writes it."""
    out: dict[str, Any] = {
        "segment_id": int(seg.segment_id),
        "start_s": float(seg.start_s),
        "end_s": float(seg.end_s),
        "emotion": seg.utterance.label,
        "emotion_zh": seg.utterance.label_zh,
        "confidence": float(seg.utterance.confidence),
        "scores": _scores(seg.utterance),
        "timing": _timing(seg.timing),
    }
    if frames:
        # Indices into the top-level "frames" list (which holds every frame, absolute times).
        out["first_frame"] = int(getattr(seg, "first_frame", first_frame))
        out["frame_count"] = int(seg.frame_count)
    return out


def _frame_json(f: Any, labels: tuple[str, ...]) -> dict[str, Any]:
    return {
        "start_s": float(f.start_s),
        "end_s": float(f.end_s),
        "emotion": f.label,
        "confidence": float(f.confidence),
        "scores": {name: float(v) for name, v in zip(labels, f.scores, strict=False)},
    }


def recognition_json(rec: Any, card: Any, *, granularity: str, input_name: str | None,
                     embedding: bool) -> dict[str, Any]:
    """A core ``Recognition`` as ``emotion-client recognize`` writes result.json (same keys, same order)."""
    u = rec.utterance
    labels = tuple(s.label for s in u.scores)
    out: dict[str, Any] = {
        "emotion": u.label,
        "emotion_zh": u.label_zh,
        "confidence": float(u.confidence),
        "scores": _scores(u),
        "granularity": granularity,
    }
    if input_name is not None:
        out["input"] = input_name
    out["duration_s"] = float(rec.duration_s)
    out["timing"] = _timing(rec.timing)
    out["model"] = _model_ref(card)
    if granularity == "frame":
        out["frames"] = [_frame_json(f, labels) for f in rec.frames]
    segments = getattr(rec, "segments", ())
    if segments:
        # Long recordings: the fields above are an aggregate over these segments.
        out["voiced_s"] = float(getattr(rec, "voiced_s", sum(s.end_s - s.start_s for s in segments)))
        out["segments"] = []
        first = 0
        for seg in segments:
            out["segments"].append(_segment_json(seg, first, frames=granularity == "frame"))
            first += int(getattr(seg, "frame_count", 0))
    if embedding and rec.embedding is not None:
        out["embedding"] = np.asarray(rec.embedding, np.float32).tolist()
    return out


def embedding_json(res: Any, card: Any, *, input_name: str | None) -> dict[str, Any]:
    """A core ``EmbeddingResult`` with the fields ``emotion-client embed`` prints."""
    emb = np.asarray(res.embedding, np.float32)
    out: dict[str, Any] = {}
    if input_name is not None:
        out["input"] = input_name
    out["dim"] = int(emb.shape[0])
    out["embedding"] = emb.tolist()
    out["duration_s"] = float(res.duration_s)
    out["timing"] = _timing(res.timing)
    out["model"] = _model_ref(card)
    if res.frame_features is not None:
        out["frames"] = np.asarray(res.frame_features, np.float32).tolist()
    segments = getattr(res, "segments", ())
    if segments:  # long recordings: the embedding above is the frame-weighted mean of these
        out["segments"] = [{
            "segment_id": int(seg.segment_id), "start_s": float(seg.start_s), "end_s": float(seg.end_s),
            "embedding": np.asarray(seg.embedding, np.float32).tolist(),
            "first_frame": int(seg.first_frame), "frame_count": int(seg.frame_count),
            "timing": _timing(seg.timing),
        } for seg in segments]
    return out


def model_json(card: Any, settings: Settings) -> dict[str, Any]:
    """The model card: ``emotion-client info`` fields plus engine, head and the upload limit."""
    return {
        "model": _model_ref(card),
        "labels": [{"index": lb.index, "name": lb.name, "name_zh": lb.name_zh, "enabled": bool(lb.enabled)}
                   for lb in card.labels],
        "sample_rate_hz": card.sample_rate_hz,
        "frame_rate_hz": card.frame_rate_hz,
        "embedding_dim": card.embedding_dim,
        "execution_provider": card.provider,
        "engine": card.engine,
        "has_head": bool(card.has_head),
        "max_duration_s": card.max_duration_s,
        "min_duration_s": card.min_duration_s,
        "max_audio_s": float(getattr(card, "max_audio_s", card.max_duration_s)),
        "max_segment_s": float(getattr(card, "max_segment_s", card.max_duration_s)),
        "max_upload_bytes": settings.max_message_bytes,
    }


def _stream_segment_json(ev: Any) -> dict[str, Any]:
    """A stream segment with the fields of ``emotion-client stream --json`` (plus ``emotion_zh``)."""
    out: dict[str, Any] = {
        "type": "segment",
        "segment_id": int(ev.segment_id),
        "start_s": float(ev.start_s),
        "end_s": float(ev.end_s),
        "emotion": ev.utterance.label,
        "emotion_zh": ev.utterance.label_zh,
        "confidence": float(ev.utterance.confidence),
        "scores": _scores(ev.utterance),
        "timing": _timing(ev.timing),
    }
    if ev.embedding is not None:
        out["embedding"] = np.asarray(ev.embedding, np.float32).tolist()
    return out


def _stream_summary_json(ev: Any, card: Any) -> dict[str, Any]:
    overall = ev.overall
    return {
        "type": "summary",
        "segments": int(ev.segments),
        "duration_s": float(ev.duration_s),
        "voiced_s": float(ev.voiced_s),
        "emotion": overall.label if overall is not None else "",
        "emotion_zh": overall.label_zh if overall is not None else "",
        "confidence": float(overall.confidence) if overall is not None else 0.0,
        "scores": _scores(overall) if overall is not None else {},
        "label_seconds": {s.label: float(s.score) for s in ev.label_seconds},
        "model": _model_ref(card),
    }


# ------------------------------------------------------------------------------------------ requests


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Upload:
    data: bytes
    name: str | None
    fields: dict[str, str]


def _safe_name(name: str | None) -> str | None:
    """A display name only (never used as a path): the last path component, printable, at most 200 chars."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable())[:200]
    return cleaned or None


async def _read_bounded(read_chunk: Callable[[], Awaitable[bytes]], limit: int) -> bytes:
    buf = bytearray()
    while True:
        chunk = await read_chunk()
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise _TooLarge


async def _read_upload(request: web.Request, limit: int) -> _Upload:
    """The audio of a request (raw body or the first file part of a multipart form) and its form fields.

    Held in memory only, at most ``limit`` bytes (``_TooLarge`` beyond); aiohttp's ``post()`` is not used
    because it spools file parts to temporary files.
    """
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise _TooLarge
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        data: bytes | None = None
        name: str | None = None
        fields: dict[str, str] = {}
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):  # a nested multipart: not something this API takes
                raise InvalidRequest("nested multipart bodies are not supported")
            body_part: BodyPartReader = part
            if body_part.filename is not None or body_part.name in ("file", "audio"):
                if data is not None:
                    raise InvalidRequest("send one audio file per request")
                data = await _read_bounded(functools.partial(body_part.read_chunk, 64 * 1024), limit)
                name = body_part.filename
            else:
                raw = await _read_bounded(functools.partial(body_part.read_chunk, 1024), _MAX_FIELD_BYTES)
                fields[str(body_part.name)] = raw.decode("utf-8", errors="replace")
        if data is None:
            raise InvalidRequest("the form has no audio file: send it as a 'file' part")
        return _Upload(data, _safe_name(name), fields)
    data = await _read_bounded(lambda: request.content.read(64 * 1024), limit)
    return _Upload(data, _safe_name(request.query.get("name")), {})


def _option(request: web.Request, fields: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if name in fields:
            return fields[name]
        if name in request.query:
            return request.query[name]
    return None


def _bool_option(request: web.Request, fields: Mapping[str, str], name: str) -> bool:
    value = _option(request, fields, name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidRequest(f"{name} must be true or false, got {value[:40]!r}")


def _int_option(request: web.Request, fields: Mapping[str, str], *names: str) -> int:
    value = _option(request, fields, *names)
    if value is None or value.strip() == "":
        return 0
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"{names[0]} must be a whole number, got {value[:40]!r}") from None
    if n < 0:
        raise InvalidRequest(f"{names[0]} must not be negative")
    return n


def _deadline(request: web.Request, fields: Mapping[str, str], default_s: float) -> float:
    value = _option(request, fields, "timeout_s")
    timeout = default_s
    if value is not None and value.strip():
        try:
            timeout = float(value)
        except ValueError:
            raise InvalidRequest(f"timeout_s must be a number of seconds, got {value[:40]!r}") from None
        if not math.isfinite(timeout) or timeout <= 0:
            raise InvalidRequest("timeout_s must be a positive number of seconds")
    return time.monotonic() + timeout


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


# ------------------------------------------------------------------------------------------ responses


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, allow_nan=False),
        status=status, content_type="application/json", charset="utf-8", headers=headers,
    )


def _failure_response(failure: Failure) -> web.Response:
    status, body, headers = http_error(failure)
    return _json(body, status, headers)


def _too_large(limit: int) -> web.Response:
    # Not a domain error: the upload never reached the core. Same JSON shape as every other error.
    return _json({"error": f"the upload is larger than the server's limit of {limit} bytes "
                           f"({limit / 1048576:.1f} MiB); send a shorter or compressed recording"}, 413)


# ------------------------------------------------------------------------------------------ routes


class _Web:
    def __init__(self, core: EmotionCore, settings: Settings, tokens: TokenStore | None) -> None:
        self.core = core
        self.settings = settings
        self.tokens = tokens
        self.limit = settings.max_message_bytes
        self.cors = frozenset(getattr(settings, "cors_allow_origins", ()) or ())

    # --- auth

    def _authorised(self, token: str | None) -> bool:
        return self.tokens is None or (token is not None and self.tokens.check(token))

    def _refuse(self, exc: BaseException, call: CallContext) -> Failure:
        """A call refused here, before the core ran it: counted by the core like any failed call."""
        return self.core.refuse(exc, call)

    def _unauthenticated(self, presented: bool, rpc: str, protocol: str = "http") -> web.Response:
        message = ("the bearer token is not accepted" if presented else
                   "this server needs a bearer token: send 'Authorization: Bearer <token>'")
        failure = self._refuse(Unauthenticated(message), CallContext(protocol=protocol, rpc=rpc))
        return _failure_response(failure)

    def _check_header(self, request: web.Request, rpc: str) -> web.Response | None:
        if self.tokens is None:
            return None
        token = _bearer(request.headers.get(hdrs.AUTHORIZATION))
        if self._authorised(token):
            return None
        return self._unauthenticated(hdrs.AUTHORIZATION in request.headers, rpc)

    # --- page and assets

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._static("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._static(request.match_info["name"])

    def _static(self, name: str) -> web.StreamResponse:
        entry = STATIC_FILES.get(name)
        if entry is None:
            return _json({"error": "not found"}, 404)
        body, kind = entry
        resp = web.Response(body=body, headers={"Cache-Control": "no-cache"})
        resp.headers[hdrs.CONTENT_TYPE] = kind
        return resp

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return _json(openapi_spec(self.settings))

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return _json({"error": f"no such endpoint: {request.method} {request.path} (see /openapi.json)"}, 404)

    # --- JSON API

    async def model(self, request: web.Request) -> web.StreamResponse:
        refused = self._check_header(request, "GetModelInfo")
        if refused is not None:
            return refused
        return _json(model_json(self.core.model_card(), self.settings))

    async def recognize(self, request: web.Request) -> web.StreamResponse:
        return await self._unary(request, "Recognize")

    async def embed(self, request: web.Request) -> web.StreamResponse:
        return await self._unary(request, "Embed")

    async def _unary(self, request: web.Request, rpc: str) -> web.StreamResponse:
        refused = self._check_header(request, rpc)
        if refused is not None:
            return refused
        call = CallContext(protocol="http", rpc=rpc)
        try:
            upload = await _read_upload(request, self.limit)
        except _TooLarge:
            return _too_large(self.limit)
        except InvalidRequest as exc:
            return _failure_response(self._refuse(exc, call))
        try:
            deadline = _deadline(request, upload.fields, self.settings.default_timeout_s)
            call = CallContext(protocol="http", rpc=rpc, deadline=deadline)
            audio = AudioInput.from_encoded(upload.data)
            card = self.core.model_card()
            if rpc == "Recognize":
                granularity = (_option(request, upload.fields, "granularity") or "utterance").strip().lower()
                if granularity not in _GRANULARITIES:
                    raise InvalidRequest(
                        f"granularity must be 'utterance' or 'frame', got {granularity[:40]!r}")
                want_embedding = _bool_option(request, upload.fields, "embedding")
                options = RecognizeOptions(
                    frames=granularity == "frame",
                    smoothing_frames=_int_option(request, upload.fields, "smoothing", "smoothing_frames"),
                    embedding=want_embedding,
                )
                rec = await self.core.recognize(audio, options, call)
                body = recognition_json(rec, card, granularity=granularity, input_name=upload.name,
                                        embedding=want_embedding)
            else:
                frames = _bool_option(request, upload.fields, "frames")
                res = await self.core.embed(audio, EmbedOptions(frames=frames), call)
                body = embedding_json(res, card, input_name=upload.name)
        except CallFailed as failed:
            return _failure_response(failed.failure)
        except InvalidRequest as exc:  # our own option parsing, before the core saw the call
            return _failure_response(self._refuse(exc, call))
        return _json(body)

    # --- WebSocket stream

    async def stream(self, request: web.Request) -> web.StreamResponse:
        offered = [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")]
        header_token = _bearer(request.headers.get(hdrs.AUTHORIZATION))
        proto_token = next(
            (p[len(WS_BEARER_PREFIX):] for p in offered if p.startswith(WS_BEARER_PREFIX)), None)
        presented = header_token or proto_token
        if self.tokens is not None and presented is not None and not self._authorised(presented):
            # a plain 401 before the upgrade
            return self._unauthenticated(True, "StreamRecognize", PROTOCOL_WS)
        ws = web.WebSocketResponse(protocols=(WS_PROTOCOL,), max_msg_size=_WS_MAX_MSG_BYTES,
                                   autoping=True, heartbeat=None)
        if not ws.can_prepare(request).ok:
            return _json({"error": "this endpoint is a WebSocket: connect with a WebSocket client"}, 400)
        await ws.prepare(request)
        try:
            await self._stream_session(ws, authorised=self.tokens is None or presented is not None)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # never let one stream end without a word
            log.exception("web stream failed")
            await self._ws_error(ws, classify(exc))
        finally:
            if not ws.closed:
                await ws.close()
        return ws

    async def _ws_error(self, ws: web.WebSocketResponse, failure: Failure) -> None:
        status, body, _headers = http_error(failure)
        message = {"type": "error", "code": failure.kind.value, "status": status, **body}
        if failure.retry_after_ms is not None:
            message["retry_after_ms"] = failure.retry_after_ms
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await ws.send_json(message)
            # 4000 + the HTTP status: the close code carries the outcome for clients that only see it.
            await ws.close(code=4000 + status, message=failure.kind.value.encode())

    async def _stream_session(self, ws: web.WebSocketResponse, *, authorised: bool) -> None:
        refused_call = CallContext(protocol=PROTOCOL_WS, rpc="StreamRecognize")
        try:
            first = await ws.receive(timeout=self.settings.default_timeout_s)
        except asyncio.TimeoutError:
            await self._ws_error(ws, self._refuse(InvalidRequest(
                f"no config message within {self.settings.default_timeout_s:g} s"), refused_call))
            return
        if first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
        try:
            if first.type != WSMsgType.TEXT:
                raise InvalidRequest('the first message must be the JSON config, e.g. {"encoding": "s16le", '
                                     '"sample_rate_hz": 16000}')
            config = _parse_json_object(first.data, "config")
            token = config.pop("token", None)
            if not authorised and (not isinstance(token, str) or not self._authorised(token)):
                raise Unauthenticated(
                    "this server needs a bearer token: send it as \"token\" in the config message or as "
                    "the subprotocol 'bearer.<token>'" if token is None
                    else "the bearer token is not accepted")
            settings = _stream_settings(config)
        except (InvalidRequest, Unauthenticated) as exc:
            await self._ws_error(ws, self._refuse(exc, refused_call))
            return
        call = CallContext(protocol=PROTOCOL_WS, rpc="StreamRecognize", deadline=None,
                           priority=settings.priority)
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
                await send({"type": "started", "model": _model_ref(card)})
                async for event in session.run(chunks()):
                    if hasattr(event, "segment_id"):
                        await send(_stream_segment_json(event))
                    else:
                        await send(_stream_summary_json(event, card))

        work = asyncio.ensure_future(consume())
        try:
            await work
        except CallFailed as failed:
            await self._ws_error(ws, failed.failure)
            return
        except asyncio.CancelledError:
            if not (client_gone or work.cancelled()) or not work.done():
                raise
            return
        await ws.close()

    # --- CORS

    @web.middleware
    async def cors_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        allowed = origin is not None and ("*" in self.cors or origin in self.cors)
        if request.method == "OPTIONS" and origin is not None and \
                hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            if not allowed:
                return _json({"error": f"origin {origin[:100]} is not allowed (--cors-allow-origins)"}, 403)
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            })
        response = await handler(request)
        if allowed and origin is not None and not isinstance(response, web.WebSocketResponse):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = f"{RETRY_AFTER_HEADER}, {RETRY_AFTER_MS_KEY}"
            response.headers["Vary"] = "Origin"
        return response

    @web.middleware
    async def headers_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = _too_large(self.limit)
        if not isinstance(response, web.WebSocketResponse) and not response.prepared:
            for key, value in SECURITY_HEADERS.items():
                response.headers.setdefault(key, value)
        return response


def _parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidRequest(f"the {what} message is not valid JSON") from None
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


#: The page's handlers on the application (typed key: aiohttp warns on plain string keys).
WEB_KEY: web.AppKey[_Web] = web.AppKey("emotion_web", _Web)


def add_routes(app: web.Application, core: EmotionCore, settings: Settings, *,
               tokens: TokenStore | None = None) -> None:
    """Put the page, its assets and the ``/v1`` API on ``app`` (before it is started).

    ``tokens``: the server's accepted bearer tokens (``None``: no authentication), the same store the gRPC
    port uses. Adds two middlewares: CORS (only for ``--cors-allow-origins``) and security headers.
    """
    w = _Web(core, settings, tokens)
    app.middlewares.append(w.cors_middleware)
    app.middlewares.append(w.headers_middleware)
    app.router.add_get("/", w.index)
    app.router.add_get("/static/{name}", w.static)
    app.router.add_get("/openapi.json", w.openapi)
    app.router.add_get("/v1/model", w.model)
    app.router.add_post("/v1/recognize", w.recognize)
    app.router.add_post("/v1/embed", w.embed)
    app.router.add_get("/v1/stream", w.stream)
    app.router.add_route("*", "/v1/{tail:.*}", w.not_found)
    app[WEB_KEY] = w


# ------------------------------------------------------------------------------------------ OpenAPI


def openapi_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3 description of the ``/v1`` endpoints (hand-written; tests check it against
    the server)."""
    error = {"$ref": "#/components/responses/Error"}
    number = {"type": "number"}
    scores = {"type": "object", "additionalProperties": number,
              "description": "English label -> probability, in model label order"}
    timing = {"type": "object", "properties": {k: number for k in
                                               ("queue_ms", "inference_ms", "decode_ms", "total_ms")}
              | {"batch_size": {"type": "integer"}}}
    model_ref = {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                                  "precision": {"type": "string"},
                                                  "untrained": {"type": "boolean"}}}
    frame = {"type": "object", "properties": {"start_s": number, "end_s": number,
                                              "emotion": {"type": "string"}, "confidence": number,
                                              "scores": scores}}
    upload_body = {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"},
                "granularity": {"type": "string", "enum": list(_GRANULARITIES)},
                "embedding": {"type": "boolean"}, "smoothing": {"type": "integer", "minimum": 0},
                "frames": {"type": "boolean"}}, "required": ["file"]}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        },
        "description": f"one WAV/MP3/M4A/FLAC/OGG file, at most {settings.max_message_bytes} bytes",
    }

    def q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}

    errors = {"400": error, "401": error, "413": error, "429": error, "503": error, "504": error}
    return {
        "openapi": "3.0.3",
        "info": {"title": "emotion2vec serving: web API", "version": "1",
                 "description": "Speech emotion recognition. The same model, limits and authentication as "
                                "the gRPC emotion.v1 API. Errors are JSON {\"error\": message}; 429 and 503 "
                                "carry Retry-After (seconds) and retry-after-ms headers."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/recognize": {"post": {
                "summary": "Emotion of one recording (the CLI's result.json)",
                "parameters": [
                    q("granularity", {"type": "string", "enum": list(_GRANULARITIES), "default": "utterance"},
                      "utterance, or frame for 20 ms frame scores"),
                    q("embedding", {"type": "boolean", "default": False}, "include the utterance embedding"),
                    q("smoothing", {"type": "integer", "minimum": 0, "default": 0},
                      "frame granularity: moving average over N frames (alias smoothing_frames)"),
                    q("timeout_s", {"type": "number", "exclusiveMinimum": 0}, "deadline of the call"),
                    q("name", {"type": "string"}, "raw body: the name reported as 'input'"),
                ],
                "requestBody": upload_body,
                "responses": {"200": {"description": "the result", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Recognition"}}}}, **errors},
            }},
            "/v1/embed": {"post": {
                "summary": "Utterance (and frame) embeddings of one recording",
                "parameters": [q("frames", {"type": "boolean", "default": False}, "also frame embeddings"),
                               q("timeout_s", {"type": "number", "exclusiveMinimum": 0}, "deadline"),
                               q("name", {"type": "string"}, "raw body: the name reported as 'input'")],
                "requestBody": upload_body,
                "responses": {"200": {"description": "the embedding", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Embedding"}}}}, **errors},
            }},
            "/v1/model": {"get": {
                "summary": "The model card",
                "responses": {"200": {"description": "what the server serves", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Model"}}}},
                    "401": error},
            }},
            "/v1/stream": {"get": {
                "summary": "Live recognition over a WebSocket",
                "description": (
                    "Upgrade to a WebSocket (subprotocol 'emotion.v1'). Send first a JSON config "
                    "{\"encoding\": \"s16le\"|\"f32le\", \"sample_rate_hz\": int, \"channels\": int, "
                    "\"segmentation\": {\"mode\": \"energy\"|\"fixed\", \"min_segment_s\", "
                    "\"max_segment_s\", \"min_silence_s\", \"energy_threshold_db\", \"window_s\", "
                    "\"hop_s\"}, \"embedding\": bool, "
                    "\"priority\": int, \"token\": str}, then binary PCM chunks (interleaved little-endian), "
                    "then {\"end\": true}. The server answers {\"type\": \"started\"}, then one "
                    "{\"type\": \"segment\", ...} per recognised segment and a final {\"type\": \"summary\", "
                    "...}; or {\"type\": \"error\", \"status\", \"code\", \"error\"} and closes with code "
                    "4000 + status. Browsers cannot set an Authorization header: offer the subprotocol "
                    "'bearer.<token>' beside 'emotion.v1', or put \"token\" in the config message."),
                "responses": {"101": {"description": "switching to the WebSocket protocol"},
                              "400": error, "401": error},
            }},
            "/openapi.json": {"get": {"summary": "This description", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3 document"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "needed when the server has tokens"}},
            "responses": {"Error": {"description": "an error a person can read", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}},
                          "required": ["error"]},
                "Recognition": {"type": "object", "required": [
                    "emotion", "emotion_zh", "confidence", "scores", "granularity", "duration_s", "timing",
                    "model"], "properties": {
                    "emotion": {"type": "string"}, "emotion_zh": {"type": "string"}, "confidence": number,
                    "scores": scores, "granularity": {"type": "string", "enum": list(_GRANULARITIES)},
                    "input": {"type": "string"}, "duration_s": number, "timing": timing, "model": model_ref,
                    "frames": {"type": "array", "items": frame},
                    "voiced_s": {**number, "description": "long recordings: audio inside segments"},
                    "segments": {"type": "array", "description": (
                        "long recordings (longer than one model pass): one entry per segment; the fields "
                        "above are then the duration-weighted aggregate"),
                                 "items": {"type": "object", "properties": {
                                     "segment_id": {"type": "integer"}, "start_s": number, "end_s": number,
                                     "emotion": {"type": "string"}, "emotion_zh": {"type": "string"},
                                     "confidence": number, "scores": scores, "timing": timing,
                                     "first_frame": {"type": "integer", "description": "index into frames"},
                                     "frame_count": {"type": "integer"}}}},
                    "embedding": {"type": "array", "items": number}}},
                "Embedding": {"type": "object", "required": ["dim", "embedding", "duration_s", "model"],
                              "properties": {
                                  "input": {"type": "string"}, "dim": {"type": "integer"},
                                  "embedding": {"type": "array", "items": number}, "duration_s": number,
                                  "timing": timing, "model": model_ref,
                                  "frames": {"type": "array", "items": {"type": "array", "items": number}},
                                  "segments": {"type": "array", "description": "long recordings: per segment",
                                               "items": {"type": "object", "properties": {
                                                   "segment_id": {"type": "integer"}, "start_s": number,
                                                   "end_s": number,
                                                   "embedding": {"type": "array", "items": number},
                                                   "first_frame": {"type": "integer"},
                                                   "frame_count": {"type": "integer"},
                                                   "timing": timing}}}}},
                "Model": {"type": "object", "properties": {
                    "model": model_ref,
                    "labels": {"type": "array", "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "name": {"type": "string"},
                        "name_zh": {"type": "string"}, "enabled": {"type": "boolean"}}}},
                    "sample_rate_hz": {"type": "integer"}, "frame_rate_hz": number,
                    "embedding_dim": {"type": "integer"}, "execution_provider": {"type": "string"},
                    "engine": {"type": "string"}, "has_head": {"type": "boolean"},
                    "max_duration_s": {**number, "description": "longest single model pass"},
                    "min_duration_s": number,
                    "max_audio_s": {**number, "description": "longest recording (0: only the upload limit)"},
                    "max_segment_s": {**number, "description": "longest segment of a long recording"},
                    "max_upload_bytes": {"type": "integer"}}},
            },
        },
    }
