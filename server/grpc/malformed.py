"""Request bytes that are not a valid protobuf message end with INVALID_ARGUMENT, on every gRPC service.

gRPC deserializes a request with the method's ``request_deserializer`` (``RecognizeRequest.FromString``...)
outside any servicer code: a ``DecodeError`` there ended the call with UNKNOWN ("Unexpected <class
'DecodeError'>") and an ERROR traceback in ``grpc._cython.cygrpc``'s log (issue 22).
:class:`MalformedRequests`, a server interceptor for every service of the port (emotion.v1, the Open
Inference Protocol, health, reflection), gives each handler a deserializer that never raises: a message that
does not parse becomes a :class:`Malformed` marker, and the handler's wrapper answers it with
INVALID_ARGUMENT naming the message type, logged at INFO in one line.

- Unary-request methods: the wrapper sees the marker before the servicer runs and aborts the call.
- Streaming-request methods: the request iterator raises :class:`MalformedMessage` (an ``InvalidRequest``)
  where the servicer reads the bad message, so a servicer over the core reports it as its own
  INVALID_ARGUMENT (emotion.v1 ``StreamRecognize``); if the exception leaves the servicer unhandled, the
  wrapper aborts the call with INVALID_ARGUMENT itself.

The server does this inside ``RpcAdmission`` (``safe_deserializers=True``, ``server/grpc/admission.py``):
the outermost interceptor sees the handler every other one returned, so one interceptor does both (issue
24). :class:`MalformedRequests` does it on its own; as a separate interceptor it must be the innermost (the
last in the server's list), so that the others wrap the handler it returns and read requests with its
deserializer. Synchronous handlers (none on this server) are left as they are.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import grpc.aio

from emotion2vec_serving.server.calls.errors import InvalidRequest

__all__ = ["Malformed", "MalformedMessage", "MalformedRequests", "safe_handler", "safe_request_deserializer"]

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Malformed:
    """What the safe deserializer returns for bytes that do not parse: the reason, for the answer."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class MalformedMessage(InvalidRequest):
    """Raised by a streaming call's request iterator at a message that is not a valid protobuf."""


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    cls = getattr(deserializer, "__self__", None)  # ``Message.FromString`` is bound to its class
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "") or "request message")


def safe_request_deserializer(method: str, deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer`` that returns a :class:`Malformed` marker (logged at INFO) instead of raising."""
    type_name = _type_name(deserializer)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or anything else a parser raises on bytes it cannot read
            message = f"the request is not a valid {type_name} protobuf message ({exc})"
            log.info("INVALID_ARGUMENT for %s: %s", method, message)
            return Malformed(message)

    return deserialize


async def _abort(context: Context, malformed: Malformed | MalformedMessage) -> None:
    message = malformed.message if isinstance(malformed, Malformed) else str(malformed)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            raise MalformedMessage(request.message)
        yield request


def safe_handler(method: str, real: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``real`` with the safe deserializer and a behaviour that answers a malformed request (``real`` itself
    when it has no deserializer or is synchronous)."""
    if real.request_deserializer is None:
        return real
    des = safe_request_deserializer(method, real.request_deserializer)
    ser = real.response_serializer
    behaviour = real.unary_unary or real.unary_stream or real.stream_unary or real.stream_stream
    streaming_out = inspect.isasyncgenfunction(behaviour)
    if not (inspect.iscoroutinefunction(behaviour) or streaming_out):
        return real
    if not real.request_streaming and not real.response_streaming:

        async def unary_unary(request: Any, context: Context) -> Any:
            if isinstance(request, Malformed):
                await _abort(context, request)
            return await behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)
    if not real.request_streaming:
        if streaming_out:

            async def unary_stream_gen(request: Any, context: Context) -> AsyncIterator[Any]:
                if isinstance(request, Malformed):
                    await _abort(context, request)
                async for response in behaviour(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream_gen, des, ser)

        async def unary_stream(request: Any, context: Context) -> Any:
            if isinstance(request, Malformed):
                await _abort(context, request)
            return await behaviour(request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)
    if not real.response_streaming:

        async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            try:
                return await behaviour(_checked(requests), context)
            except MalformedMessage as exc:  # the servicer did not answer it itself
                await _abort(context, exc)

        return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)
    if streaming_out:

        async def stream_stream_gen(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            try:
                async for response in behaviour(_checked(requests), context):
                    yield response
            except MalformedMessage as exc:
                await _abort(context, exc)

        return grpc.stream_stream_rpc_method_handler(stream_stream_gen, des, ser)

    async def stream_stream(requests: AsyncIterator[Any], context: Context) -> Any:
        try:
            return await behaviour(_checked(requests), context)
        except MalformedMessage as exc:
            await _abort(context, exc)

    return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)


class MalformedRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Every method's handler with a deserializer that never raises (see the module's docstring).

    The wrapped handler of each method is built once and reused while the service returns the same one.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = safe_handler(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
