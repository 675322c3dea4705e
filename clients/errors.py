"""Client exceptions: gRPC status codes translated at one boundary.

Every exception carries the server's message (``details``) and the original status code, so callers can
catch a few meaningful types instead of inspecting ``grpc.RpcError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from .wire import RETRY_AFTER_MS_KEY

__all__ = [
    "DeadlineExceeded",
    "EmotionClientError",
    "InvalidAudio",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "retry_after_s",
]



class EmotionClientError(Exception):
    """Base class of every error raised by the emotion client."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        #: The gRPC status code the server (or the channel) returned; None for client-side errors.
        self.code = code
        #: The server's ``retry-after-ms`` hint in seconds, when it sent one.
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.code.name}: {self.message}"


class InvalidAudio(EmotionClientError):
    """The audio was refused (INVALID_ARGUMENT, OUT_OF_RANGE): undecodable, too short, too long, bad PCM."""


class Overloaded(EmotionClientError):
    """The server shed the request (RESOURCE_EXHAUSTED): its queue is full. Retried by default."""


class Unavailable(EmotionClientError):
    """No server could be reached, or it is draining (UNAVAILABLE). Retried by default."""


class DeadlineExceeded(EmotionClientError):
    """The call's deadline passed (DEADLINE_EXCEEDED), on the client or in the server's queue."""


class Unauthenticated(EmotionClientError):
    """The server requires a valid bearer token (UNAUTHENTICATED)."""


class PermissionDenied(EmotionClientError):
    """The token is valid but not allowed to call this method (PERMISSION_DENIED)."""


class NotFound(EmotionClientError):
    """The method or service does not exist on the server (NOT_FOUND, UNIMPLEMENTED)."""


class ServerError(EmotionClientError):
    """Any other failure (INTERNAL, UNKNOWN, CANCELLED, ...): a bug or a crash on the server."""


_BY_CODE: dict[grpc.StatusCode, type[EmotionClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidAudio,
    grpc.StatusCode.OUT_OF_RANGE: InvalidAudio,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidAudio,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNIMPLEMENTED: NotFound,
}


def retry_after_s(metadata: Iterable[Any] | None) -> float | None:
    """The ``retry-after-ms`` hint from trailing metadata, in seconds; None when absent or malformed."""
    if metadata is None:
        return None
    for item in metadata:
        # Sync calls give (key, value) tuples; aio calls give a grpc.aio.Metadata of the same pairs.
        key, value = item[0], item[1]
        if key != RETRY_AFTER_MS_KEY:
            continue
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        try:
            ms = float(value)
        except (TypeError, ValueError):
            return None
        return ms / 1000.0 if ms >= 0 else None
    return None


def _status_parts(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str, float | None]:
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    trailing_fn = getattr(exc, "trailing_metadata", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = details_fn() if callable(details_fn) else None
    trailing = trailing_fn() if callable(trailing_fn) else None
    return code or grpc.StatusCode.UNKNOWN, details or str(exc), retry_after_s(trailing)


def from_rpc_error(exc: grpc.RpcError) -> EmotionClientError:
    """Translate a gRPC error (sync or aio) into the matching client exception."""
    code, details, hint = _status_parts(exc)
    cls = _BY_CODE.get(code, ServerError)
    return cls(details, code=code, retry_after_s=hint)
