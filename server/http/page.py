"""The page for people (``GET /``, ``/static/{name}``) and what every web response carries: a strict
Content-Security-Policy and other security headers, and CORS (off unless ``--cors-allow-origins`` lists
origins).

Nothing from a request ever names a file: static assets come from a fixed in-memory table, read once from
the package data (``server/http/static``). The page and its assets are public (they hold no data).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import hdrs, web

from emotion2vec_serving.clients.wire import RETRY_AFTER_HEADER, RETRY_AFTER_MS_KEY
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.http.multipart import too_large
from emotion2vec_serving.server.http.responses import json_response

__all__ = ["CSP", "SECURITY_HEADERS", "STATIC_FILES", "add_routes"]

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


class _Page:
    def __init__(self, settings: Settings) -> None:
        self.limit = settings.max_message_bytes
        self.cors = frozenset(getattr(settings, "cors_allow_origins", ()) or ())

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._static("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._static(request.match_info["name"])

    def _static(self, name: str) -> web.StreamResponse:
        entry = STATIC_FILES.get(name)
        if entry is None:
            return json_response({"error": "not found"}, 404)
        body, kind = entry
        resp = web.Response(body=body, headers={"Cache-Control": "no-cache"})
        resp.headers[hdrs.CONTENT_TYPE] = kind
        return resp

    @web.middleware
    async def cors_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        allowed = origin is not None and ("*" in self.cors or origin in self.cors)
        if request.method == "OPTIONS" and origin is not None and \
                hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            if not allowed:
                return json_response(
                    {"error": f"origin {origin[:100]} is not allowed (--cors-allow-origins)"}, 403)
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
            response = too_large(self.limit)
        if not isinstance(response, web.WebSocketResponse) and not response.prepared:
            for key, value in SECURITY_HEADERS.items():
                response.headers.setdefault(key, value)
        return response


def add_routes(app: web.Application, settings: Settings) -> None:
    """The page and its assets, and two middlewares for every response: CORS (only for
    ``--cors-allow-origins``) and the security headers."""
    page = _Page(settings)
    app.middlewares.append(page.cors_middleware)
    app.middlewares.append(page.headers_middleware)
    app.router.add_get("/", page.index)
    app.router.add_get("/static/{name}", page.static)
