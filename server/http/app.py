"""The HTTP listener (``--http-port``): one aiohttp application in the server's own event loop.

It carries the Open Inference Protocol REST front end (``/v2``, :mod:`oip_rest`) and, when present, the web
page and its ``/v1`` API (:mod:`web`), with the gRPC port's TLS settings (and client certificates for
mutual TLS) and bearer tokens. :func:`build_http_app` is the one place routes are registered;
:class:`HttpFrontEnd` starts and stops the listener for ``EmotionServer``.

Shutdown (``EmotionServer.stop``): readiness answers 503 from the start of the drain; when gRPC sends GOAWAY
the listener closes (no new connections) while the connections already open finish their calls; they are
closed once the core is idle.
"""

from __future__ import annotations

import importlib.util
import logging
import ssl

from aiohttp import web

from emotion2vec_serving.server.auth import SecurityConfigError, TokenStore, read_pem
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.config import Settings

__all__ = ["HttpFrontEnd", "build_http_app", "ssl_context"]

log = logging.getLogger(__name__)

#: Room for the JSON envelope around the largest audio a call may carry.
_ENVELOPE_BYTES = 64 * 1024


def build_http_app(
    core: EmotionCore, settings: Settings, *, tokens: TokenStore | None = None
) -> web.Application:
    """The application: ``/v2`` (Open Inference Protocol REST), then the web page's routes when installed.

    ``tokens``: accepted bearer tokens (``None``: no authentication), the same store the gRPC port uses.
    The web module's ``add_routes`` runs here, before the application starts, so it may add middlewares.
    """
    from emotion2vec_serving.server.http import oip as oip_rest

    app = web.Application(client_max_size=settings.max_message_bytes + _ENVELOPE_BYTES)
    oip_rest.add_routes(app, core, tokens=tokens)
    if importlib.util.find_spec("emotion2vec_serving.server.http.web") is not None:
        from emotion2vec_serving.server.http import web as web_page

        web_page.add_routes(app, core, settings, tokens=tokens)
    return app


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the HTTP port from the gRPC port's PEM files (client certificates required when a client CA
    is set); ``None`` for plaintext."""
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if not cert and not key:
        if ca:
            raise SecurityConfigError("a client CA (mutual TLS) needs a server certificate and key as well")
        return None
    if not cert or not key:
        raise SecurityConfigError("TLS needs both a certificate and a private key")
    for path, what in ((cert, "TLS certificate"), (key, "TLS private key")):
        read_pem(path, what)  # the same checks and messages as the gRPC port
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca:
        read_pem(ca, "client CA")
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class HttpFrontEnd:
    """Runs :func:`build_http_app` on ``settings.http_port`` (0: a free port) in the running loop."""

    def __init__(self, core: EmotionCore, settings: Settings, *, tokens: TokenStore | None = None) -> None:
        self._core = core
        self._settings = settings
        self._tokens = tokens
        self._runner: web.AppRunner | None = None
        self._draining = False
        self.port: int | None = None

    async def start(self) -> int:
        s = self._settings
        context = ssl_context(s)
        app = build_http_app(self._core, s, tokens=self._tokens)
        app.on_response_prepare.append(self._close_when_draining)
        # Closing waits for the requests in progress up to the drain grace, then cancels them.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=s.drain_grace_s)
        await runner.setup()
        host = s.host.strip("[]") or None
        site = web.TCPSite(runner, host=None if host in ("::", "0.0.0.0") else host, port=s.http_port,
                           ssl_context=context, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # aiohttp exposes the bound sockets only here
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else s.http_port
        log.info("HTTP (Open Inference Protocol REST /v2) on %s://%s:%d", "https" if context else "http",
                 s.host, self.port)
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
        if runner is not None:
            for site in list(runner.sites):
                await site.stop()
            await self._core.wait_idle(self._settings.drain_grace_s)
            await runner.shutdown()
            await runner.cleanup()
