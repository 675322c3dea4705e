from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PcmEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PCM_ENCODING_UNSPECIFIED: _ClassVar[PcmEncoding]
    PCM_ENCODING_S16LE: _ClassVar[PcmEncoding]
    PCM_ENCODING_F32LE: _ClassVar[PcmEncoding]

class ChannelMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_MODE_UNSPECIFIED: _ClassVar[ChannelMode]
    CHANNEL_MODE_MIX: _ClassVar[ChannelMode]
    CHANNEL_MODE_SPLIT: _ClassVar[ChannelMode]

class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANULARITY_UNSPECIFIED: _ClassVar[Granularity]
    GRANULARITY_UTTERANCE: _ClassVar[Granularity]
    GRANULARITY_FRAME: _ClassVar[Granularity]

class SegmentationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEGMENTATION_MODE_UNSPECIFIED: _ClassVar[SegmentationMode]
    SEGMENTATION_MODE_ENERGY: _ClassVar[SegmentationMode]
    SEGMENTATION_MODE_FIXED: _ClassVar[SegmentationMode]
PCM_ENCODING_UNSPECIFIED: PcmEncoding
PCM_ENCODING_S16LE: PcmEncoding
PCM_ENCODING_F32LE: PcmEncoding
CHANNEL_MODE_UNSPECIFIED: ChannelMode
CHANNEL_MODE_MIX: ChannelMode
CHANNEL_MODE_SPLIT: ChannelMode
GRANULARITY_UNSPECIFIED: Granularity
GRANULARITY_UTTERANCE: Granularity
GRANULARITY_FRAME: Granularity
SEGMENTATION_MODE_UNSPECIFIED: SegmentationMode
SEGMENTATION_MODE_ENERGY: SegmentationMode
SEGMENTATION_MODE_FIXED: SegmentationMode

class RawAudio(_message.Message):
    __slots__ = ("data", "encoding", "sample_rate_hz", "channels")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    encoding: PcmEncoding
    sample_rate_hz: int
    channels: int
    def __init__(self, data: _Optional[bytes] = ..., encoding: _Optional[_Union[PcmEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Audio(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawAudio
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawAudio, _Mapping]] = ...) -> None: ...

class EmotionScore(_message.Message):
    __slots__ = ("label", "label_zh", "score", "index")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_ZH_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    label: str
    label_zh: str
    score: float
    index: int
    def __init__(self, label: _Optional[str] = ..., label_zh: _Optional[str] = ..., score: _Optional[float] = ..., index: _Optional[int] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "inference_ms", "decode_ms", "total_ms", "batch_size")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    inference_ms: float
    decode_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class UtteranceResult(_message.Message):
    __slots__ = ("label", "label_zh", "confidence", "scores")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_ZH_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    label: str
    label_zh: str
    confidence: float
    scores: _containers.RepeatedCompositeFieldContainer[EmotionScore]
    def __init__(self, label: _Optional[str] = ..., label_zh: _Optional[str] = ..., confidence: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[EmotionScore, _Mapping]]] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("start_s", "end_s", "label", "confidence", "scores")
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    start_s: float
    end_s: float
    label: str
    confidence: float
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ..., scores: _Optional[_Iterable[float]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "precision", "untrained")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    UNTRAINED_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    precision: str
    untrained: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., precision: _Optional[str] = ..., untrained: _Optional[bool] = ...) -> None: ...

