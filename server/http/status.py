"""HTTP front ends' status map: ``ErrorKind`` -> HTTP status, JSON body and headers (no HTTP library here)."""

from __future__ import annotations

import math
from typing import Any

from emotion2vec_serving.clients.wire import RETRY_AFTER_HEADER, RETRY_AFTER_MS_KEY
from emotion2vec_serving.server.calls.errors import ErrorKind, Failure

__all__ = ["HTTP_STATUS", "error_body", "error_headers", "http_error", "http_status"]

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.OK: 200,
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.RESOURCE_EXHAUSTED: 429,
    ErrorKind.DEADLINE_EXCEEDED: 504,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.FAILED_PRECONDITION: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.CANCELLED: 499,  # client closed the request (nginx convention); rarely seen by anyone
    ErrorKind.INTERNAL: 500,
}


def http_status(failure: Failure) -> int:
    return HTTP_STATUS[failure.kind]


def error_body(failure: Failure) -> dict[str, Any]:
    """The JSON body: ``{"error": message}`` (the Open Inference Protocol's error object)."""
    return {"error": failure.message}


def error_headers(failure: Failure) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms`` when a wait is suggested;
    ``WWW-Authenticate`` on 401."""
    headers: dict[str, str] = {}
    if failure.retry_after_ms is not None:
        ms = max(1, failure.retry_after_ms)
        headers[RETRY_AFTER_HEADER] = str(max(1, math.ceil(ms / 1000)))
        headers[RETRY_AFTER_MS_KEY] = str(ms)
    if failure.kind is ErrorKind.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def http_error(failure: Failure) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) for one failed call."""
    return http_status(failure), error_body(failure), error_headers(failure)
