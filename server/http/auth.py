"""The HTTP side of the bearer-token check (``server.auth.BearerAuth``), for every HTTP front end: the
Open Inference Protocol REST (``/v2``), the web API (``/v1``) and its WebSocket stream.

Credentials come from the ``Authorization`` header, and for a WebSocket also from the subprotocol
``bearer.<token>`` (browsers cannot set headers on a WebSocket) or the ``"token"`` of its config message.
A refusal is counted by ``BearerAuth`` (once, the same way as over gRPC) and answered as the
``Unauthenticated`` failure: 401 with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from emotion2vec_serving.server.auth import BearerAuth, Credentials
from emotion2vec_serving.server.calls.errors import Failure, Unauthenticated, classify

__all__ = ["HttpAuth", "credentials"]


def credentials(request: web.Request, *, websocket: bool = False) -> Credentials:
    """What an HTTP request presented: its ``Authorization`` headers (and offered WebSocket subprotocols)."""
    offered: list[str] = []
    if websocket:
        offered = [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")]
    return Credentials(authorization=request.headers.getall(hdrs.AUTHORIZATION, []), subprotocols=offered)


class HttpAuth:
    """``BearerAuth`` for aiohttp requests; ``auth=None`` (no tokens configured) lets everything through."""

    def __init__(self, auth: BearerAuth | None) -> None:
        self.auth = auth

    @property
    def enabled(self) -> bool:
        return self.auth is not None

    def check(self, request: web.Request, *, protocol: str, rpc: str | None,
              creds: Credentials | None = None) -> Failure | None:
        """``None`` when ``request`` may go on (no tokens, an exempt path, an accepted token), else the
        failure to answer (already counted)."""
        if self.auth is None or self.auth.is_exempt(request.path, request.method):
            return None
        return self._refusal(self.auth.check(creds or credentials(request), protocol=protocol, rpc=rpc))

    def check_credentials(self, creds: Credentials, *, protocol: str, rpc: str) -> Failure | None:
        """The same check for credentials that arrive inside the protocol (a WebSocket config message)."""
        if self.auth is None:
            return None
        return self._refusal(self.auth.check(creds, protocol=protocol, rpc=rpc))

    @staticmethod
    def _refusal(message: str | None) -> Failure | None:
        return None if message is None else classify(Unauthenticated(message))
