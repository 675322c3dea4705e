"""The gRPC admission fast path (issue 24): one interceptor does the cap, the count and the malformed-message
check; the handler that serves a method is built once, not per call; a unary request is read by the handler
itself (the slot is released however the call ends). Real grpc.aio servers on port 0, real stubs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from emotion2vec_serving.server.grpc.admission import RpcAdmission
from tests.support.polling import wait_until_async

METHOD = "/test.Echo/Say"


def _identity(data: bytes) -> bytes:
    return data


def _strict(data: bytes) -> bytes:
    """A request deserializer that refuses bytes like a protobuf parser does."""
    if data.startswith(b"\xff"):
        raise ValueError("Error parsing message")
    return data


async def _say(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    if request == b"slow":
        await asyncio.sleep(30)
    return b"echo:" + request


def _handler() -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(_say, _strict, _identity)


async def test_the_served_handler_is_built_once_per_method_and_every_call_is_counted() -> None:
    admission = RpcAdmission(0, safe_deserializers=True)
    real = _handler()

    async def continuation(_details: Any) -> grpc.RpcMethodHandler:
        return real

    details: Any = type("Details", (), {"method": METHOD, "invocation_metadata": ()})()
    first = await admission.intercept_service(continuation, details)
    second = await admission.intercept_service(continuation, details)
    assert first is second  # no closures or handler objects allocated per call
    assert admission.inflight == 2
    health: Any = type("Details", (), {"method": "/grpc.health.v1.Health/Check", "invocation_metadata": ()})()
    assert await admission.intercept_service(continuation, health) is \
        await admission.intercept_service(continuation, health)
    assert admission.inflight == 2  # exempt: never counted


class _Service(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return _handler() if details.method == METHOD else None


@pytest.fixture
async def served() -> AsyncIterator[tuple[RpcAdmission, grpc.aio.Channel]]:
    admission = RpcAdmission(2, safe_deserializers=True)
    server = grpc.aio.server(interceptors=[admission], options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_Service(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield admission, channel
    finally:
        await channel.close()
        await server.stop(0)


async def test_one_interceptor_answers_malformed_bytes_counts_and_caps(
    served: tuple[RpcAdmission, grpc.aio.Channel],
) -> None:
    admission, channel = served
    say = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
    assert await say(b"hi") == b"echo:hi"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await say(b"\xff\x00")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Error parsing message" in (bad.value.details() or "")
    # Two slow calls fill the cap of 2: the third is refused; cancelling them releases both slots.
    slow = [asyncio.ensure_future(say(b"slow")) for _ in range(2)]
    await wait_until_async(lambda: admission.inflight == 2, timeout_s=10)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await say(b"hi")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for call in slow:
        call.cancel()
    await wait_until_async(lambda: admission.inflight == 0, timeout_s=10)
    assert await say(b"again") == b"echo:again"
    assert admission.inflight == 0
