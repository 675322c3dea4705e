"""The web API's JSON endpoints (``/v1``): recognize, embed and the model card, over the same core as gRPC.

- ``POST /v1/recognize``: one audio file, as the raw request body or as the file part of a
  ``multipart/form-data`` upload. Options ``granularity`` (``utterance``|``frame``), ``embedding``
  (bool), ``smoothing`` (frames, alias ``smoothing_frames``) and ``timeout_s`` come from the query string
  or from form fields. The answer is the ``result.json`` of ``emotion-client recognize`` (the same
  ``clients/schema.py`` writes both), plus ``embedding`` (a list) when asked for.
- ``POST /v1/embed``: the same upload; ``frames`` (bool) adds frame embeddings.
- Both take ``channels`` (``mix``, the default, or ``split``: each channel of a multi-channel file answered
  apart, at most 8; the JSON then holds a ``channels`` list, see ``clients/schema.py``) and, with ``split``,
  ``channel_names`` (comma-separated, e.g. ``agent,customer``).
- ``GET /v1/model``: the model card (``emotion-client info`` fields, plus engine and limits; ``warnings``:
  what to know before trusting the answers, e.g. fewer than nine enabled emotions).

Every call goes through :class:`~emotion2vec_serving.server.calls.core.EmotionCore` (limits, deadlines,
admission, drain and metrics with protocol ``http``); failures are mapped by ``http/status.py``. With bearer
tokens configured, every ``/v1`` call needs ``Authorization: Bearer <token>`` (``http/auth.py``). Uploads are
read into memory, bounded by ``--max-message-bytes`` (413 beyond).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from emotion2vec_serving.clients.schema import GRANULARITIES, embedding_json, model_ref_json, recognition_json
from emotion2vec_serving.clients.wire import PROTOCOL_HTTP
from emotion2vec_serving.server import tracing
from emotion2vec_serving.server.calls.channels import parse_channel_mode
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.errors import CallFailed, InvalidRequest
from emotion2vec_serving.server.calls.types import AudioInput, CallContext, EmbedOptions, RecognizeOptions
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.http.auth import HttpAuth
from emotion2vec_serving.server.http.multipart import TooLarge, read_upload, too_large
from emotion2vec_serving.server.http.responses import failure_response, json_response

__all__ = ["add_routes", "model_json"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def model_json(card: Any, settings: Settings) -> dict[str, Any]:
    """The model card: ``emotion-client info`` fields plus engine, head and the upload limit."""
    return {
        "model": model_ref_json(card),
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
        "warnings": list(getattr(card, "warnings", ())),
        "max_abs_prob_vs_fp32": getattr(card, "max_abs_prob_vs_fp32", None),
        "max_abs_prob_batch_vs_alone": getattr(card, "max_abs_prob_batch_vs_alone", None),
    }


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


#: The largest whole-number option: gRPC's uint32 fields (``smoothing_frames``) hold no more.
_MAX_INT_OPTION = 2**32 - 1


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
    if n > _MAX_INT_OPTION:
        raise InvalidRequest(f"{names[0]} must be at most {_MAX_INT_OPTION}, got {value[:40]!r}")
    return n


def _channel_options(request: web.Request, fields: Mapping[str, str]) -> tuple[bool, tuple[str, ...]]:
    """``channels`` (mix|split) and ``channel_names`` (comma-separated; split only)."""
    split = parse_channel_mode(_option(request, fields, "channels") or "")
    raw = _option(request, fields, "channel_names") or ""
    names = tuple(n.strip() for n in raw.split(",")) if raw.strip() else ()
    if names and not split:
        raise InvalidRequest("channel_names needs channels=split")
    return split, names


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


class _V1:
    def __init__(self, core: EmotionCore, settings: Settings, auth: HttpAuth) -> None:
        self.core = core
        self.settings = settings
        self.auth = auth
        self.limit = settings.max_message_bytes

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return json_response(
            {"error": f"no such endpoint: {request.method} {request.path} (see /openapi.json)"}, 404)

    async def model(self, request: web.Request) -> web.StreamResponse:
        refused = self.auth.check(request, protocol=PROTOCOL_HTTP, rpc="GetModelInfo")
        if refused is not None:
            return failure_response(refused)
        return json_response(model_json(self.core.model_card(), self.settings))

    async def recognize(self, request: web.Request) -> web.StreamResponse:
        return await self._unary(request, "Recognize")

    async def embed(self, request: web.Request) -> web.StreamResponse:
        return await self._unary(request, "Embed")

    async def _unary(self, request: web.Request, rpc: str) -> web.StreamResponse:
        refused = self.auth.check(request, protocol=PROTOCOL_HTTP, rpc=rpc)
        if refused is not None:
            return failure_response(refused)
        trace = tracing.incoming(lambda: request.headers)
        call = CallContext(protocol=PROTOCOL_HTTP, rpc=rpc, trace=trace)
        try:
            upload = await read_upload(request, self.limit)
        except TooLarge:
            return too_large(self.limit)
        except InvalidRequest as exc:
            return failure_response(self.core.refuse(exc, call))
        try:
            deadline = _deadline(request, upload.fields, self.settings.default_timeout_s)
            call = CallContext(protocol=PROTOCOL_HTTP, rpc=rpc, deadline=deadline, trace=trace)
            audio = AudioInput.from_encoded(upload.data)
            card = self.core.model_card()
            split, names = _channel_options(request, upload.fields)
            if rpc == "Recognize":
                granularity = (_option(request, upload.fields, "granularity") or "utterance").strip().lower()
                if granularity not in GRANULARITIES:
                    raise InvalidRequest(
                        f"granularity must be 'utterance' or 'frame', got {granularity[:40]!r}")
                want_embedding = _bool_option(request, upload.fields, "embedding")
                options = RecognizeOptions(
                    frames=granularity == "frame",
                    smoothing_frames=_int_option(request, upload.fields, "smoothing", "smoothing_frames"),
                    embedding=want_embedding,
                    channel_names=names,
                )
                rec = await (self.core.recognize_split(audio, options, call) if split
                             else self.core.recognize(audio, options, call))
                body = recognition_json(rec, card, granularity=granularity, input_name=upload.name,
                                        embedding=want_embedding)
            else:
                frames = _bool_option(request, upload.fields, "frames")
                embed_options = EmbedOptions(frames=frames, channel_names=names)
                res = await (self.core.embed_split(audio, embed_options, call) if split
                             else self.core.embed(audio, embed_options, call))
                body = embedding_json(res, card, input_name=upload.name)
        except CallFailed as failed:
            return failure_response(failed.failure)
        except InvalidRequest as exc:  # our own option parsing, before the core saw the call
            return failure_response(self.core.refuse(exc, call))
        return json_response(body)


def add_routes(app: web.Application, core: EmotionCore, settings: Settings, auth: HttpAuth) -> None:
    """``/v1/model``, ``/v1/recognize``, ``/v1/embed``; ``add_routes`` of ``http/websocket.py`` adds
    ``/v1/stream`` and must run first (this adds the catch-all 404 for the rest of ``/v1``)."""
    v1 = _V1(core, settings, auth)
    app.router.add_get("/v1/model", v1.model)
    app.router.add_post("/v1/recognize", v1.recognize)
    app.router.add_post("/v1/embed", v1.embed)
    app.router.add_route("*", "/v1/{tail:.*}", v1.not_found)
