"""The HTTP listener (``--http-port``): one aiohttp application in the server's own event loop.

It carries the Open Inference Protocol REST front end (``/v2``, ``http/oip.py``) and the web front end: the
page (``http/page.py``), its ``/v1`` API (``http/v1.py``), WebSocket stream (``http/websocket.py``) and
OpenAPI description (``http/openapi.py``), with the gRPC port's TLS settings (``server/tls.py``: client
certificates for mutual TLS, re-read when the files change) and bearer-token check (``server/auth.py``
through ``http/auth.py``).
:func:`build_http_app` is the one place routes are registered; :class:`HttpFrontEnd` starts and stops the
listener for ``EmotionServer``, behind the slow-client guards of ``http/connections.py`` (head and body
deadlines, the connection cap, rate-limited accept errors).

Shutdown (``EmotionServer.stop``): readiness answers 503 from the start of the drain; when gRPC sends GOAWAY
the listener closes (no new connections) while the connections already open finish their calls; they are
closed once the core is idle.
"""

from __future__ import annotations

import logging
import ssl

from aiohttp import web

from emotion2vec_serving.server.auth import BearerAuth
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.http import client_errors, oip, openapi, page, v1, websocket
from emotion2vec_serving.server.http.auth import HttpAuth
from emotion2vec_serving.server.http.connections import (
    ConnectionGuard,
    GuardedSite,
    default_max_connections,
    install_accept_log_limit,
)
from emotion2vec_serving.server.tls import server_ssl_context

__all__ = ["HttpFrontEnd", "build_http_app", "ssl_context"]

log = logging.getLogger(__name__)

#: Room for the JSON envelope around the largest audio a call may carry.
_ENVELOPE_BYTES = 64 * 1024


def build_http_app(
    core: EmotionCore, settings: Settings, *, auth: BearerAuth | None = None,
    guard: ConnectionGuard | None = None,
) -> web.Application:
    """The application: ``/v2`` (Open Inference Protocol REST), then the web page and its ``/v1`` API.

    ``auth``: the server's bearer-token check (``None``: no authentication), the same one the gRPC port uses.
    ``guard``: the listener's slow-client guard, whose middleware holds the body deadline.
    Routes and middlewares are added here, before the application starts.
    """
    app = web.Application(client_max_size=settings.max_message_bytes + _ENVELOPE_BYTES,
                          middlewares=[guard.middleware] if guard is not None else [])
    http_auth = HttpAuth(auth)
    oip.add_routes(app, core, http_auth)
    page.add_routes(app, settings)
    openapi.add_routes(app, settings)
    websocket.add_routes(app, core, settings, http_auth)
    v1.add_routes(app, core, settings, http_auth)  # last: it ends with the catch-all 404 under /v1
    client_errors.install(app)  # innermost middleware: a body aiohttp cannot read or decode -> 400
    return app


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the HTTP port from the gRPC port's PEM files, rotated like gRPC's; ``None`` for plaintext."""
    return server_ssl_context(settings.tls_cert_file or None, settings.tls_key_file or None,
                              settings.tls_client_ca_file or None)


class HttpFrontEnd:
    """Runs :func:`build_http_app` on ``settings.http_port`` (0: a free port) in the running loop."""

    def __init__(self, core: EmotionCore, settings: Settings, *, auth: BearerAuth | None = None) -> None:
        self._core = core
        self._settings = settings
        self._auth = auth
        self._runner: web.AppRunner | None = None
        self._draining = False
        self.port: int | None = None
        self.guard: ConnectionGuard | None = None

    async def start(self) -> int:
        s = self._settings
        context = ssl_context(s)
        metrics = self._core.metrics
        guard = ConnectionGuard(
            max_connections=s.max_http_connections or default_max_connections(),
            header_timeout_s=s.http_header_timeout_s, body_timeout_s=s.http_body_timeout_s,
            on_cut=metrics.http_connection_cut, on_open_changed=metrics.http_connections.set,
        )
        limit = install_accept_log_limit()
        limit.counters.append(metrics.accept_error)
        self.guard = guard
        app = build_http_app(self._core, s, auth=self._auth, guard=guard)
        app.on_response_prepare.append(self._close_when_draining)
        # Closing waits for the requests in progress up to the drain grace, then cancels them.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=s.drain_grace_s)
        await runner.setup()
        host = s.host.strip("[]") or None
        site = GuardedSite(runner, guard, host=None if host in ("::", "0.0.0.0") else host, port=s.http_port,
                           ssl_context=context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = site.bound_port
        log.info("HTTP (Open Inference Protocol REST /v2) on %s://%s:%d (at most %d connections, head within "
                 "%g s, body within %g s)", "https" if context else "http", s.host, self.port,
                 guard.max_connections, guard.header_timeout_s, guard.body_timeout_s)
        return self.port

    def begin_drain(self) -> None:
        """From now on every HTTP response says ``Connection: close`` (HTTP/1.1's GOAWAY): a keep-alive
        client opens its next request on a new connection, which the load balancer sends elsewhere."""
        self._draining = True

    async def _close_when_draining(self, request: web.Request, response: web.StreamResponse) -> None:
        if self._draining and not isinstance(response, web.WebSocketResponse):
            response.force_close()  # aiohttp closes the connection after this response
            response.headers["Connection"] = "close"  # and the client knows before it sends another

    async def stop(self) -> None:
        """Drain the HTTP side: close the listener at once (no new connections), let the connections already
        open finish their calls (WebSocket streams and keep-alive requests too, like gRPC streams after
        GOAWAY; what still arrives once the core drains gets 503), then close them."""
        runner, self._runner = self._runner, None
        counters = install_accept_log_limit().counters
        if self._core.metrics.accept_error in counters:
            counters.remove(self._core.metrics.accept_error)
        if runner is not None:
            for site in list(runner.sites):
                await site.stop()
            await self._core.wait_idle(self._settings.drain_grace_s)
            await runner.shutdown()
            await runner.cleanup()
