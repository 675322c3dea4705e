"""emotion.v1 protobuf <-> core types, shared by the unary servicer (``service``) and ``streaming``."""

from __future__ import annotations

import time
from typing import Any

import grpc
from emotion.v1 import emotion_pb2

from emotion2vec_serving.clients.wire import PROTOCOL_EMOTION_V1
from emotion2vec_serving.server import tracing
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.errors import InvalidRequest
from emotion2vec_serving.server.calls.types import (
    AudioInput,
    CallContext,
    EmbeddingResult,
    EmbeddingSegment,
    Frame,
    Recognition,
    Score,
    SegmentResult,
    Timing,
    Utterance,
)

__all__ = [
    "audio_input",
    "call_context",
    "channel_split",
    "embedding_segment_pb",
    "fill_embedding",
    "fill_recognition",
    "frame_pb",
    "frames_wanted",
    "model_ref",
    "scores_pb",
    "segment_pb",
    "timing_pb",
    "utterance_pb",
]

_PCM_ENCODINGS = {
    emotion_pb2.PCM_ENCODING_S16LE: "s16le",
    emotion_pb2.PCM_ENCODING_F32LE: "f32le",
}
_NAMES = frozenset(emotion_pb2.PcmEncoding.values())
#: Granularity -> whether frames are returned (UNSPECIFIED means UTTERANCE).
_FRAMES: dict[int, bool] = {
    emotion_pb2.GRANULARITY_UNSPECIFIED: False,
    emotion_pb2.GRANULARITY_UTTERANCE: False,
    emotion_pb2.GRANULARITY_FRAME: True,
}


def call_context(rpc: str, context: grpc.aio.ServicerContext[Any, Any], priority: int = 0) -> CallContext:
    """The core's view of a call: its gRPC deadline (absolute, monotonic) or None."""
    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + max(0.0, float(remaining))
    return CallContext(protocol=PROTOCOL_EMOTION_V1, rpc=rpc, deadline=deadline, priority=int(priority),
                       trace=tracing.incoming(context.invocation_metadata))


def audio_input(audio: emotion_pb2.Audio) -> AudioInput:
    """``emotion.v1.Audio`` -> ``AudioInput``; InvalidRequest names the field that is wrong."""
    which = audio.WhichOneof("source")
    if which == "encoded":
        return AudioInput.from_encoded(audio.encoded)
    if which == "raw":
        raw = audio.raw
        encoding = _PCM_ENCODINGS.get(raw.encoding)
        if encoding is None:
            got = emotion_pb2.PcmEncoding.Name(raw.encoding) if raw.encoding in _NAMES else raw.encoding
            raise InvalidRequest(
                f"raw audio needs an encoding: PCM_ENCODING_S16LE or PCM_ENCODING_F32LE (got {got})"
            )
        if raw.sample_rate_hz == 0:
            raise InvalidRequest("raw audio needs sample_rate_hz (e.g. 16000)")
        return AudioInput.from_pcm(raw.data, encoding, int(raw.sample_rate_hz), int(raw.channels or 1))
    raise InvalidRequest("the request has no audio: set audio.encoded (file bytes) or audio.raw (PCM)")


def frames_wanted(granularity: int) -> bool:
    """``RecognizeRequest.granularity`` -> whether frames are returned; an unknown value (proto3 enums keep
    any number, e.g. 99 from a newer or buggy client) is an InvalidRequest, never read as UTTERANCE."""
    frames = _FRAMES.get(granularity)
    if frames is None:
        raise InvalidRequest(
            f"unknown granularity {granularity}: use GRANULARITY_UTTERANCE (1) or GRANULARITY_FRAME (2)")
    return frames


#: ChannelMode -> whether each channel is answered apart (UNSPECIFIED means MIX).
_SPLIT: dict[int, bool] = {
    emotion_pb2.CHANNEL_MODE_UNSPECIFIED: False,
    emotion_pb2.CHANNEL_MODE_MIX: False,
    emotion_pb2.CHANNEL_MODE_SPLIT: True,
}


