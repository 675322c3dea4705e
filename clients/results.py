"""Typed results returned by the clients. Protobuf messages stop here: callers get dataclasses and numpy.

``from_*`` functions convert the generated messages; they are the only place that reads proto fields. Their
JSON (``result.json``) is written by ``clients/schema.py``, which the server's HTTP API shares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from emotion.v1 import emotion_pb2

__all__ = [
    "ChannelEmbedding",
    "ChannelRecognition",
    "EmbeddingResult",
    "EmbeddingSegment",
    "Frame",
    "LabelInfo",
    "ModelInfo",
    "ModelRef",
    "Recognition",
    "Segment",
    "StreamSummary",
    "Timing",
]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ModelRef:
    """Which model answered: name, short checkpoint hash, precision; ``untrained`` marks the demo model."""

    name: str
    version: str
    precision: str
    untrained: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """Server-side timings of one request, in milliseconds, and the size of the batch it ran in."""

    queue_ms: float
    inference_ms: float
    decode_ms: float
    total_ms: float
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Frame:
    """Scores of one 20 ms frame (the utterance head applied per frame: this service's addition)."""

    start_s: float
    end_s: float
    label: str
    confidence: float
    scores: dict[str, float]


@dataclass(frozen=True)
class Recognition:
    """Result of ``recognize``: the utterance label, every label's score, optional frames and embedding."""

    label: str
    label_zh: str
    confidence: float
    scores: dict[str, float]  # English label -> probability, in model order
    labels: tuple[str, ...]  # model label order (keys of ``scores``)
    frames: tuple[Frame, ...]
    embedding: FloatArray | None
    duration_s: float
    timing: Timing
    model: ModelRef
    granularity: str = "utterance"
    #: Long recordings (longer than the server's single pass): the segments in order, each with its own
    #: label and scores (and, with frame granularity, its frames); the fields above are then an aggregate
    #: over them (duration-weighted mean of segment scores). Empty for audio answered in one pass.
    segments: tuple[Segment, ...] = ()
    voiced_s: float = 0.0
    #: ``channels="split"``: one result per channel of the recording, in channel order (a mono file: one).
    #: The utterance fields above (label, scores, frames, embedding, segments, timing) are then empty;
    #: ``duration_s`` and ``model`` stay filled. Empty with ``channels="mix"``.
    channels: tuple[ChannelRecognition, ...] = ()

    @property
    def frame_scores(self) -> FloatArray:
        """Frame scores as a ``[frames, labels]`` float32 array in ``labels`` order."""
        return _frame_scores(self.frames, self.labels)


def _frame_scores(frames: tuple[Frame, ...], labels: tuple[str, ...]) -> FloatArray:
    if not frames:
        return np.zeros((0, len(labels)), dtype=np.float32)
    return np.array([[f.scores[name] for name in labels] for f in frames], dtype=np.float32)


@dataclass(frozen=True)
class ChannelRecognition:
    """One channel of a recording recognised with ``channels="split"``: what ``recognize`` returns for a
    mono file holding only this channel (label, scores, frames, segments, embedding, durations, timing)."""

    channel: int  # 0-based index in the file
    name: str  # the caller's ``channel_names[channel]``, or ""
    label: str
    label_zh: str
    confidence: float
    scores: dict[str, float]
    labels: tuple[str, ...]
    frames: tuple[Frame, ...]
    embedding: FloatArray | None
    duration_s: float
    voiced_s: float
    segments: tuple[Segment, ...]
    timing: Timing

    @property
    def frame_scores(self) -> FloatArray:
        """Frame scores as a ``[frames, labels]`` float32 array in ``labels`` order."""
        return _frame_scores(self.frames, self.labels)


@dataclass(frozen=True)
class EmbeddingResult:
    """Result of ``embed``: the utterance embedding ``[dim]`` and optionally frame embeddings ``[T, dim]``."""

    embedding: FloatArray
    frames: FloatArray | None
    dim: int
    duration_s: float
    timing: Timing
    model: ModelRef
    #: Long recordings: each segment's own embedding; ``embedding`` is then their frame-weighted mean.
    segments: tuple[EmbeddingSegment, ...] = ()
    #: ``channels="split"``: one result per channel, in order; ``embedding`` is then empty (size 0) and
    #: ``frames``/``segments`` empty. Empty with ``channels="mix"``.
    channels: tuple[ChannelEmbedding, ...] = ()


@dataclass(frozen=True)
class ChannelEmbedding:
    """One channel of a recording embedded with ``channels="split"`` (fields as in ``EmbeddingResult``)."""

    channel: int
    name: str
    embedding: FloatArray
    frames: FloatArray | None
    segments: tuple[EmbeddingSegment, ...]
    duration_s: float
    timing: Timing


@dataclass(frozen=True)
class EmbeddingSegment:
    """One segment of a long recording in an ``embed`` result; its frames are
    ``frames[first_frame : first_frame + frame_count]`` of the result when frames were asked for."""

    segment_id: int
    start_s: float
    end_s: float
    embedding: FloatArray
    first_frame: int
    frame_count: int
    timing: Timing


@dataclass(frozen=True)
class Segment:
    """One segment of a stream, sent by the server as soon as the segment ends."""

    segment_id: int
    start_s: float
    end_s: float
    label: str
    label_zh: str
    confidence: float
    scores: dict[str, float]
    embedding: FloatArray | None
    timing: Timing
    model: ModelRef | None
    #: Segments of a long ``recognize`` result with frame granularity: this segment's frames (absolute times).
    frames: tuple[Frame, ...] = ()


@dataclass(frozen=True)
class StreamSummary:
    """The last message of a stream: totals and the duration-weighted overall result."""

    segments: int
    duration_s: float
    voiced_s: float
    label: str
    label_zh: str
    confidence: float
    scores: dict[str, float]
    label_seconds: dict[str, float]
    model: ModelRef | None


@dataclass(frozen=True)
class LabelInfo:
    """One row of the model's classifier head."""

    index: int
    name: str
    name_zh: str


@dataclass(frozen=True)
class ModelInfo:
    """What the server serves."""

    model: ModelRef
    labels: tuple[LabelInfo, ...]
    sample_rate_hz: int
    frame_rate_hz: float
    embedding_dim: int
    execution_provider: str
    max_duration_s: float
    min_duration_s: float
    max_audio_s: float = 0.0  # longest Recognize/Embed audio (segmented beyond max_segment_s); 0 = no limit
    max_segment_s: float = 0.0  # longest single model pass (0 from servers that predate long recordings)
    #: What to know before trusting the answers (e.g. a model enabling fewer than its nine emotions); empty
    #: when there is nothing to say, and from servers that predate the field.
    warnings: tuple[str, ...] = ()
    #: Accuracy as the model's exporter measured it (None: not measured, or a server that predates it): the
    #: largest |Δprobability| against the fp32 model, and between an audio alone and in a batch as served.
    max_abs_prob_vs_fp32: float | None = None
    max_abs_prob_batch_vs_alone: float | None = None


# ------------------------------------------------------------------------------------------ conversion


def model_from_proto(msg: emotion_pb2.ModelRef) -> ModelRef:
    return ModelRef(name=msg.name, version=msg.version, precision=msg.precision, untrained=msg.untrained)


def timing_from_proto(msg: emotion_pb2.Timing) -> Timing:
    return Timing(
        queue_ms=msg.queue_ms,
        inference_ms=msg.inference_ms,
        decode_ms=msg.decode_ms,
        total_ms=msg.total_ms,
        batch_size=msg.batch_size,
    )


def _vector(msg: emotion_pb2.Embedding) -> FloatArray:
    return np.asarray(msg.values, dtype=np.float32)


def _scores(msg: emotion_pb2.UtteranceResult) -> dict[str, float]:
    return {s.label: float(s.score) for s in msg.scores}


def _frames(frames_msg: Any, labels: tuple[str, ...]) -> tuple[Frame, ...]:
    return tuple(
        Frame(
            start_s=f.start_s,
            end_s=f.end_s,
            label=f.label,
            confidence=float(f.confidence),
            scores={name: float(v) for name, v in zip(labels, f.scores, strict=False)},
        )
        for f in frames_msg
    )


def _segments(segments_msg: Any, frames: tuple[Frame, ...]) -> tuple[Segment, ...]:
    return tuple(
        _segment(seg, None, frames[seg.first_frame : seg.first_frame + seg.frame_count])
        for seg in segments_msg
    )


def _channel_recognition(msg: emotion_pb2.ChannelResult) -> ChannelRecognition:
    labels = tuple(s.label for s in msg.utterance.scores)
    frames = _frames(msg.frames, labels)
    return ChannelRecognition(
        channel=msg.channel,
        name=msg.name,
        label=msg.utterance.label,
        label_zh=msg.utterance.label_zh,
        confidence=float(msg.utterance.confidence),
        scores=_scores(msg.utterance),
        labels=labels,
        frames=frames,
        embedding=_vector(msg.embedding) if msg.HasField("embedding") else None,
        duration_s=msg.duration_s,
        voiced_s=msg.voiced_s,
        segments=_segments(msg.segments, frames),
        timing=timing_from_proto(msg.timing),
    )


def recognition_from_proto(msg: emotion_pb2.RecognizeResponse, granularity: str) -> Recognition:
    scores = _scores(msg.utterance)
    labels = tuple(s.label for s in msg.utterance.scores)
    channels = tuple(_channel_recognition(c) for c in msg.channels)
    if not labels and channels:
        labels = channels[0].labels
    frames = _frames(msg.frames, labels)
    return Recognition(
        label=msg.utterance.label,
        label_zh=msg.utterance.label_zh,
        confidence=float(msg.utterance.confidence),
        scores=scores,
        labels=labels,
        frames=frames,
        embedding=_vector(msg.embedding) if msg.HasField("embedding") else None,
        duration_s=msg.duration_s,
        timing=timing_from_proto(msg.timing),
        model=model_from_proto(msg.model),
        granularity=granularity,
        segments=_segments(msg.segments, frames),
        voiced_s=msg.voiced_s,
        channels=channels,
    )


def _segment(
    seg: emotion_pb2.SegmentResult, model: ModelRef | None, frames: tuple[Frame, ...] = ()
) -> Segment:
    return Segment(
        segment_id=seg.segment_id,
        start_s=seg.start_s,
        end_s=seg.end_s,
        label=seg.result.label,
        label_zh=seg.result.label_zh,
        confidence=float(seg.result.confidence),
        scores=_scores(seg.result),
        embedding=_vector(seg.embedding) if seg.HasField("embedding") else None,
        timing=timing_from_proto(seg.timing),
        model=model,
        frames=frames,
    )


def _frame_matrix(frames_msg: Any) -> FloatArray | None:
    if not len(frames_msg):
        return None
    return np.stack([_vector(f) for f in frames_msg]).astype(np.float32, copy=False)


def _embedding_segments(segments_msg: Any) -> tuple[EmbeddingSegment, ...]:
    return tuple(
        EmbeddingSegment(
            segment_id=seg.segment_id,
            start_s=seg.start_s,
            end_s=seg.end_s,
            embedding=_vector(seg.embedding),
            first_frame=seg.first_frame,
            frame_count=seg.frame_count,
            timing=timing_from_proto(seg.timing),
        )
        for seg in segments_msg
    )


def embedding_from_proto(msg: emotion_pb2.EmbedResponse) -> EmbeddingResult:
    return EmbeddingResult(
        embedding=_vector(msg.embedding),
        frames=_frame_matrix(msg.frames),
        dim=msg.dim or len(msg.embedding.values),
        duration_s=msg.duration_s,
        timing=timing_from_proto(msg.timing),
        model=model_from_proto(msg.model),
        segments=_embedding_segments(msg.segments),
        channels=tuple(
            ChannelEmbedding(
                channel=c.channel,
                name=c.name,
                embedding=_vector(c.embedding),
                frames=_frame_matrix(c.frames),
                segments=_embedding_segments(c.segments),
                duration_s=c.duration_s,
                timing=timing_from_proto(c.timing),
            )
            for c in msg.channels
        ),
    )


def stream_item_from_proto(msg: emotion_pb2.StreamRecognizeResponse) -> Segment | StreamSummary | None:
    """A segment or the summary; None for a message with neither (ignored for forward compatibility)."""
    model = model_from_proto(msg.model) if msg.HasField("model") else None
    kind = msg.WhichOneof("message")
    if kind == "segment":
        return _segment(msg.segment, model)
    if kind == "summary":
        summ = msg.summary
        return StreamSummary(
            segments=summ.segments,
            duration_s=summ.duration_s,
            voiced_s=summ.voiced_s,
            label=summ.overall.label,
            label_zh=summ.overall.label_zh,
            confidence=float(summ.overall.confidence),
            scores=_scores(summ.overall),
            label_seconds={s.label: float(s.score) for s in summ.label_seconds},
            model=model,
        )
    return None


def model_info_from_proto(msg: emotion_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        model=model_from_proto(msg.model),
        labels=tuple(LabelInfo(index=s.index, name=s.label, name_zh=s.label_zh) for s in msg.labels),
        sample_rate_hz=msg.sample_rate_hz,
        frame_rate_hz=msg.frame_rate_hz,
        embedding_dim=msg.embedding_dim,
        execution_provider=msg.execution_provider,
        max_duration_s=msg.max_duration_s,
        min_duration_s=msg.min_duration_s,
        max_audio_s=msg.max_audio_s,
        max_segment_s=msg.max_segment_s,
        warnings=tuple(msg.warnings),
        max_abs_prob_vs_fp32=(msg.max_abs_prob_vs_fp32 if msg.HasField("max_abs_prob_vs_fp32") else None),
        max_abs_prob_batch_vs_alone=(msg.max_abs_prob_batch_vs_alone
                                     if msg.HasField("max_abs_prob_batch_vs_alone") else None),
    )
