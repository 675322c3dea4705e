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

    @property
    def frame_scores(self) -> FloatArray:
        """Frame scores as a ``[frames, labels]`` float32 array in ``labels`` order."""
        if not self.frames:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.array([[f.scores[name] for name in self.labels] for f in self.frames], dtype=np.float32)


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


def recognition_from_proto(msg: emotion_pb2.RecognizeResponse, granularity: str) -> Recognition:
    scores = _scores(msg.utterance)
    labels = tuple(s.label for s in msg.utterance.scores)
    frames = tuple(
        Frame(
            start_s=f.start_s,
            end_s=f.end_s,
            label=f.label,
            confidence=float(f.confidence),
            scores={name: float(v) for name, v in zip(labels, f.scores, strict=False)},
        )
        for f in msg.frames
    )
    segments = tuple(
        _segment(seg, None, frames[seg.first_frame : seg.first_frame + seg.frame_count])
        for seg in msg.segments
    )
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
        segments=segments,
        voiced_s=msg.voiced_s,
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


def embedding_from_proto(msg: emotion_pb2.EmbedResponse) -> EmbeddingResult:
    frames: FloatArray | None = None
    if len(msg.frames):
        frames = np.stack([_vector(f) for f in msg.frames]).astype(np.float32, copy=False)
    return EmbeddingResult(
        embedding=_vector(msg.embedding),
        frames=frames,
        dim=msg.dim or len(msg.embedding.values),
        duration_s=msg.duration_s,
        timing=timing_from_proto(msg.timing),
        model=model_from_proto(msg.model),
        segments=tuple(
            EmbeddingSegment(
                segment_id=seg.segment_id,
                start_s=seg.start_s,
                end_s=seg.end_s,
                embedding=_vector(seg.embedding),
                first_frame=seg.first_frame,
                frame_count=seg.frame_count,
                timing=timing_from_proto(seg.timing),
            )
            for seg in msg.segments
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
    )
