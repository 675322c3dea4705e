"""The domain types of a call, shared by the core and every front end: what a call asks (audio, caller,
options) and what it answers (utterances, frames, timings, segments, embeddings, the model card), plus
the pure helpers on them. No protocol types, no behaviour beyond validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.modelrepo.manifest import Label
from emotion2vec_serving.server.calls.errors import InvalidRequest
from emotion2vec_serving.server.tracing import CallTrace

__all__ = [
    "AudioInput",
    "BatcherLike",
    "CallContext",
    "ChannelEmbedding",
    "ChannelRecognition",
    "EmbedOptions",
    "EmbeddingResult",
    "EmbeddingSegment",
    "FloatArray",
    "Frame",
    "ModelCard",
    "Recognition",
    "RecognizeOptions",
    "Score",
    "SegmentResult",
    "SplitEmbedding",
    "SplitRecognition",
    "Timing",
    "Utterance",
    "smooth_frames",
]

FloatArray = npt.NDArray[np.float32]


class BatcherLike(Protocol):
    """The part of ``batching.DynamicBatcher`` the core uses."""

    async def submit(
        self, payload: Any, *, cost: int, deadline: float | None = ..., priority: int = ...
    ) -> Any: ...

    @property
    def estimated_drain_s(self) -> float: ...


# ---------------------------------------------------------------------------------------- call inputs


@dataclass(frozen=True)
class AudioInput:
    """The audio of one request: exactly one of an encoded file, raw PCM, or a float waveform."""

    encoded: bytes | None = None
    pcm: bytes | None = None
    pcm_encoding: str = ""
    sample_rate_hz: int = 0
    channels: int = 1
    waveform: FloatArray | None = None

    @classmethod
    def from_encoded(cls, data: bytes) -> AudioInput:
        """A whole file (WAV/MP3/M4A/FLAC/OGG); the container is sniffed from its bytes."""
        return cls(encoded=bytes(data))

    @classmethod
    def from_pcm(cls, data: bytes, encoding: str, sample_rate_hz: int, channels: int = 1) -> AudioInput:
        """Interleaved little-endian PCM (``s16le`` or ``f32le``) at any supported rate and channel count."""
        return cls(pcm=data, pcm_encoding=encoding, sample_rate_hz=int(sample_rate_hz),
                   channels=int(channels))

    @classmethod
    def from_waveform(cls, samples: Any, sample_rate_hz: int = 16000) -> AudioInput:
        """Mono float samples in [-1, 1] at ``sample_rate_hz`` (resampled to the model's rate)."""
        return cls(waveform=np.asarray(samples, dtype=np.float32), sample_rate_hz=int(sample_rate_hz))

    @property
    def kind(self) -> str:
        set_ = [name for name, value in (("encoded", self.encoded), ("pcm", self.pcm),
                                         ("waveform", self.waveform)) if value is not None]
        if len(set_) != 1:
            raise InvalidRequest("the request needs exactly one audio source: an encoded file, raw PCM "
                                 f"or a waveform (got {', '.join(set_) or 'none'})")
        return set_[0]


@dataclass(frozen=True)
class CallContext:
    """Who is calling: protocol (metrics label), method name, absolute deadline (``time.monotonic``), and
    the call's trace (``server/tracing.py``; None while tracing is off)."""

    protocol: str
    rpc: str
    deadline: float | None = None
    priority: int = 0
    trace: CallTrace | None = None


@dataclass(frozen=True)
class RecognizeOptions:
    frames: bool = False  # per-frame results
    smoothing_frames: int = 0  # centred moving average over this many frames (<= 1: none)
    embedding: bool = False  # return the utterance embedding
    #: Channel splitting (``EmotionCore.recognize_split``): optional names of the channels, in order.
    channel_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class EmbedOptions:
    frames: bool = False  # return per-frame features
    channel_names: tuple[str, ...] = ()  # channel splitting: optional names of the channels, in order


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Score:
    index: int
    label: str
    label_zh: str
    score: float


@dataclass(frozen=True, slots=True)
class Utterance:
    """Top label among enabled labels, its probability, and every label's score in model order."""

    label: str
    label_zh: str
    confidence: float
    scores: tuple[Score, ...]


@dataclass(frozen=True, slots=True)
class Frame:
    start_s: float
    end_s: float
    label: str
    confidence: float
    scores: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Timing:
    queue_ms: float
    inference_ms: float
    decode_ms: float
    total_ms: float
    batch_size: int


@dataclass(frozen=True)
class ModelCard:
    """The served model, as every protocol describes it."""

    name: str
    version: str
    precision: str
    untrained: bool
    labels: tuple[Label, ...]
    sample_rate_hz: int
    frame_rate_hz: float
    embedding_dim: int
    provider: str
    engine: str
    max_duration_s: float
    min_duration_s: float
    has_head: bool
    max_audio_s: float = 0.0  # longest Recognize/Embed audio (0: no limit but the message size)
    max_segment_s: float = 0.0  # longest segment of a long recording (= max_duration_s; 0: not segmented)
    #: What a user must know before trusting the answers (e.g. an emotion2vec+ model enabling fewer than nine
    #: emotions): the manifest's warnings and the server's own label check (``modelrepo.labels``).
    warnings: tuple[str, ...] = ()
    #: Accuracy as measured by the exporter (None: not measured): the largest |Δprobability| of this model
    #: against the fp32 model, and between an item answered alone and in a batch as this server batches it
    #: (padded, or in equal-length groups for int8, at the intra-op thread counts its sessions use).
    max_abs_prob_vs_fp32: float | None = None
    max_abs_prob_batch_vs_alone: float | None = None
    #: The batch policy as the OIP model configuration shows it (issue 24): ``--max-batch-size`` (0: not
    #: known), ``--preferred-batch-sizes`` and ``--max-queue-delay-ms`` in seconds.
    max_batch_size: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0


@dataclass(frozen=True)
class Recognition:
    """One recognised utterance. ``probs``/``frame_probs`` are the raw model-order arrays (for tensors)."""

    utterance: Utterance
    duration_s: float
    timing: Timing
    frames: tuple[Frame, ...]
    embedding: FloatArray | None
    probs: FloatArray
    frame_probs: FloatArray | None
    #: Long recordings (see ``longform``): the segments in order. ``utterance``/``probs`` are then the
    #: duration-weighted mean over them, ``embedding`` the frame-weighted mean, ``frames``/``frame_probs``
    #: every segment's frames in order (absolute times), ``timing`` summed over segments. Empty for audio
    #: answered in one pass.
    segments: tuple[SegmentResult, ...] = ()
    voiced_s: float = 0.0  # audio inside segments (long recordings)


@dataclass(frozen=True)
class SegmentResult:
    """One segment of a long recording; its frames are ``Recognition.frames[first_frame:][:frame_count]``."""

    segment_id: int
    start_s: float
    end_s: float
    utterance: Utterance
    timing: Timing
    first_frame: int
    frame_count: int  # frames in Recognition.frames (0 without frame granularity)
    embedding: FloatArray | None  # when the embedding was asked for
    probs: FloatArray  # [labels], model order


@dataclass(frozen=True)
class EmbeddingResult:
    embedding: FloatArray  # [D]
    frame_features: FloatArray | None  # [T, D] when asked for
    duration_s: float
    timing: Timing
    #: Long recordings: each segment's embedding; ``embedding`` is their frame-weighted mean and
    #: ``frame_features`` every segment's frames in order.
    segments: tuple[EmbeddingSegment, ...] = ()


@dataclass(frozen=True)
class EmbeddingSegment:
    segment_id: int
    start_s: float
    end_s: float
    embedding: FloatArray  # [D]: mean of the segment's frame features
    first_frame: int  # its rows of EmbeddingResult.frame_features (when asked for)
    frame_count: int  # valid model frames of the segment (its weight in the mean)
    timing: Timing


@dataclass(frozen=True)
class ChannelRecognition:
    """One channel of a recording answered apart: ``recognition`` is what a mono file of it gets."""

    channel: int  # 0-based index in the recording
    name: str  # the caller's name for it, or ""
    recognition: Recognition


@dataclass(frozen=True)
class SplitRecognition:
    """A recording recognised channel by channel (channel splitting): one result per channel, in order."""

    duration_s: float  # the recording's duration (every channel's)
    channels: tuple[ChannelRecognition, ...]


@dataclass(frozen=True)
class ChannelEmbedding:
    channel: int
    name: str
    result: EmbeddingResult


@dataclass(frozen=True)
class SplitEmbedding:
    duration_s: float
    channels: tuple[ChannelEmbedding, ...]


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