class RecognizeRequest(_message.Message):
    __slots__ = ("audio", "granularity", "return_embedding", "smoothing_frames", "priority", "channel_mode", "channel_names")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    RETURN_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_FRAMES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_MODE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    granularity: Granularity
    return_embedding: bool
    smoothing_frames: int
    priority: int
    channel_mode: ChannelMode
    channel_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., granularity: _Optional[_Union[Granularity, str]] = ..., return_embedding: _Optional[bool] = ..., smoothing_frames: _Optional[int] = ..., priority: _Optional[int] = ..., channel_mode: _Optional[_Union[ChannelMode, str]] = ..., channel_names: _Optional[_Iterable[str]] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("utterance", "frames", "embedding", "duration_s", "timing", "model", "segments", "voiced_s", "channels")
    UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    VOICED_S_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    utterance: UtteranceResult
    frames: _containers.RepeatedCompositeFieldContainer[FrameResult]
    embedding: Embedding
    duration_s: float
    timing: Timing
    model: ModelRef
    segments: _containers.RepeatedCompositeFieldContainer[SegmentResult]
    voiced_s: float
    channels: _containers.RepeatedCompositeFieldContainer[ChannelResult]
    def __init__(self, utterance: _Optional[_Union[UtteranceResult, _Mapping]] = ..., frames: _Optional[_Iterable[_Union[FrameResult, _Mapping]]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., duration_s: _Optional[float] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., segments: _Optional[_Iterable[_Union[SegmentResult, _Mapping]]] = ..., voiced_s: _Optional[float] = ..., channels: _Optional[_Iterable[_Union[ChannelResult, _Mapping]]] = ...) -> None: ...

class ChannelResult(_message.Message):
    __slots__ = ("channel", "name", "utterance", "frames", "embedding", "duration_s", "voiced_s", "segments", "timing")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    VOICED_S_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    channel: int
    name: str
    utterance: UtteranceResult
    frames: _containers.RepeatedCompositeFieldContainer[FrameResult]
    embedding: Embedding
    duration_s: float
    voiced_s: float
    segments: _containers.RepeatedCompositeFieldContainer[SegmentResult]
    timing: Timing
    def __init__(self, channel: _Optional[int] = ..., name: _Optional[str] = ..., utterance: _Optional[_Union[UtteranceResult, _Mapping]] = ..., frames: _Optional[_Iterable[_Union[FrameResult, _Mapping]]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., duration_s: _Optional[float] = ..., voiced_s: _Optional[float] = ..., segments: _Optional[_Iterable[_Union[SegmentResult, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("audio", "return_frames", "priority", "channel_mode", "channel_names")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    RETURN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_MODE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    return_frames: bool
    priority: int
    channel_mode: ChannelMode
    channel_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., return_frames: _Optional[bool] = ..., priority: _Optional[int] = ..., channel_mode: _Optional[_Union[ChannelMode, str]] = ..., channel_names: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embedding", "frames", "dim", "duration_s", "timing", "model", "segments", "channels")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    embedding: Embedding
    frames: _containers.RepeatedCompositeFieldContainer[Embedding]
    dim: int
    duration_s: float
    timing: Timing
    model: ModelRef
    segments: _containers.RepeatedCompositeFieldContainer[EmbeddingSegment]
    channels: _containers.RepeatedCompositeFieldContainer[ChannelEmbedding]
    def __init__(self, embedding: _Optional[_Union[Embedding, _Mapping]] = ..., frames: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dim: _Optional[int] = ..., duration_s: _Optional[float] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., segments: _Optional[_Iterable[_Union[EmbeddingSegment, _Mapping]]] = ..., channels: _Optional[_Iterable[_Union[ChannelEmbedding, _Mapping]]] = ...) -> None: ...

class ChannelEmbedding(_message.Message):
    __slots__ = ("channel", "name", "embedding", "frames", "segments", "duration_s", "timing")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    channel: int
    name: str
    embedding: Embedding
    frames: _containers.RepeatedCompositeFieldContainer[Embedding]
    segments: _containers.RepeatedCompositeFieldContainer[EmbeddingSegment]
    duration_s: float
    timing: Timing
    def __init__(self, channel: _Optional[int] = ..., name: _Optional[str] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., frames: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., segments: _Optional[_Iterable[_Union[EmbeddingSegment, _Mapping]]] = ..., duration_s: _Optional[float] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class EmbeddingSegment(_message.Message):
    __slots__ = ("segment_id", "start_s", "end_s", "embedding", "first_frame", "frame_count", "timing")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    segment_id: int
    start_s: float
    end_s: float
    embedding: Embedding
    first_frame: int
    frame_count: int
    timing: Timing
    def __init__(self, segment_id: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., first_frame: _Optional[int] = ..., frame_count: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class SegmentationConfig(_message.Message):
    __slots__ = ("mode", "min_segment_s", "max_segment_s", "min_silence_s", "energy_threshold_db", "window_s", "hop_s")
    MODE_FIELD_NUMBER: _ClassVar[int]
    MIN_SEGMENT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENT_S_FIELD_NUMBER: _ClassVar[int]
    MIN_SILENCE_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_THRESHOLD_DB_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    HOP_S_FIELD_NUMBER: _ClassVar[int]
    mode: SegmentationMode
    min_segment_s: float
    max_segment_s: float
    min_silence_s: float
    energy_threshold_db: float
    window_s: float
    hop_s: float
    def __init__(self, mode: _Optional[_Union[SegmentationMode, str]] = ..., min_segment_s: _Optional[float] = ..., max_segment_s: _Optional[float] = ..., min_silence_s: _Optional[float] = ..., energy_threshold_db: _Optional[float] = ..., window_s: _Optional[float] = ..., hop_s: _Optional[float] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("encoding", "sample_rate_hz", "channels", "segmentation", "return_embedding", "priority")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    RETURN_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    encoding: PcmEncoding
    sample_rate_hz: int
    channels: int
    segmentation: SegmentationConfig
    return_embedding: bool
    priority: int
    def __init__(self, encoding: _Optional[_Union[PcmEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., segmentation: _Optional[_Union[SegmentationConfig, _Mapping]] = ..., return_embedding: _Optional[bool] = ..., priority: _Optional[int] = ...) -> None: ...

class StreamRecognizeRequest(_message.Message):
    __slots__ = ("config", "audio")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    audio: bytes
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., audio: _Optional[bytes] = ...) -> None: ...

class SegmentResult(_message.Message):
    __slots__ = ("segment_id", "start_s", "end_s", "result", "embedding", "timing", "first_frame", "frame_count")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    segment_id: int
    start_s: float
    end_s: float
    result: UtteranceResult
    embedding: Embedding
    timing: Timing
    first_frame: int
    frame_count: int
    def __init__(self, segment_id: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., result: _Optional[_Union[UtteranceResult, _Mapping]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., first_frame: _Optional[int] = ..., frame_count: _Optional[int] = ...) -> None: ...

class StreamSummary(_message.Message):
    __slots__ = ("segments", "duration_s", "voiced_s", "overall", "label_seconds")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    VOICED_S_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    LABEL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    segments: int
    duration_s: float
    voiced_s: float
    overall: UtteranceResult
    label_seconds: _containers.RepeatedCompositeFieldContainer[EmotionScore]
    def __init__(self, segments: _Optional[int] = ..., duration_s: _Optional[float] = ..., voiced_s: _Optional[float] = ..., overall: _Optional[_Union[UtteranceResult, _Mapping]] = ..., label_seconds: _Optional[_Iterable[_Union[EmotionScore, _Mapping]]] = ...) -> None: ...

class StreamRecognizeResponse(_message.Message):
    __slots__ = ("segment", "summary", "model")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentResult
    summary: StreamSummary
    model: ModelRef
    def __init__(self, segment: _Optional[_Union[SegmentResult, _Mapping]] = ..., summary: _Optional[_Union[StreamSummary, _Mapping]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "labels", "sample_rate_hz", "frame_rate_hz", "embedding_dim", "execution_provider", "max_duration_s", "min_duration_s", "max_audio_s", "max_segment_s", "engine", "warnings", "max_abs_prob_vs_fp32", "max_abs_prob_batch_vs_alone")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENT_S_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_PROB_VS_FP32_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_PROB_BATCH_VS_ALONE_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    labels: _containers.RepeatedCompositeFieldContainer[EmotionScore]
    sample_rate_hz: int
    frame_rate_hz: float
    embedding_dim: int
    execution_provider: str
    max_duration_s: float
    min_duration_s: float
    max_audio_s: float
    max_segment_s: float
    engine: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    max_abs_prob_vs_fp32: float
    max_abs_prob_batch_vs_alone: float
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., labels: _Optional[_Iterable[_Union[EmotionScore, _Mapping]]] = ..., sample_rate_hz: _Optional[int] = ..., frame_rate_hz: _Optional[float] = ..., embedding_dim: _Optional[int] = ..., execution_provider: _Optional[str] = ..., max_duration_s: _Optional[float] = ..., min_duration_s: _Optional[float] = ..., max_audio_s: _Optional[float] = ..., max_segment_s: _Optional[float] = ..., engine: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., max_abs_prob_vs_fp32: _Optional[float] = ..., max_abs_prob_batch_vs_alone: _Optional[float] = ...) -> None: ...
