"""The gRPC port's concurrency cap, with health checks outside it, and the count of calls in progress.

gRPC's own ``maximum_concurrent_rpcs`` counts every RPC, health checks included: with the cap reached by
slow calls, ``grpc.health.v1.Health/Check`` got RESOURCE_EXHAUSTED and Kubernetes restarted busy, healthy
pods. :class:`RpcAdmission` replaces it as a server interceptor:

- Calls to exempt methods (grpc.health.v1, the Open Inference Protocol's live/ready probes) are never
  counted or refused.
- Past ``limit`` calls in progress, a call is refused with RESOURCE_EXHAUSTED (and the usual retry hint)
  *before its handler runs and before its request message is read*: the refusal is a handler that does not
  consume the request stream, so a flood of large requests cannot grow memory beyond ``limit`` messages.
- Every admitted call is counted from the moment gRPC dispatches it until its handler returns. Unary-request
  handlers are run as stream-request handlers that read their one message themselves, so the slot is
  released even when the client cancels before sending it (gRPC would otherwise never call the handler).
- :meth:`wait_idle` waits until no admitted call is left: the drain uses it after GOAWAY (``server.stop``)
  to know that every call gRPC accepted has finished.
- With ``safe_deserializers``, it also does what ``server/grpc/malformed.py``'s ``MalformedRequests`` does
  (request bytes that do not parse -> INVALID_ARGUMENT), so the server needs one interceptor, not two, when
  tokens are off (issue 24, a lean request path). Being outermost, it sees the handler every other
  interceptor returned, so the safe deserializer is applied to the handler that really reads the request.

Cost per call (issue 24): the wrapped handlers are built once per method and reused (nothing is allocated
per call but the slot count), and a unary request is read with ``context.read()``: iterating the request
stream would start an async generator per call that is left unfinished (and closed later by a task of its
own).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from emotion2vec_serving.clients.wire import PROTOCOL_EMOTION_V1, PROTOCOL_OIP_GRPC
from emotion2vec_serving.server.auth import HEALTH_METHOD_PREFIX
from emotion2vec_serving.server.calls.errors import ErrorKind, Failure
from emotion2vec_serving.server.grpc.malformed import Malformed, safe_handler, safe_request_deserializer
from emotion2vec_serving.server.grpc.status import trailing_metadata

__all__ = ["EXEMPT_PREFIXES", "RpcAdmission", "protocol_and_rpc"]

#: Never counted or refused: probes must answer whatever the load.
EXEMPT_PREFIXES: tuple[str, ...] = (HEALTH_METHOD_PREFIX,)
#: ``emotion_rejections_total`` reason of a call refused by the cap.
REASON = "rpc_limit"
#: gRPC service -> the ``protocol`` label of ``emotion_requests_total``.
_PROTOCOLS = {"emotion.v1.EmotionRecognizer": PROTOCOL_EMOTION_V1,
              "inference.GRPCInferenceService": PROTOCOL_OIP_GRPC}


def protocol_and_rpc(method: str) -> tuple[str, str]:
    """``/emotion.v1.EmotionRecognizer/Recognize`` -> (``emotion_v1``, ``Recognize``): the metrics labels of
    a gRPC method (protocol ``""`` for a service that is neither emotion.v1 nor the OIP)."""
    service, _, rpc = method.lstrip("/").rpartition("/")
    return _PROTOCOLS.get(service, ""), rpc


class RpcAdmission(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Caps the calls in progress at ``limit`` (0: no cap, still counted), exempting ``exempt`` methods.

    ``retry_after_ms`` gives the hint sent with a refusal; ``on_reject(rpc, protocol)`` counts one.
    """

    def __init__(self, limit: int, *, exempt: Sequence[str] = (),
                 retry_after_ms: Callable[[], int] | None = None,
                 on_reject: Callable[[str, str], None] | None = None,
                 safe_deserializers: bool = False) -> None:
        self.limit = limit
        self._exempt_prefixes = EXEMPT_PREFIXES
        self._exempt = frozenset(exempt)
        self._retry_after_ms = retry_after_ms
        self._on_reject = on_reject
        self._safe = safe_deserializers
        self.inflight = 0
        self.rejected = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # method -> (the handler gRPC gave, what to serve it with, counted: True / exempt: False)
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler, bool]] = {}

    def is_exempt(self, method: str) -> bool:
        return method in self._exempt or method.startswith(self._exempt_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        entry = self._handlers.get(method)
        if entry is None or entry[0] is not handler:
            entry = self._build(method, handler)
            self._handlers[method] = entry
        _, served, counted = entry
        if not counted:
            return served
        if self.limit and self.inflight >= self.limit:
            self.rejected += 1
            return self._refusal(method, handler)
        # No await from here to the handler's first line: the slot is released in its ``finally``.
        self.inflight += 1
        self._idle.clear()
        return served

    def _build(self, method: str, handler: grpc.RpcMethodHandler
               ) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler, bool]:
        """What serves ``method`` (built once per handler): the safe deserializer when asked, counted
        unless exempt or synchronous (none of this server's handlers is)."""
        if self.is_exempt(method):
            return handler, safe_handler(method, handler) if self._safe else handler, False
        counted = self._counted(method, handler)
        if counted is None:
            return handler, safe_handler(method, handler) if self._safe else handler, False
        return handler, counted, True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted call is in progress; False when ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s))
        except TimeoutError:
            return False
        return True

    def _release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    # ------------------------------------------------------------------ handlers

    def _refusal(self, method: str, real: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        protocol, rpc = protocol_and_rpc(method)
        if self._on_reject is not None:
            self._on_reject(rpc, protocol)
        retry = self._retry_after_ms() if self._retry_after_ms is not None else None
        failure = Failure(ErrorKind.RESOURCE_EXHAUSTED,
                          f"the server is at its limit of {self.limit} calls in progress; "
                          "retry after a short wait",
                          REASON, retry)
        metadata = trailing_metadata(failure)

        async def refuse(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, failure.message,
                                trailing_metadata=metadata)

        async def refuse_streaming(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, failure.message,
                                trailing_metadata=metadata)
            yield  # pragma: no cover  # makes this an async generator (a streaming-response handler)

        # Request-streaming handlers: gRPC calls them at once, without reading any request message.
        if real.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse_streaming, real.request_deserializer,
                                                         real.response_serializer)
        return grpc.stream_unary_rpc_method_handler(refuse, real.request_deserializer,
                                                    real.response_serializer)

    def _counted(self, method: str, real: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        """``real`` counted (the slot released when it returns), its unary request read by itself; None
        for a synchronous handler (served as it is, not counted)."""
        release = self._release
        behaviour = real.unary_unary or real.unary_stream or real.stream_unary or real.stream_stream
        if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
            return None
        if not real.request_streaming and not real.response_streaming:
            # The hot path (Recognize, ModelInfer...): the malformed-message check fused in, no extra frame.
            safe = self._safe and real.request_deserializer is not None
            des = (safe_request_deserializer(method, real.request_deserializer) if safe
                   else real.request_deserializer)
            unary = real.unary_unary

            async def unary_unary(_requests: AsyncIterator[Any],
                                  context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    request = await _single(context)
                    if safe and type(request) is Malformed:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                    return await unary(request, context)
                finally:
                    release()

            return grpc.stream_unary_rpc_method_handler(unary_unary, des, real.response_serializer)
        if self._safe:
            real = safe_handler(method, real)
        des, ser = real.request_deserializer, real.response_serializer
        if not real.request_streaming:
            unary_stream = real.unary_stream
            if inspect.isasyncgenfunction(unary_stream):

                async def unary_stream_gen(requests: AsyncIterator[Any],
                                           context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                    try:
                        request = await _single(context)
                        async for response in unary_stream(request, context):
                            yield response
                    finally:
                        release()

                return grpc.stream_stream_rpc_method_handler(unary_stream_gen, des, ser)

            async def unary_stream_writer(requests: AsyncIterator[Any],
                                          context: grpc.aio.ServicerContext[Any, Any]) -> None:
                try:
                    request = await _single(context)
                    await unary_stream(request, context)
                finally:
                    release()

            return grpc.stream_stream_rpc_method_handler(unary_stream_writer, des, ser)
        if not real.response_streaming:
            stream_unary = real.stream_unary

            async def counted_stream_unary(requests: AsyncIterator[Any],
                                           context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await stream_unary(requests, context)
                finally:
                    release()

            return grpc.stream_unary_rpc_method_handler(counted_stream_unary, des, ser)
        stream_stream = real.stream_stream
        if inspect.isasyncgenfunction(stream_stream):

            async def counted_stream_gen(requests: AsyncIterator[Any],
                                         context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                try:
                    async for response in stream_stream(requests, context):
                        yield response
                finally:
                    release()

            return grpc.stream_stream_rpc_method_handler(counted_stream_gen, des, ser)

        async def counted_stream_writer(requests: AsyncIterator[Any],
                                        context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                await stream_stream(requests, context)
            finally:
                release()

        return grpc.stream_stream_rpc_method_handler(counted_stream_writer, des, ser)


async def _single(context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    """The one request message of a unary-request call, read by the handler itself."""
    request = await context.read()
    if request is grpc.aio.EOF:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")
    return request
