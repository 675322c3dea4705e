"""The ``emotion.v1.EmotionRecognizer`` servicer: protobuf <-> domain, nothing else.

Audio decoding runs in a thread pool and inference in the batcher's worker threads, so the event loop
only moves messages. Every request, unary or streamed segment, goes through the same batcher. A call's
gRPC deadline becomes its batcher deadline; a cancelled call cancels its batcher request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from emotion2vec_serving.server.audio import AudioLimits, PcmEncoding, decode_encoded, decode_pcm
from emotion2vec_serving.server.errors import (
    Draining,
    InvalidRequest,
    NoClassifierHead,
    TooManyStreams,
    to_status,
)
from emotion2vec_serving.server.manifest import ModelManifest
from emotion2vec_serving.server.metrics import ServerMetrics
from emotion2vec_serving.server.runner import ItemResult

__all__ = ["BatcherLike", "EmotionService", "ServiceLimits", "smooth_frames"]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
T = TypeVar("T")

#: Raw PCM up to this size at the model's rate is converted on the event loop (~tens of microseconds).
_INLINE_PCM_BYTES = 256 * 1024
_PCM_ENCODINGS: dict[int, PcmEncoding] = {
    emotion_pb2.PCM_ENCODING_S16LE: "s16le",
    emotion_pb2.PCM_ENCODING_F32LE: "f32le",
}


class BatcherLike(Protocol):
    """The part of ``batching.DynamicBatcher`` the service uses."""

    async def submit(
        self, payload: Any, *, cost: int, deadline: float | None = ..., priority: int = ...
    ) -> Any: ...

    @property
    def estimated_drain_s(self) -> float: ...


@dataclass(frozen=True)
class ServiceLimits:
    """Per-call limits enforced by the service (audio limits live in ``AudioLimits``)."""

    audio: AudioLimits
    default_timeout_s: float = 30.0
    max_concurrent_streams: int = 64
    max_stream_duration_s: float = 3600.0


def smooth_frames(scores: FloatArray, window: int) -> FloatArray:
    """Centred moving average over ``window`` frames along axis 0; edges average the frames available.

    ``window`` <= 1 returns the scores unchanged. An even window reaches one frame further back than
    forward.
    """
    n = scores.shape[0]
    if window <= 1 or n == 0:
        return scores
    back = window // 2
    fwd = window - 1 - back
    csum = np.concatenate(
        [np.zeros((1, scores.shape[1]), np.float64), np.cumsum(scores, axis=0, dtype=np.float64)]
    )
    idx = np.arange(n)
    lo = np.clip(idx - back, 0, n)
    hi = np.clip(idx + fwd + 1, 0, n)
    out: FloatArray = ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)
    return out


class EmotionService(emotion_pb2_grpc.EmotionRecognizerServicer):  # type: ignore[misc]
    """Servicer for Recognize, Embed, StreamRecognize and GetModelInfo."""

    def __init__(
        self,
        *,
        manifest: ModelManifest,
        batcher: BatcherLike,
        metrics: ServerMetrics,
        limits: ServiceLimits,
        decode_executor: Executor,
        provider: Callable[[], str],
    ) -> None:
        self._manifest = manifest
        self._batcher = batcher
        self._metrics = metrics
        self._limits = limits
        self._executor = decode_executor
        self._provider = provider
        self._draining = False
        self._active_streams = 0
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._rate = manifest.sample_rate_hz
        self._model_ref = emotion_pb2.ModelRef(
            name=manifest.model_name, version=manifest.model_version,
            precision=manifest.precision, untrained=manifest.untrained,
        )
        self._enabled = np.array([label.enabled for label in manifest.labels], dtype=bool)
        # Per-response constants, built once: (index, name, name_zh) of every label in model order.
        self._label_rows = tuple((lb.index, lb.name, lb.name_zh) for lb in manifest.labels)
        self._enabled_indices = tuple(lb.index for lb in manifest.labels if lb.enabled)

    # ------------------------------------------------------------------ lifecycle

    def begin_drain(self) -> None:
        """Refuse new calls with UNAVAILABLE; calls already accepted run to completion."""
        self._draining = True

    @property
    def active_streams(self) -> int:
        return self._active_streams

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in progress (or the timeout); True when idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("%d call(s) still running after the drain grace", self._inflight)
            return False
        return True

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    # ------------------------------------------------------------------ RPCs

    async def Recognize(
        self, request: emotion_pb2.RecognizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> emotion_pb2.RecognizeResponse:
        return await self._guard("Recognize", context, lambda: self._recognize(request, context))

    async def Embed(
        self, request: emotion_pb2.EmbedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> emotion_pb2.EmbedResponse:
        return await self._guard("Embed", context, lambda: self._embed(request, context))

    async def GetModelInfo(
        self, request: emotion_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> emotion_pb2.ModelInfo:
        m = self._manifest
        return emotion_pb2.ModelInfo(
            model=self._model_ref,
            labels=[emotion_pb2.EmotionScore(label=lb.name, label_zh=lb.name_zh, index=lb.index)
                    for lb in m.labels],
            sample_rate_hz=m.sample_rate_hz,
            frame_rate_hz=m.frame_rate_hz,
            embedding_dim=m.embedding_dim,
            execution_provider=self._provider(),
            max_duration_s=self._limits.audio.max_duration_s,
            min_duration_s=self._limits.audio.min_duration_s,
        )

    async def StreamRecognize(
        self,
        request_iterator: AsyncIterator[emotion_pb2.StreamRecognizeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[emotion_pb2.StreamRecognizeResponse]:
        from emotion2vec_serving.server.streaming import (
            StreamSession,  # the segmenter is only needed by streams
        )

        start = time.monotonic()
        code = "OK"
        try:
            self._check_accepting()
            if self._active_streams >= self._limits.max_concurrent_streams:
                raise TooManyStreams(
                    f"too many open streams (limit {self._limits.max_concurrent_streams}); retry later"
                )
        except (Draining, TooManyStreams) as refused:
            await self._abort("StreamRecognize", context, refused, start)
        self._active_streams += 1
        self._metrics.active_streams.set(self._active_streams)
        self._enter()
        try:
            session = StreamSession(self, context)
            async for response in session.run(request_iterator):
                yield response
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = ""
            await self._abort("StreamRecognize", context, exc, start)
        finally:
            self._leave()
            self._active_streams -= 1
            self._metrics.active_streams.set(self._active_streams)
            if code:
                self._metrics.observe_request("StreamRecognize", code, time.monotonic() - start)

    # ------------------------------------------------------------------ shared plumbing

    def _check_accepting(self) -> None:
        if self._draining:
            raise Draining()

    async def _guard(self, rpc: str, context: grpc.aio.ServicerContext[Any, Any],
                     body: Callable[[], Awaitable[T]]) -> T:
        """Run one unary call: errors become statuses through the one table; every call is counted."""
        start = time.monotonic()
        self._enter()
        try:
            self._check_accepting()
            response = await body()
        except asyncio.CancelledError:
            self._metrics.observe_request(rpc, "CANCELLED", time.monotonic() - start)
            raise
        except Exception as exc:
            await self._abort(rpc, context, exc, start)
            raise  # unreachable: abort raises
        finally:
            self._leave()
        self._metrics.observe_request(rpc, "OK", time.monotonic() - start)
        return response

    async def _abort(self, rpc: str, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException,
                     start: float) -> None:
        retry_ms: int | None = None
        try:
            retry_ms = int(1000 * max(0.05, float(self._batcher.estimated_drain_s)))
        except Exception:  # the hint is best effort
            retry_ms = 100
        status = to_status(exc, retry_after_ms=retry_ms)
        if status.reason is not None:
            self._metrics.reject(status.reason)
        self._metrics.observe_request(rpc, status.code.name, time.monotonic() - start)
        if status.code == grpc.StatusCode.INTERNAL:
            log.error("%s failed", rpc, exc_info=exc)
        else:
            log.debug("%s -> %s: %s", rpc, status.code.name, status.message)
        await context.abort(status.code, status.message, trailing_metadata=status.trailing_metadata)

    def deadline_for(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        """The batcher deadline (time.monotonic) for this call: its gRPC deadline or the default timeout."""
        remaining = context.time_remaining()
        if remaining is None:
            remaining = self._limits.default_timeout_s
        return time.monotonic() + max(0.0, float(remaining))

    async def decode(self, audio: emotion_pb2.Audio) -> tuple[FloatArray, float]:
        """Decode request audio off the event loop; returns (16 kHz mono float32, decode seconds)."""
        which = audio.WhichOneof("source")
        limits = self._limits.audio
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        if which == "encoded":
            data = audio.encoded
            waveform = await loop.run_in_executor(self._executor, decode_encoded, data, limits)
        elif which == "raw":
            raw = audio.raw
            encoding = _PCM_ENCODINGS.get(raw.encoding)
            if encoding is None:
                got = emotion_pb2.PcmEncoding.Name(raw.encoding) if raw.encoding in _NAMES else raw.encoding
                raise InvalidRequest(
                    f"raw audio needs an encoding: PCM_ENCODING_S16LE or PCM_ENCODING_F32LE (got {got})"
                )
            if raw.sample_rate_hz == 0:
                raise InvalidRequest("raw audio needs sample_rate_hz (e.g. 16000)")
            data, rate, channels = raw.data, int(raw.sample_rate_hz), int(raw.channels or 1)
            if rate == limits.target_sample_rate_hz and len(data) <= _INLINE_PCM_BYTES:
                # No resampling, a short copy: cheaper on the loop than a hop to the decode thread and back.
                waveform = decode_pcm(data, encoding, rate, channels, limits)
            else:
                waveform = await loop.run_in_executor(
                    self._executor, lambda: decode_pcm(data, encoding, rate, channels, limits)
                )
        else:
            raise InvalidRequest(
                "the request has no audio: set audio.encoded (file bytes) or audio.raw (PCM)"
            )
        return waveform, time.monotonic() - started

    async def infer(self, waveform: FloatArray, deadline: float, priority: int) -> tuple[ItemResult, float]:
        """Submit one waveform to the batcher; returns (result, queue wait seconds)."""
        submitted = time.monotonic()
        result: ItemResult = await self._batcher.submit(
            waveform, cost=int(waveform.shape[0]), deadline=deadline, priority=int(priority)
        )
        return result, max(0.0, result.started_monotonic - submitted)

    def require_head(self) -> None:
        if not self._manifest.has_head:
            raise NoClassifierHead(self._manifest.model_name)

    @property
    def model_ref(self) -> emotion_pb2.ModelRef:
        return self._model_ref

    @property
    def manifest(self) -> ModelManifest:
        return self._manifest

    @property
    def metrics(self) -> ServerMetrics:
        return self._metrics

    @property
    def limits(self) -> ServiceLimits:
        return self._limits

    @property
    def decode_executor(self) -> Executor:
        return self._executor

    @property
    def enabled_labels(self) -> npt.NDArray[np.bool_]:
        """Mask of labels that can be predicted (``unuse*`` labels are False)."""
        return self._enabled

    def utterance(self, probs: FloatArray) -> emotion_pb2.UtteranceResult:
        """Top label (among enabled labels) and every score in model order."""
        # A handful of scores: plain Python beats numpy's per-call overhead here (it shows in profiles).
        values = probs.tolist()
        top = max(self._enabled_indices, key=values.__getitem__) if self._enabled_indices else 0
        label = self._manifest.labels[top]
        score = emotion_pb2.EmotionScore
        return emotion_pb2.UtteranceResult(
            label=label.name, label_zh=label.name_zh, confidence=values[top],
            scores=[score(label=name, label_zh=name_zh, score=values[index], index=index)
                    for index, name, name_zh in self._label_rows],
        )

    def timing(self, result: ItemResult, queue_s: float, decode_s: float, start: float) -> emotion_pb2.Timing:
        return emotion_pb2.Timing(
            queue_ms=queue_s * 1000.0, inference_ms=result.inference_s * 1000.0, decode_ms=decode_s * 1000.0,
            total_ms=(time.monotonic() - start) * 1000.0, batch_size=result.batch_size,
        )

    def observe_prediction(self, utterance: emotion_pb2.UtteranceResult) -> None:
        self._metrics.observe_prediction(utterance.label, utterance.confidence)

    # ------------------------------------------------------------------ unary bodies

    async def _recognize(self, request: emotion_pb2.RecognizeRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> emotion_pb2.RecognizeResponse:
        start = time.monotonic()
        self.require_head()
        waveform, decode_s = await self.decode(request.audio)
        result, queue_s = await self.infer(waveform, self.deadline_for(context), request.priority)
        assert result.probs is not None and result.frame_probs is not None  # has_head checked above
        duration_s = waveform.shape[0] / self._rate
        utterance = self.utterance(result.probs)
        response = emotion_pb2.RecognizeResponse(utterance=utterance, duration_s=duration_s,
                                                 model=self._model_ref)
        if request.granularity == emotion_pb2.GRANULARITY_FRAME:
            frames = self._frames(result.frame_probs, int(request.smoothing_frames), duration_s)
            response.frames.extend(frames)
        if request.return_embedding:
            response.embedding.values.extend(result.embedding.tolist())
        response.timing.CopyFrom(self.timing(result, queue_s, decode_s, start))
        self._metrics.observe_audio("Recognize", duration_s)
        self.observe_prediction(utterance)
        return response

    def _frames(
        self, frame_probs: FloatArray, smoothing: int, duration_s: float
    ) -> list[emotion_pb2.FrameResult]:
        m = self._manifest
        scores = smooth_frames(frame_probs, smoothing)
        masked = np.where(self._enabled[None, :], scores, -np.inf)
        tops = np.argmax(masked, axis=1)
        hop_s = m.frame_hop_samples / m.sample_rate_hz
        span_s = m.receptive_field_samples / m.sample_rate_hz
        frames = []
        for t in range(scores.shape[0]):
            top = int(tops[t])
            start_s = t * hop_s
            frames.append(emotion_pb2.FrameResult(
                start_s=start_s, end_s=min(start_s + span_s, max(duration_s, span_s)),
                label=m.labels[top].name, confidence=float(scores[t, top]), scores=scores[t].tolist(),
            ))
        return frames

    async def _embed(self, request: emotion_pb2.EmbedRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> emotion_pb2.EmbedResponse:
        start = time.monotonic()
        waveform, decode_s = await self.decode(request.audio)
        result, queue_s = await self.infer(waveform, self.deadline_for(context), request.priority)
        duration_s = waveform.shape[0] / self._rate
        response = emotion_pb2.EmbedResponse(
            embedding=emotion_pb2.Embedding(values=result.embedding.tolist()),
            dim=int(result.embedding.shape[0]), duration_s=duration_s, model=self._model_ref,
        )
        if request.return_frames:
            response.frames.extend(
                emotion_pb2.Embedding(values=row.tolist()) for row in result.frame_features
            )
        response.timing.CopyFrom(self.timing(result, queue_s, decode_s, start))
        self._metrics.observe_audio("Embed", duration_s)
        return response


_NAMES = frozenset(emotion_pb2.PcmEncoding.values())
