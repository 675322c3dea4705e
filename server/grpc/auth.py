"""The gRPC side of the bearer-token check: a server interceptor over ``server.auth.BearerAuth``.

Refused calls end with UNAUTHENTICATED before the service handler runs and before the request body is
parsed (the refusal handler takes raw bytes); the check itself, its exemptions (health, reflection when
asked, the OIP probes) and the count of refusals are ``BearerAuth``'s, the same for every protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from emotion2vec_serving.server.auth import BearerAuth, Credentials
from emotion2vec_serving.server.grpc.admission import protocol_and_rpc

__all__ = ["TokenAuthInterceptor"]


def _metadata_values(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> list[str]:
    values: list[str] = []
    for item in metadata or ():
        k, v = item[0], item[1]
        if k.lower() == key:
            values.append(v.decode("latin-1") if isinstance(v, bytes) else v)
    return values


def credentials(metadata: Sequence[tuple[str, str | bytes]] | None) -> Credentials:
    """What a gRPC call presented: its ``authorization`` metadata entries."""
    return Credentials(authorization=_metadata_values(metadata, "authorization"), kind="metadata",
                       name="authorization")


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Requires ``authorization: Bearer <token>`` metadata on every call except ``auth``'s exempt methods;
    unknown methods are refused too, so the API cannot be probed without a token."""

    def __init__(self, auth: BearerAuth) -> None:
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if self.auth.is_exempt(method):
            return await continuation(handler_call_details)
        creds = credentials(handler_call_details.invocation_metadata)
        refusal = self.auth.decide(creds)
        if refusal is None:
            return await continuation(handler_call_details)
        # The refusal must have the same cardinality as the real method, or the server would read the
        # stream wrongly.
        handler = await continuation(handler_call_details)
        protocol, rpc = protocol_and_rpc(method)
        self.auth.count(protocol, rpc if handler is not None else None)
        return _reject_handler(handler, refusal)


def _reject_handler(real: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_streaming(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - unreachable; makes this an async generator for response streaming

    request_streaming = bool(real is not None and real.request_streaming)
    response_streaming = bool(real is not None and real.response_streaming)
    # No request deserializer: the body of a refused call is never parsed.
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_streaming)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_streaming)
    return grpc.unary_unary_rpc_method_handler(abort)
