"""Slow clients on the HTTP port (issue 22, item 4): deadlines on a request's head and body, a cap on open
connections, and rate-limited logging of failed ``accept()`` calls.

aiohttp bounds a request head only by its keep-alive timeout (an hour by default) and a body not at all, and
it accepts connections until the process runs out of file descriptors. Here:

- **Head deadline** (``--http-header-timeout-s``): the request line and headers must arrive within the
  deadline of the connection opening, or of the first byte of a keep-alive connection's next request (an
  idle keep-alive connection is aiohttp's keep-alive timeout's business, like Go's ``ReadHeaderTimeout`` and
  ``IdleTimeout``). Past it the server writes ``408 Request Timeout`` and closes. With TLS the handshake
  counts too (``ssl_handshake_timeout``: nothing of the head can arrive before it).
- **Body deadline** (``--http-body-timeout-s``): a body must arrive whole within the deadline of its headers
  (:meth:`ConnectionGuard.middleware`): the read the handler waits on fails, the answer is 408 and the
  connection closes.
- **Connection cap** (``--max-http-connections``): past it, :data:`PROBE_RESERVE` more connections are
  taken for the health probes only (``GET /v2/health/live|ready``, ``/v2/models/<m>/ready``): a probe on
  one is answered, anything else gets 503 with ``Retry-After``. A connection cannot be told apart before
  its head arrives, so the reserve keeps probes working when the cap is full of busy or idle keep-alive
  clients; against a flood of fresh connections its shorter head deadline (:data:`PROBE_HEADER_TIMEOUT_S`)
  frees slots quickly. Beyond the reserve a connection is refused at once: a raw 503 with ``Retry-After``
  (written before any request is read, then the write side closed and the request drained briefly so the
  client reads the answer rather than a reset) and closed. Each is counted in
  ``emotion_http_connections_cut_total{reason}``; ``emotion_http_connections`` is the open count.
- **Accept errors**: at the descriptor limit asyncio logs ``socket.accept() out of system resource`` with a
  traceback every second per listening socket. :class:`AcceptErrorLogLimit` lets one line through per
  :data:`ACCEPT_LOG_INTERVAL_S` with the count of those it held back, and counts every one
  (``emotion_accept_errors_total``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from emotion2vec_serving.server.defaults import connection_cap

__all__ = [
    "ACCEPT_LOG_INTERVAL_S",
    "PROBE_HEADER_TIMEOUT_S",
    "PROBE_RESERVE",
    "AcceptErrorLogLimit",
    "BodyTimeout",
    "ConnectionGuard",
    "GuardedSite",
    "default_max_connections",
    "install_accept_log_limit",
    "is_probe",
]

log = logging.getLogger(__name__)

#: Connections past the cap that may still carry health probes.
PROBE_RESERVE = 8
#: The head deadline on a reserve connection (a probe sends its request at once).
PROBE_HEADER_TIMEOUT_S = 2.0
#: What ``Retry-After`` says to a refused client, in seconds.
RETRY_AFTER_S = 1
#: How long a refused connection is drained after its 503 (so the client reads it instead of a reset) ...
REFUSAL_LINGER_S = 1.0
#: ... while fewer than this many are (beyond it a refused connection is closed at once).
MAX_LINGERING = 64
#: At most one ``accept() out of system resource`` line per this many seconds.
ACCEPT_LOG_INTERVAL_S = 60.0
#: At most one line per reason per this many seconds about connections the guards closed.
_CUT_LOG_INTERVAL_S = 10.0
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ACCEPT_MESSAGE = "accept() out of system resource"


def default_max_connections(soft_limit: int | None = None) -> int:
    """``--max-http-connections 0``: the default cap of a port (``defaults.connection_cap``)."""
    return connection_cap(soft_limit)


def is_probe(method: str, path: str) -> bool:
    """The health probes a reserve connection may carry: ``/v2/health/live``, ``/v2/health/ready`` and
    ``/v2/models/<name>[/versions/<v>]/ready`` (GET or HEAD; they need no token)."""
    return method in ("GET", "HEAD") and path.startswith("/v2/") and path.endswith(("/ready", "/live"))


class BodyTimeout(TimeoutError):
    """The request body did not arrive whole within ``--http-body-timeout-s`` (a ``TimeoutError``: aiohttp's
    own drain of an unread body ends quietly on it)."""


def _raw_response(status: str, message: str) -> bytes:
    body = (message + "\n").encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            + (f"Retry-After: {RETRY_AFTER_S}\r\n" if status.startswith("503") else "")
            + "Connection: close\r\n\r\n")
    return head.encode() + body


class ConnectionGuard:
    """The HTTP port's deadlines and connection cap: :meth:`protocol_factory` for the listener,
    :meth:`middleware` for the application."""

    def __init__(self, *, max_connections: int, header_timeout_s: float, body_timeout_s: float,
                 on_cut: Callable[[str], None] | None = None,
                 on_open_changed: Callable[[int], None] | None = None) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self._on_cut = on_cut
        self._on_open_changed = on_open_changed
        self.open = 0  # connections inside the cap
        self.probe_open = 0  # reserve connections (probes only)
        self.lingering = 0  # refused connections still being drained
        self.cut_counts: dict[str, int] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (when last logged, count then)

    def protocol_factory(self, server: web.Server) -> Callable[[], RequestHandler]:
        """What ``loop.create_server`` calls per accepted connection: aiohttp's handler with the guards."""
        kwargs = dict(server._kwargs)  # the handler arguments the AppRunner gave; aiohttp keeps them here
        loop = asyncio.get_running_loop()

        def make() -> RequestHandler:
            return GuardedHandler(self, server, loop=loop, **kwargs)

        return make

    # ------------------------------------------------------------------ slots

    def take(self) -> str | None:
        """``"open"`` inside the cap, ``"probe"`` in the reserve, ``None``: refuse."""
        if self.open < self.max_connections:
            self.open += 1
            slot: str | None = "open"
        elif self.probe_open < PROBE_RESERVE:
            self.probe_open += 1
            slot = "probe"
        else:
            slot = None
        self._changed()
        return slot

    def release(self, slot: str) -> None:
        if slot == "open":
            self.open -= 1
        else:
            self.probe_open -= 1
        self._changed()

    def _changed(self) -> None:
        if self._on_open_changed is not None:
            self._on_open_changed(self.open + self.probe_open)

    def cut(self, reason: str, peer: Any = None) -> None:
        """Count a connection closed or refused by a guard; log one INFO line per reason per 10 s (a flood
        must not flood the log)."""
        count = self.cut_counts[reason] = self.cut_counts.get(reason, 0) + 1
        if self._on_cut is not None:
            self._on_cut(reason)
        now = time.monotonic()
        last, count_then = self._logged.get(reason, (-float("inf"), 0))
        if now - last >= _CUT_LOG_INTERVAL_S:
            self._logged[reason] = (now, count)
            log.info("HTTP connection from %s closed: %s (%d since start, %d since the last line)", peer,
                     reason.replace("_", " "), count, count - count_then)

    def refuse(self, transport: asyncio.BaseTransport) -> bool:
        """Beyond the cap and the reserve: a raw 503 and close; ``True`` while the connection lingers."""
        self.cut("connection_limit", transport.get_extra_info("peername"))
        assert isinstance(transport, asyncio.Transport)
        transport.write(_raw_response(
            "503 Service Unavailable",
            f"too many open HTTP connections (--max-http-connections {self.max_connections}); retry later"))
        if self.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return False
        # Close the write side and read (and drop) what the client sends until it closes or the linger ends:
        # closing with its request unread would send a reset that can destroy the 503 before it is read.
        transport.write_eof()
        self.lingering += 1
        asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.abort)
        return True

    # ------------------------------------------------------------------ body deadline, reserve

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        protocol = request.protocol
        reserve = isinstance(protocol, GuardedHandler) and protocol.slot == "probe"
        if reserve and not is_probe(request.method, request.path):
            self.cut("connection_limit", request.remote)
            refusal = web.json_response(
                {"error": f"too many open HTTP connections (--max-http-connections {self.max_connections}); "
                          "retry later"},
                status=503, headers={"Retry-After": str(RETRY_AFTER_S),
                                     "retry-after-ms": str(RETRY_AFTER_S * 1000)})
            refusal.force_close()
            return refusal
        response = await self._within_body_deadline(request, handler)
        if reserve:
            response.force_close()  # a reserve connection carries one probe
        return response

    async def _within_body_deadline(
        self, request: web.Request, handler: _Handler
    ) -> web.StreamResponse:
        if not request.body_exists or request.content.is_eof():
            return await handler(request)
        expired: list[bool] = []

        def expire() -> None:
            if not request.content.is_eof():
                expired.append(True)
                request.content.set_exception(BodyTimeout(
                    f"the request body did not arrive within {self.body_timeout_s:g} s "
                    "(--http-body-timeout-s)"))

        timer = asyncio.get_running_loop().call_later(self.body_timeout_s, expire)
        try:
            response = await handler(request)
        except BodyTimeout:
            response = None
        finally:
            timer.cancel()
        if expired:  # whatever the handler made of its failed read: the answer is 408
            self.cut("body_timeout", request.remote)
            response = web.json_response(
                {"error": f"the request body did not arrive within {self.body_timeout_s:g} s"}, status=408)
            response.force_close()
        assert response is not None
        return response


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol with the connection cap and the head deadline."""

    __slots__ = ("_guard", "_header_timer", "_lingering", "slot")

    def __init__(self, guard: ConnectionGuard, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self.slot: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.slot = self._guard.take()
        if self.slot is None:
            self._lingering = self._guard.refuse(transport)
            return
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        timeout = self._guard.header_timeout_s
        if self.slot == "probe":
            timeout = min(timeout, PROBE_HEADER_TIMEOUT_S)
        self._header_timer = self._loop.call_later(timeout, self._header_deadline)

    def _waiting_for_head(self) -> bool:
        """Between requests: the handler waits for the next request's head, none is queued or upgraded."""
        waiter = self._waiter
        return (waiter is not None and not waiter.done() and not self._messages and not self._upgraded
                and not self._request_in_progress)

    def data_received(self, data: bytes) -> None:
        if self.slot is None:
            return  # refused: dropped while it lingers
        if self._header_timer is None and data and self._waiting_for_head():
            self._arm()  # the first byte of a keep-alive connection's next request
        super().data_received(data)
        if self._header_timer is not None and (self._messages or self._upgraded):
            self._header_timer.cancel()  # the head is complete
            self._header_timer = None

    def _header_deadline(self) -> None:
        # Armed when a head began (the connection opened, or a byte came while waiting for the next request)
        # and cancelled as soon as a head is complete: firing means no head arrived in time.
        self._header_timer = None
        if self.transport is None or self._force_close or self._close or self._upgraded:
            return
        self._guard.cut("header_timeout", self.transport.get_extra_info("peername"))
        self.transport.write(_raw_response(
            "408 Request Timeout",
            f"the request head did not arrive within {self._guard.header_timeout_s:g} s "
            "(--http-header-timeout-s)"))
        self.force_close()  # closes the transport once the 408 is written

    def eof_received(self) -> None:
        if self.slot is not None:
            super().eof_received()
        # else a refused client closed: returning None closes our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.slot is None:
            if self._lingering:
                self._lingering = False
                self._guard.lingering -= 1
            return
        slot, self.slot = self.slot, None
        self._lingering = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._guard.release(slot)
        super().connection_lost(exc)


