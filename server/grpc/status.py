"""gRPC front ends' status map: ``ErrorKind`` -> ``grpc.StatusCode`` and the trailing metadata to send."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from emotion2vec_serving.clients.wire import RETRY_AFTER_MS_KEY, RETRY_PUSHBACK_KEY
from emotion2vec_serving.server.calls.errors import ErrorKind, Failure

__all__ = ["GRPC_CODES", "abort", "status_code", "trailing_metadata"]

GRPC_CODES: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.OK: grpc.StatusCode.OK,
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


def status_code(failure: Failure) -> grpc.StatusCode:
    return GRPC_CODES[failure.kind]


def trailing_metadata(failure: Failure) -> tuple[tuple[str, str], ...]:
    """``retry-after-ms`` and ``grpc-retry-pushback-ms`` (same value) when the failure suggests a wait."""
    if failure.retry_after_ms is None:
        return ()
    value = str(max(1, failure.retry_after_ms))
    return ((RETRY_AFTER_MS_KEY, value), (RETRY_PUSHBACK_KEY, value))


async def abort(context: grpc.aio.ServicerContext[Any, Any], failure: Failure) -> NoReturn:
    """End the call with the failure's status, message and trailing metadata (raises)."""
    await context.abort(status_code(failure), failure.message, trailing_metadata=trailing_metadata(failure))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
