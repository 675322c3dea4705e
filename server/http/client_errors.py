"""Malformed HTTP requests end with 400 and one log line, never 500 and a traceback (issue 22).

aiohttp reads and decodes the request body itself: a ``Content-Encoding: gzip`` (or ``deflate``, ``br``)
body that does not decode, or a bad part header inside a multipart body, surfaces in the handler as
``RequestPayloadError`` or one of aiohttp's ``HttpProcessingError`` classes (``BadHttpMessage``,
``InvalidHeader``, ``ContentEncodingError``...), wherever the body is read. Left alone they become
"500 Internal Server Error" and an ERROR traceback in ``aiohttp.server``'s log. Two pieces, installed on the
application once by :func:`install`, handle them for every route (``/v1``, ``/v2``, the page):

- :func:`middleware`, innermost (so the page's headers and CORS still apply): such an error becomes
  ``400 {"error": message}`` (the same JSON shape as every other error of both APIs), logged at INFO in one
  line, and the connection is closed after the answer (the rest of a body that does not decode cannot be
  skipped reliably).
- :class:`ClientErrorLogFilter` on ``aiohttp.server``: after the answer aiohttp drains what is left of the
  body ("lingering close"), reads the same decoding error again and logs "Unhandled exception" with a
  traceback; the filter turns a record whose exception is one of these client errors into one WARNING line
  without the traceback. Records of any other exception are left as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from emotion2vec_serving.server.http.responses import json_response

__all__ = ["CLIENT_ERRORS", "ClientErrorLogFilter", "client_error_message", "install", "middleware"]

log = logging.getLogger(__name__)

#: What aiohttp raises for a request body the client got wrong.
CLIENT_ERRORS: tuple[type[Exception], ...] = (web.RequestPayloadError, HttpProcessingError)
#: The logger aiohttp reports unhandled request errors to.
AIOHTTP_SERVER_LOGGER = "aiohttp.server"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_error_message(exc: BaseException) -> str:
    """aiohttp's reason without its "400, message:" prefix, e.g. "Can not decode content-encoding: gzip"."""
    for err in (exc, exc.__cause__, exc.__context__):
        if isinstance(err, HttpProcessingError) and err.message:
            return str(err.message).strip()
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def _is_client_error(exc: BaseException | None) -> bool:
    if isinstance(exc, HttpProcessingError):
        return 400 <= int(exc.code or 400) < 500
    return isinstance(exc, web.RequestPayloadError)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body aiohttp could not read or decode -> 400 with aiohttp's reason; the connection then closes."""
    try:
        return await handler(request)
    except CLIENT_ERRORS as exc:
        if not _is_client_error(exc):
            raise
        reason = client_error_message(exc)
        log.info("400 for %s %s from %s: the request body could not be read (%s)",
                 request.method, request.path, request.remote, reason)
        response = json_response({"error": f"the request body could not be read: {reason}"}, 400)
        response.force_close()
        return response


class ClientErrorLogFilter(logging.Filter):
    """Turns ``aiohttp.server`` records caused by a client's malformed body into one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not _is_client_error(exc):
            return True
        assert exc is not None
        original = record.getMessage()
        record.msg = "%s: a malformed request body (%s), not a server error"
        record.args = (original, client_error_message(exc))
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


_LOG_FILTER = ClientErrorLogFilter()


def install(app: web.Application) -> None:
    """Add :func:`middleware` (after every other middleware: innermost) and the log filter (once)."""
    app.middlewares.append(middleware)
    logging.getLogger(AIOHTTP_SERVER_LOGGER).addFilter(_LOG_FILTER)  # addFilter ignores a second add
