"""Asyncio client for the emotion recognition service.

>>> async with AsyncEmotionClient("localhost:50051") as client:
...     result = await client.recognize("speech.wav")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from emotion.v1 import emotion_pb2
from grpc_health.v1 import health_pb2

from . import results as R
from ._requests import (
    ChannelMode,
    Granularity,
    PcmName,
    PreparedStream,
    Segmentation,
    as_pcm_bytes,
    embed_request,
    prepare_stream,
    recognize_request,
)
from .audio import AudioInput
from .channel import ChannelSettings, TLSConfig, create_aio_channel
from .client import SERVICE_NAME, _ClientBase
from .errors import EmotionClientError, from_rpc_error
from .retry import RetryPolicy

__all__ = ["AsyncEmotionClient"]

T = TypeVar("T")


class AsyncEmotionClient(_ClientBase[grpc.aio.Channel]):
    """Asyncio client with the same methods as ``EmotionClient``, awaited.

    Create it inside the event loop that uses it (the channel binds to that loop). Concurrent calls share
    one channel. Arguments are those of ``EmotionClient``.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        tls: TLSConfig | None = None,
        token: str | None = None,
        timeout_s: float | None = 30.0,
        retry: RetryPolicy | None = None,
        settings: ChannelSettings | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        super().__init__(
            settings or ChannelSettings(target=target, tls=tls, token=token),
            timeout_s,
            retry,
            channel,
            create_aio_channel,
        )

    async def close(self) -> None:
        """Close the channel (when this client created it)."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncEmotionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------ calls

    async def recognize(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        granularity: Granularity = "utterance",
        embedding: bool = False,
        smoothing_frames: int = 0,
        priority: int = 0,
        channels: ChannelMode = "mix",
        channel_names: Sequence[str] = (),
        timeout: float | None = None,
    ) -> R.Recognition:
        """Classify one utterance (see ``EmotionClient.recognize``)."""
        request = recognize_request(
            audio, sample_rate, granularity, embedding, smoothing_frames, priority, channels, channel_names
        )
        response = await self._unary(self._stub.Recognize, request, timeout)
        return R.recognition_from_proto(response, granularity)

    async def embed(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        frames: bool = False,
        priority: int = 0,
        channels: ChannelMode = "mix",
        channel_names: Sequence[str] = (),
        timeout: float | None = None,
    ) -> R.EmbeddingResult:
        """The utterance embedding, optionally with frame embeddings (see ``EmotionClient.embed``)."""
        request = embed_request(audio, sample_rate, frames, priority, channels, channel_names)
        return R.embedding_from_proto(await self._unary(self._stub.Embed, request, timeout))

    async def model_info(self, *, timeout: float | None = None) -> R.ModelInfo:
        """Describe the served model."""
        response = await self._unary(self._stub.GetModelInfo, emotion_pb2.GetModelInfoRequest(), timeout)
        return R.model_info_from_proto(response)

    async def health(self, service: str = SERVICE_NAME, *, timeout: float | None = None) -> str:
        """The gRPC health status of ``service`` ("" = the whole server), e.g. ``"SERVING"``."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._unary(self._health.Check, request, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def wait_until_serving(self, timeout: float = 30.0, service: str = SERVICE_NAME) -> None:
        """Wait until ``service`` reports SERVING; raise ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: str | Exception = "no answer"
        while time.monotonic() < deadline:
            try:
                last = await self.health(service, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except EmotionClientError as exc:
                last = exc
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.settings.target} not SERVING after {timeout:.1f} s (last: {last})")

    async def stream(
        self,
        audio: Any,
        *,
        sample_rate: int | None = None,
        channels: int = 1,
        encoding: PcmName = "f32le",
        segmentation: Segmentation | None = None,
        embedding: bool = False,
        priority: int = 0,
        chunk_ms: float = 100.0,
        realtime: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[R.Segment | R.StreamSummary]:
        """Yield segments as the server finishes them, then the summary (see ``EmotionClient.stream``).

        ``audio`` may also be an async iterable of PCM chunks.
        """
        if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
            # Decoding a file blocks: keep it off the event loop.
            prepared = await asyncio.to_thread(
                prepare_stream,
                audio,
                sample_rate,
                channels,
                encoding,
                segmentation,
                embedding,
                priority,
                chunk_ms,
            )
        else:
            prepared = prepare_stream(
                audio, sample_rate, channels, encoding, segmentation, embedding, priority, chunk_ms
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            received = False
            call = self._stub.StreamRecognize(
                self._stream_requests(prepared, realtime),
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic()),
                metadata=self._metadata,
            )
            try:
                async for message in call:
                    received = True
                    item = R.stream_item_from_proto(message)
                    if item is not None:
                        yield item
                return
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if received or not prepared.replayable:
                    raise error from exc
                await self._sleep_before_retry(error, attempt, deadline, exc)
            finally:
                call.cancel()

    # ------------------------------------------------------------------------------------------ internals

    async def _stream_requests(
        self, prepared: PreparedStream, realtime: bool
    ) -> AsyncIterator[emotion_pb2.StreamRecognizeRequest]:
        yield emotion_pb2.StreamRecognizeRequest(config=prepared.config)
        encoding = prepared.encoding
        start = time.monotonic()
        sent_s = 0.0
        source = prepared.chunk_source() if prepared.replayable else prepared.chunk_source
        async for chunk in _as_async_iterator(source):
            data = as_pcm_bytes(chunk, encoding)
            if data:
                if realtime:
                    await asyncio.sleep(max(0.0, start + sent_s - time.monotonic()))
                yield emotion_pb2.StreamRecognizeRequest(audio=data)
                sent_s += len(data) / prepared.bytes_per_second

    async def _unary(self, method: Callable[..., Awaitable[T]], request: Any, timeout: float | None) -> T:
        limit = self.timeout_s if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                await self._sleep_before_retry(from_rpc_error(exc), attempt, deadline, exc, self._unary_retry)

    async def _sleep_before_retry(
        self, error: EmotionClientError, attempt: int, deadline: float | None, cause: BaseException,
        policy: RetryPolicy | None = None,
    ) -> None:
        retry = policy or self.retry
        delay = retry.delay_before_retry(error.code, attempt, error.retry_after_s, deadline, self._rng)
        if delay is None:
            raise error from cause
        await asyncio.sleep(delay)


async def _as_async_iterator(source: Any) -> AsyncIterator[Any]:
    """Iterate ``source`` whether it is an async or a plain iterable (chunks are pulled on the loop)."""
    if hasattr(source, "__aiter__"):
        async for chunk in source:
            yield chunk
    else:
        for chunk in source:
            yield chunk
