"""One ``StreamRecognize`` call: config, then PCM chunks -> decoder -> segmenter -> batcher -> results.

A reader task consumes the client's messages; decoding and segmentation run in the decode thread pool
(one chunk at a time, so order is kept). Each finished segment is submitted at once to the same batcher
as unary calls, and results are sent back in segment order. At most ``MAX_PENDING_SEGMENTS`` segments
may be waiting for their result: beyond that the reader stops reading, and gRPC flow control slows the
client down instead of the server buffering without bound. After the client half-closes, the open
segment is finished and a summary over the whole stream is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from emotion.v1 import emotion_pb2

from emotion2vec_serving.server.errors import InvalidRequest
from emotion2vec_serving.server.runner import ItemResult
from emotion2vec_serving.server.segmenter import (
    EnergySegmenter,
    FixedSegmenter,
    Segment,
    Segmenter,
    StreamDecoder,
)

if TYPE_CHECKING:
    from emotion2vec_serving.server.service import EmotionService

__all__ = ["MAX_PENDING_SEGMENTS", "StreamSession", "segmenter_from_config"]

#: Segments of one stream submitted but not yet answered; the reader waits beyond this.
MAX_PENDING_SEGMENTS = 8

_ENCODINGS: dict[int, Any] = {
    emotion_pb2.PCM_ENCODING_S16LE: "s16le",
    emotion_pb2.PCM_ENCODING_F32LE: "f32le",
}
# Defaults of SegmentationConfig fields left at 0 (proto3 cannot tell 0 from unset).
_DEFAULTS = {"min_segment_s": 1.0, "max_segment_s": 10.0, "min_silence_s": 0.3, "energy_threshold_db": -40.0,
             "window_s": 2.0}


def segmenter_from_config(config: emotion_pb2.SegmentationConfig, max_segment_s: float) -> Segmenter:
    """Build the configured segmenter; InvalidRequest names the setting that is wrong."""

    def value(name: str) -> float:
        v = float(getattr(config, name))
        return v if v != 0 else _DEFAULTS[name]

    mode = config.mode
    try:
        if mode in (emotion_pb2.SEGMENTATION_MODE_UNSPECIFIED, emotion_pb2.SEGMENTATION_MODE_ENERGY):
            longest = value("max_segment_s")
            if longest > max_segment_s:
                raise InvalidRequest(
                    f"segmentation.max_segment_s {longest:g} s exceeds the server's maximum "
                    f"of {max_segment_s:g} s"
                )
            return EnergySegmenter(
                min_segment_s=min(value("min_segment_s"), longest), max_segment_s=longest,
                min_silence_s=value("min_silence_s"), energy_threshold_db=value("energy_threshold_db"),
            )
        if mode == emotion_pb2.SEGMENTATION_MODE_FIXED:
            window = value("window_s")
            if window > max_segment_s:
                raise InvalidRequest(
                    f"segmentation.window_s {window:g} s exceeds the server's maximum "
                    f"of {max_segment_s:g} s"
                )
            hop = float(config.hop_s) or window
            return FixedSegmenter(window_s=window, hop_s=hop)
    except ValueError as exc:
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest(f"invalid segmentation settings: {exc}") from exc
    raise InvalidRequest(f"unknown segmentation mode {mode}")


@dataclass
class _Pending:
    segment: Segment
    task: asyncio.Task[tuple[ItemResult, float]]
    ready_s: float  # when the segment was complete (time.monotonic)


_END = object()


class StreamSession:
    """State of one stream. Use ``run`` once; the caller turns raised domain errors into a status."""

    def __init__(self, service: EmotionService, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._service = service
        self._context = context
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._slots = asyncio.Semaphore(MAX_PENDING_SEGMENTS)
        self._decoder: StreamDecoder | None = None
        self._segmenter: Segmenter | None = None
        self._config: emotion_pb2.StreamConfig | None = None
        self._deadline_fixed: float | None = None

    async def run(
        self, requests: AsyncIterator[emotion_pb2.StreamRecognizeRequest]
    ) -> AsyncIterator[emotion_pb2.StreamRecognizeResponse]:
        service = self._service
        service.require_head()
        if self._context.time_remaining() is not None:
            self._deadline_fixed = service.deadline_for(self._context)
        reader = asyncio.create_task(self._read(requests), name="stream-reader")
        pending: list[_Pending] = []
        sum_probs: np.ndarray[Any, np.dtype[np.float64]] | None = None
        label_seconds = np.zeros(len(service.manifest.labels), np.float64)
        weight = 0.0
        segments = 0
        try:
            while True:
                item = await self._outbox.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, _Pending)
                pending.append(item)
                try:
                    result, queue_s = await item.task
                finally:
                    pending.remove(item)
                    self._slots.release()
                yield self._segment_response(item, result, queue_s)
                assert result.probs is not None
                duration = item.segment.duration_s
                weighted = result.probs.astype(np.float64) * duration
                sum_probs = weighted if sum_probs is None else sum_probs + weighted
                top = int(np.argmax(np.where(service.enabled_labels, result.probs, -np.inf)))
                label_seconds[top] += duration
                weight += duration
                segments += 1
            yield self._summary(segments, sum_probs, weight, label_seconds)
        finally:
            reader.cancel()
            while not self._outbox.empty():
                leftover = self._outbox.get_nowait()
                if isinstance(leftover, _Pending):
                    pending.append(leftover)
            for p in pending:
                p.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(reader, *(p.task for p in pending), return_exceptions=True)
            if self._decoder is not None:
                service.metrics.observe_audio("StreamRecognize", self._decoder.duration_s)

    # ------------------------------------------------------------------ reading

    async def _read(self, requests: AsyncIterator[emotion_pb2.StreamRecognizeRequest]) -> None:
        try:
            async for message in requests:
                kind = message.WhichOneof("message")
                if kind == "config":
                    if self._config is not None:
                        raise InvalidRequest(
                            "StreamConfig sent twice: send it exactly once, as the first message"
                        )
                    self._configure(message.config)
                elif kind == "audio":
                    if self._config is None:
                        raise InvalidRequest(
                            "audio before StreamConfig: the first message must be the config"
                        )
                    await self._process(message.audio, last=False)
                else:
                    raise InvalidRequest("empty stream message: set either config or audio")
            if self._config is None:
                raise InvalidRequest("the stream ended without a StreamConfig")
            await self._process(b"", last=True)
            await self._outbox.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._outbox.put(exc)

    def _configure(self, config: emotion_pb2.StreamConfig) -> None:
        limits = self._service.limits
        encoding = _ENCODINGS.get(config.encoding)
        if encoding is None:
            raise InvalidRequest("StreamConfig.encoding must be PCM_ENCODING_S16LE or PCM_ENCODING_F32LE")
        if config.sample_rate_hz == 0:
            raise InvalidRequest("StreamConfig.sample_rate_hz is required (e.g. 16000)")
        self._decoder = StreamDecoder(encoding, int(config.sample_rate_hz), int(config.channels or 1),
                                      limits.audio)
        self._segmenter = segmenter_from_config(config.segmentation, limits.audio.max_duration_s)
        self._config = config

    async def _process(self, chunk: bytes, *, last: bool) -> None:
        decoder, segmenter = self._decoder, self._segmenter
        assert decoder is not None and segmenter is not None

        def work() -> list[Segment]:
            samples = decoder.finish() if last else decoder.feed(chunk)
            out = segmenter.feed(samples) if samples.size else []
            if last:
                out += segmenter.finish()
            return out

        loop = asyncio.get_running_loop()
        segments = await loop.run_in_executor(self._service.decode_executor, work)
        longest = self._service.limits.max_stream_duration_s
        if decoder.duration_s > longest:
            raise InvalidRequest(f"stream longer than the maximum of {longest:g} s")
        for segment in segments:
            await self._slots.acquire()  # back-pressure: at most MAX_PENDING_SEGMENTS in flight
            await self._submit(segment)

    async def _submit(self, segment: Segment) -> None:
        assert self._config is not None
        deadline = self._deadline_fixed
        if deadline is None:
            deadline = time.monotonic() + self._service.limits.default_timeout_s
        task = asyncio.create_task(self._service.infer(segment.samples, deadline, self._config.priority))
        await self._outbox.put(_Pending(segment, task, time.monotonic()))

    # ------------------------------------------------------------------ responses

    def _segment_response(self, item: _Pending, result: ItemResult,
                          queue_s: float) -> emotion_pb2.StreamRecognizeResponse:
        service = self._service
        assert result.probs is not None and self._config is not None
        utterance = service.utterance(result.probs)
        service.observe_prediction(utterance)
        seg = item.segment
        out = emotion_pb2.SegmentResult(
            segment_id=seg.index, start_s=seg.start_s, end_s=seg.end_s, result=utterance,
            timing=service.timing(result, queue_s, 0.0, item.ready_s),
        )
        if self._config.return_embedding:
            out.embedding.values.extend(result.embedding.tolist())
        return emotion_pb2.StreamRecognizeResponse(segment=out, model=service.model_ref)

    def _summary(self, segments: int, sum_probs: np.ndarray[Any, np.dtype[np.float64]] | None, weight: float,
                 label_seconds: np.ndarray[Any, np.dtype[np.float64]]) -> emotion_pb2.StreamRecognizeResponse:
        service = self._service
        assert self._decoder is not None and self._segmenter is not None
        summary = emotion_pb2.StreamSummary(
            segments=segments, duration_s=self._decoder.duration_s,
            voiced_s=self._segmenter.covered_samples / service.manifest.sample_rate_hz,
            label_seconds=[
                emotion_pb2.EmotionScore(label=lb.name, label_zh=lb.name_zh,
                                         score=float(label_seconds[lb.index]), index=lb.index)
                for lb in service.manifest.labels
            ],
        )
        if sum_probs is not None and weight > 0:
            summary.overall.CopyFrom(service.utterance((sum_probs / weight).astype(np.float32)))
        return emotion_pb2.StreamRecognizeResponse(summary=summary, model=service.model_ref)