class AcceptErrorLogLimit(logging.Filter):
    """On the ``asyncio`` logger: one ``accept() out of system resource`` record per ``interval_s`` goes
    through (without its traceback, with the count held back since the last one); each is counted."""

    def __init__(self, interval_s: float = ACCEPT_LOG_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.counters: list[Callable[[], None]] = []
        self._last = -float("inf")
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if _ACCEPT_MESSAGE not in str(record.msg):
            return True
        for count in list(self.counters):
            count()
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._held += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = ("socket.accept() out of system resource (%s): new connections wait in the backlog; "
                      "%d more in the last %.0f s not logged (at most one line per %.0f s)")
        record.args = (exc or "no detail", self._held, min(now - self._last, 1e9), self.interval_s)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._last = now
        self._held = 0
        return True


_accept_limit: AcceptErrorLogLimit | None = None


def install_accept_log_limit() -> AcceptErrorLogLimit:
    """The process's one :class:`AcceptErrorLogLimit`, on the ``asyncio`` logger (idempotent)."""
    global _accept_limit
    if _accept_limit is None:
        _accept_limit = AcceptErrorLogLimit()
        logging.getLogger("asyncio").addFilter(_accept_limit)
    return _accept_limit


class GuardedSite(web.BaseSite):
    """aiohttp's ``TCPSite`` with the guard's protocol factory (and the head deadline on TLS handshakes)."""

    __slots__ = ("_bound_port", "_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, *, host: str | None, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._guard = guard
        self._host = host
        self._port = port
        self._bound_port = port

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host or '0.0.0.0'}:{self.bound_port}"

    @property
    def bound_port(self) -> int:
        """The port listened on (the one the OS picked for port 0)."""
        return self._bound_port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocol_factory(server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=True,
            ssl_handshake_timeout=self._guard.header_timeout_s if self._ssl_context else None,
        )
        if self._server.sockets:
            self._bound_port = int(self._server.sockets[0].getsockname()[1])