def channel_split(mode: int, names: Any) -> bool:
    """``channel_mode`` -> split?; an unknown value, or channel names without SPLIT, is an InvalidRequest."""
    split = _SPLIT.get(mode)
    if split is None:
        raise InvalidRequest(
            f"unknown channel_mode {mode}: use CHANNEL_MODE_MIX (1) or CHANNEL_MODE_SPLIT (2)")
    if len(names) and not split:
        raise InvalidRequest("channel_names needs channel_mode CHANNEL_MODE_SPLIT")
    return split


def fill_recognition(msg: Any, result: Recognition) -> None:
    """The result fields a ``RecognizeResponse`` and a ``ChannelResult`` share: utterance, frames, embedding,
    segments and voiced_s (long audio), timing."""
    msg.utterance.CopyFrom(utterance_pb(result.utterance))
    msg.timing.CopyFrom(timing_pb(result.timing))
    if result.frames:
        msg.frames.extend(frame_pb(f) for f in result.frames)
    if result.embedding is not None:
        msg.embedding.values.extend(result.embedding.tolist())
    if result.segments:
        msg.segments.extend(segment_pb(s) for s in result.segments)
        msg.voiced_s = result.voiced_s


def fill_embedding(msg: Any, result: EmbeddingResult) -> None:
    """The fields an ``EmbedResponse`` and a ``ChannelEmbedding`` share: embedding, frames, segments,
    timing."""
    msg.embedding.values.extend(result.embedding.tolist())
    msg.timing.CopyFrom(timing_pb(result.timing))
    if result.frame_features is not None:
        msg.frames.extend(emotion_pb2.Embedding(values=row.tolist()) for row in result.frame_features)
    msg.segments.extend(embedding_segment_pb(s) for s in result.segments)


def model_ref(core: EmotionCore) -> emotion_pb2.ModelRef:
    card = core.model_card()
    return emotion_pb2.ModelRef(name=card.name, version=card.version, precision=card.precision,
                                untrained=card.untrained)


def utterance_pb(utterance: Utterance) -> emotion_pb2.UtteranceResult:
    score = emotion_pb2.EmotionScore
    return emotion_pb2.UtteranceResult(
        label=utterance.label, label_zh=utterance.label_zh, confidence=utterance.confidence,
        scores=[score(label=s.label, label_zh=s.label_zh, score=s.score, index=s.index)
                for s in utterance.scores],
    )


def scores_pb(scores: tuple[Score, ...]) -> list[emotion_pb2.EmotionScore]:
    return [emotion_pb2.EmotionScore(label=s.label, label_zh=s.label_zh, score=s.score, index=s.index)
            for s in scores]


def timing_pb(timing: Timing) -> emotion_pb2.Timing:
    return emotion_pb2.Timing(queue_ms=timing.queue_ms, inference_ms=timing.inference_ms,
                              decode_ms=timing.decode_ms, total_ms=timing.total_ms,
                              batch_size=timing.batch_size)


def frame_pb(frame: Frame) -> emotion_pb2.FrameResult:
    return emotion_pb2.FrameResult(start_s=frame.start_s, end_s=frame.end_s, label=frame.label,
                                   confidence=frame.confidence, scores=frame.scores)


def segment_pb(segment: SegmentResult) -> emotion_pb2.SegmentResult:
    """A segment of a long recording (RecognizeResponse.segments); its frames stay in the top-level list."""
    out = emotion_pb2.SegmentResult(
        segment_id=segment.segment_id, start_s=segment.start_s, end_s=segment.end_s,
        result=utterance_pb(segment.utterance), timing=timing_pb(segment.timing),
        first_frame=segment.first_frame, frame_count=segment.frame_count,
    )
    if segment.embedding is not None:
        out.embedding.values.extend(segment.embedding.tolist())
    return out


def embedding_segment_pb(segment: EmbeddingSegment) -> emotion_pb2.EmbeddingSegment:
    return emotion_pb2.EmbeddingSegment(
        segment_id=segment.segment_id, start_s=segment.start_s, end_s=segment.end_s,
        embedding=emotion_pb2.Embedding(values=segment.embedding.tolist()),
        first_frame=segment.first_frame, frame_count=segment.frame_count, timing=timing_pb(segment.timing),
    )
