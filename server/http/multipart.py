"""Bounded uploads of the web API: the audio of a request, as its raw body or the file part of a
``multipart/form-data`` form, held in memory only and never beyond the server's upload limit.

aiohttp's ``post()`` is not used because it spools file parts to temporary files; nothing from a request
ever names a file here (the file name is a display name only). A body that cannot be read (a malformed
multipart body: no or wrong boundary, an unterminated part, a bad part header; a ``Content-Encoding`` that
does not decode) is an ``InvalidRequest`` (400), never an unhandled aiohttp error.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from emotion2vec_serving.server.calls.errors import InvalidRequest
from emotion2vec_serving.server.http.client_errors import client_error_message
from emotion2vec_serving.server.http.responses import json_response

__all__ = ["TooLarge", "Upload", "read_upload", "too_large"]

#: Form fields other than the file are small.
MAX_FIELD_BYTES = 4096


_FORM_HINT = ("send multipart/form-data with a boundary in Content-Type, each part opened by --<boundary> "
              "and the body closed by --<boundary>--")


def _multipart_reason(exc: Exception) -> str:
    reason = client_error_message(exc)
    if reason == "Reading after EOF":  # aiohttp's words for a body that ended inside a part
        return "the body ended before the closing boundary"
    return reason


class TooLarge(Exception):
    """The upload is larger than the limit."""


@dataclass(frozen=True)
class Upload:
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
            raise TooLarge


async def read_upload(request: web.Request, limit: int) -> Upload:
    """The audio of a request (raw body or the first file part of a multipart form) and its form fields.

    Held in memory only, at most ``limit`` bytes (``TooLarge`` beyond); aiohttp's ``post()`` is not used
    because it spools file parts to temporary files.
    """
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise TooLarge
    try:
        if request.content_type.startswith("multipart/"):
            try:
                return await _read_form(request, limit)
            except (TooLarge, InvalidRequest, web.RequestPayloadError):
                raise
            except (ValueError, HttpProcessingError) as exc:
                # aiohttp's multipart reader: no or wrong boundary, a part without its closing boundary
                # (the body ended), a bad part header.
                reason = _multipart_reason(exc)
                raise InvalidRequest(f"malformed multipart body: {reason}; {_FORM_HINT}") from None
        data = await _read_bounded(lambda: request.content.read(64 * 1024), limit)
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not gzip
        raise InvalidRequest(f"the request body could not be read: {client_error_message(exc)}") from None
    return Upload(data, _safe_name(request.query.get("name")), {})


async def _read_form(request: web.Request, limit: int) -> Upload:
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
            raw = await _read_bounded(functools.partial(body_part.read_chunk, 1024), MAX_FIELD_BYTES)
            fields[str(body_part.name)] = raw.decode("utf-8", errors="replace")
    if data is None:
        raise InvalidRequest("the form has no audio file: send it as a 'file' part")
    return Upload(data, _safe_name(name), fields)


def too_large(limit: int) -> web.Response:
    # Not a domain error: the upload never reached the core. Same JSON shape as every other error.
    message = (f"the upload is larger than the server's limit of {limit} bytes "
               f"({limit / 1048576:.1f} MiB); send a shorter or compressed recording")
    return json_response({"error": message}, 413)
