"""JSON responses of the web front end (``/v1``, the page's errors): UTF-8, no NaN, errors as
``{"error": message}`` with the status and headers of ``http/status.py``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from emotion2vec_serving.server.calls.errors import Failure
from emotion2vec_serving.server.http.status import http_error

__all__ = ["failure_response", "json_response"]


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, allow_nan=False),
        status=status, content_type="application/json", charset="utf-8", headers=headers,
    )


def failure_response(failure: Failure) -> web.Response:
    status, body, headers = http_error(failure)
    return json_response(body, status, headers)
