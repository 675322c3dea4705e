"""The ``emotion.v1`` ``StreamRecognize`` adapter: protobuf messages <-> ``stream`` settings, chunks, events.

The first message carries the ``StreamConfig`` (format and segmentation); every later one a chunk of PCM.
Segmentation, decoding, batching and back-pressure are the core's (``server.stream``); this module only
converts and reports a ``CallFailed`` as the gRPC status of ``grpc_status``.

Time limits are the core's too (``streams.StreamClock``): the config must come within
``--stream-idle-timeout-s`` of the call's start, audio within that time of the config or the last chunk, and
the stream ends after ``--stream-max-open-s`` in any case, each with DEADLINE_EXCEEDED and a message naming
the limit (why not RESOURCE_EXHAUSTED: ``calls.errors.StreamTimeout``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from emotion.v1 import emotion_pb2

from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.errors import CallFailed, InvalidRequest
from emotion2vec_serving.server.calls.streams import (
    MAX_PENDING_SEGMENTS,
    SegmentationSettings,
    SegmentEvent,
    StreamSettings,
    SummaryEvent,
)
from emotion2vec_serving.server.grpc.convert import call_context, scores_pb, timing_pb, utterance_pb
from emotion2vec_serving.server.grpc.status import abort

__all__ = ["MAX_PENDING_SEGMENTS", "segmentation_from_config", "settings_from_config", "stream_recognize"]

_ENCODINGS = {
    emotion_pb2.PCM_ENCODING_S16LE: "s16le",
    emotion_pb2.PCM_ENCODING_F32LE: "f32le",
}
_MODES = {
    emotion_pb2.SEGMENTATION_MODE_UNSPECIFIED: "energy",
    emotion_pb2.SEGMENTATION_MODE_ENERGY: "energy",
    emotion_pb2.SEGMENTATION_MODE_FIXED: "fixed",
}


def segmentation_from_config(config: emotion_pb2.SegmentationConfig) -> SegmentationSettings:
    mode = _MODES.get(config.mode)
    if mode is None:
        raise InvalidRequest(f"unknown segmentation mode {config.mode}")
    return SegmentationSettings(
        mode="fixed" if mode == "fixed" else "energy",
        min_segment_s=float(config.min_segment_s), max_segment_s=float(config.max_segment_s),
        min_silence_s=float(config.min_silence_s), energy_threshold_db=float(config.energy_threshold_db),
        window_s=float(config.window_s), hop_s=float(config.hop_s),
    )


def settings_from_config(config: emotion_pb2.StreamConfig) -> StreamSettings:
    encoding = _ENCODINGS.get(config.encoding)
    if encoding is None:
        raise InvalidRequest("StreamConfig.encoding must be PCM_ENCODING_S16LE or PCM_ENCODING_F32LE")
    if config.sample_rate_hz == 0:
        raise InvalidRequest("StreamConfig.sample_rate_hz is required (e.g. 16000)")
    return StreamSettings(
        encoding=encoding, sample_rate_hz=int(config.sample_rate_hz), channels=int(config.channels or 1),
        segmentation=segmentation_from_config(config.segmentation), embedding=config.return_embedding,
        priority=int(config.priority),
    )


async def _first_config(
    requests: AsyncIterator[emotion_pb2.StreamRecognizeRequest],
) -> emotion_pb2.StreamConfig:
    async for message in requests:
        kind = message.WhichOneof("message")
        if kind == "config":
            config: emotion_pb2.StreamConfig = message.config
            return config
        if kind == "audio":
            raise InvalidRequest("audio before StreamConfig: the first message must be the config")
        raise InvalidRequest("empty stream message: set either config or audio")
    raise InvalidRequest("the stream ended without a StreamConfig")


async def _chunks(requests: AsyncIterator[emotion_pb2.StreamRecognizeRequest]) -> AsyncIterator[bytes]:
    async for message in requests:
        kind = message.WhichOneof("message")
        if kind == "audio":
            yield message.audio
        elif kind == "config":
            raise InvalidRequest("StreamConfig sent twice: send it exactly once, as the first message")
        else:
            raise InvalidRequest("empty stream message: set either config or audio")


async def stream_recognize(
    core: EmotionCore,
    model: emotion_pb2.ModelRef,
    requests: AsyncIterator[emotion_pb2.StreamRecognizeRequest],
    context: grpc.aio.ServicerContext[Any, Any],
) -> AsyncIterator[emotion_pb2.StreamRecognizeResponse]:
    """One StreamRecognize call over the core."""
    call = call_context("StreamRecognize", context)
    try:
        async with core.stream(None, call) as session:
            session.configure(settings_from_config(await session.receive(_first_config(requests))))
            async for event in session.run(_chunks(requests)):
                yield _response(event, model)
    except CallFailed as failed:
        await abort(context, failed.failure)


def _response(
    event: SegmentEvent | SummaryEvent, model: emotion_pb2.ModelRef
) -> emotion_pb2.StreamRecognizeResponse:
    if isinstance(event, SegmentEvent):
        out = emotion_pb2.SegmentResult(
            segment_id=event.segment_id, start_s=event.start_s, end_s=event.end_s,
            result=utterance_pb(event.utterance), timing=timing_pb(event.timing),
        )
        if event.embedding is not None:
            out.embedding.values.extend(event.embedding.tolist())
        return emotion_pb2.StreamRecognizeResponse(segment=out, model=model)
    summary = emotion_pb2.StreamSummary(
        segments=event.segments, duration_s=event.duration_s, voiced_s=event.voiced_s,
        label_seconds=scores_pb(event.label_seconds),
    )
    if event.overall is not None:
        summary.overall.CopyFrom(utterance_pb(event.overall))
    return emotion_pb2.StreamRecognizeResponse(summary=summary, model=model)
