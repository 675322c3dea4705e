"""Synchronous client for the emotion recognition service.

>>> with EmotionClient("localhost:50051") as client:
...     result = client.recognize("speech.wav")
...     print(result.label, result.confidence)
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import grpc
from emotion.v1 import emotion_pb2, emotion_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
from .channel import ChannelSettings, TLSConfig, create_channel
from .errors import EmotionClientError, from_rpc_error
from .retry import NO_RETRY, RetryPolicy

__all__ = ["SERVICE_NAME", "EmotionClient"]

#: The gRPC service name, also the health-check name Kubernetes readiness probes use.
SERVICE_NAME = "emotion.v1.EmotionRecognizer"

T = TypeVar("T")
ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)


class _ClientBase(Generic[ChannelT]):
    """The state the sync and asyncio clients set up the same way; only their calls differ (await)."""

    def __init__(
        self,
        settings: ChannelSettings,
        timeout_s: float | None,
        retry: RetryPolicy | None,
        channel: ChannelT | None,
        create: Callable[[ChannelSettings], ChannelT],
    ) -> None:
        if retry is not None and channel is None:
            # The caller's own policy drives this client's retry loop: the channel must not retry as well,
            # or the attempts would multiply.
            settings = dataclasses.replace(settings, grpc_retry=None)
        self.settings = settings
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        # Unary calls on a channel whose service config retries them (the default) are retried by gRPC
        # alone, honouring the server's grpc-retry-pushback-ms; streams are replayed by this client's loop.
        self._unary_retry = NO_RETRY if channel is None and settings.grpc_retry is not None else self.retry
        self._owns_channel = channel is None
        self._channel: ChannelT = channel or create(self.settings)
        self._stub = emotion_pb2_grpc.EmotionRecognizerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = self.settings.token_metadata()
        self._rng = random.Random()


class EmotionClient(_ClientBase[grpc.Channel]):
    """Blocking client. Thread-safe: one instance (one channel) can serve many threads.

    Args:
        target: ``host:port`` or any gRPC target, e.g. ``dns:///emotion-server-headless.ns.svc:50051``.
        tls: TLS/mTLS settings; None for a plaintext channel.
        token: bearer token sent as ``authorization: Bearer <token>`` on every call.
        timeout_s: default deadline of each call, retries included (``stream`` has none by default).
        retry: retry policy for UNAVAILABLE and RESOURCE_EXHAUSTED; ``NO_RETRY`` disables retries. None (the
            default): gRPC retries unary calls itself (the channel's service config, clients/channel.py) and
            streams are retried by this client with ``RetryPolicy()``. A policy given here drives this
            client's own loop for every call, and the channel it creates then makes no retries of its own.
        settings: full channel settings (overrides ``target``, ``tls`` and ``token``).
        channel: an existing channel to use instead of creating one (not closed by ``close``).
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
        channel: grpc.Channel | None = None,
    ) -> None:
        super().__init__(
            settings or ChannelSettings(target=target, tls=tls, token=token),
            timeout_s,
            retry,
            channel,
            create_channel,
        )

    # ------------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the channel (when this client created it)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> EmotionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ calls

    def recognize(
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
        """Classify one utterance.

        ``audio`` is a path, encoded bytes, or a numpy array (``sample_rate`` required). With
        ``granularity="frame"`` the result also holds per-frame scores at 50 Hz, optionally smoothed by a
        centred moving average over ``smoothing_frames``; ``embedding=True`` adds the utterance embedding.
        ``channels="split"`` answers each channel of a multi-channel recording apart (at most 8; a mono file
        is one channel): the result's ``channels`` holds one :class:`~.results.ChannelRecognition` each,
        named by ``channel_names`` in channel order (optional), and its own utterance fields stay empty.
        """
        request = recognize_request(
            audio, sample_rate, granularity, embedding, smoothing_frames, priority, channels, channel_names
        )
        response = self._unary(self._stub.Recognize, request, timeout)
        return R.recognition_from_proto(response, granularity)

    def embed(
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
        """The utterance embedding ``[dim]``; with ``frames=True`` also frame embeddings ``[T, dim]``.

        ``channels="split"``: one :class:`~.results.ChannelEmbedding` per channel in the result's
        ``channels``.
        """
        request = embed_request(audio, sample_rate, frames, priority, channels, channel_names)
        return R.embedding_from_proto(self._unary(self._stub.Embed, request, timeout))

    def model_info(self, *, timeout: float | None = None) -> R.ModelInfo:
        """Describe the served model."""
        return R.model_info_from_proto(
            self._unary(self._stub.GetModelInfo, emotion_pb2.GetModelInfoRequest(), timeout)
        )

    def health(self, service: str = SERVICE_NAME, *, timeout: float | None = None) -> str:
        """The gRPC health status of ``service`` ("" = the whole server), e.g. ``"SERVING"``."""
        response = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_until_serving(self, timeout: float = 30.0, service: str = SERVICE_NAME) -> None:
        """Block until ``service`` reports SERVING (e.g. after the model warmed up); raise on timeout."""
        deadline = time.monotonic() + timeout
        last: str | Exception = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health(service, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except EmotionClientError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"{self.settings.target} not SERVING after {timeout:.1f} s (last: {last})")

    def stream(
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
    ) -> Iterator[R.Segment | R.StreamSummary]:
        """Stream audio and yield each ``Segment`` as the server finishes it, then one ``StreamSummary``.

        ``audio`` is a path (decoded locally to 16 kHz mono), a numpy array with ``sample_rate``, or an
        iterable of PCM chunks (bytes in ``encoding``, or numpy arrays) with ``sample_rate``. Paths and
        arrays are sent in ``chunk_ms`` chunks; ``realtime=True`` paces them at the audio's own speed.
        A stream is retried only before its first result and when its source can be replayed.
        ``timeout`` is a deadline for the whole stream (none by default).
        """
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
                for message in call:
                    received = True
                    item = R.stream_item_from_proto(message)
                    if item is not None:
                        yield item
                return
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if received or not prepared.replayable:
                    raise error from exc
                self._sleep_before_retry(error, attempt, deadline, exc)
            finally:
                call.cancel()  # no-op after a clean end; stops the upload when the caller stops early

    # ------------------------------------------------------------------------------------------ internals

    def _stream_requests(
        self, prepared: PreparedStream, realtime: bool
    ) -> Iterator[emotion_pb2.StreamRecognizeRequest]:
        yield emotion_pb2.StreamRecognizeRequest(config=prepared.config)
        chunks = prepared.chunk_source() if prepared.replayable else prepared.chunk_source
        start = time.monotonic()
        sent_s = 0.0
        encoding = prepared.encoding
        for chunk in chunks:
            data = as_pcm_bytes(chunk, encoding)
            if not data:
                continue
            if realtime:
                # Send each chunk when its audio would have been captured, as a live source would.
                ahead = start + sent_s - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            yield emotion_pb2.StreamRecognizeRequest(audio=data)
            sent_s += len(data) / prepared.bytes_per_second

    def _unary(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        limit = self.timeout_s if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                self._sleep_before_retry(from_rpc_error(exc), attempt, deadline, exc, self._unary_retry)

    def _sleep_before_retry(
        self, error: EmotionClientError, attempt: int, deadline: float | None, cause: BaseException,
        policy: RetryPolicy | None = None,
    ) -> None:
        """Sleep the backoff when ``error`` is retryable and time is left; otherwise raise ``error``."""
        retry = policy or self.retry
        delay = retry.delay_before_retry(error.code, attempt, error.retry_after_s, deadline, self._rng)
        if delay is None:
            raise error from cause
        time.sleep(delay)
