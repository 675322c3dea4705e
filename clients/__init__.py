"""Python client for the emotion2vec serving API (sync and asyncio), and the ``emotion-client`` CLI.

Imports only the generated ``emotion.v1`` stubs: callers get typed dataclasses and numpy arrays, never
protobuf messages.
"""

from ._requests import Segmentation
from .aio import AsyncEmotionClient
from .channel import ChannelSettings, TLSConfig
from .client import SERVICE_NAME, EmotionClient
from .errors import (
    DeadlineExceeded,
    EmotionClientError,
    InvalidAudio,
    NotFound,
    Overloaded,
    PermissionDenied,
    ServerError,
    Unauthenticated,
    Unavailable,
)
from .results import (
    EmbeddingResult,
    Frame,
    LabelInfo,
    ModelInfo,
    ModelRef,
    Recognition,
    Segment,
    StreamSummary,
    Timing,
)
from .retry import NO_RETRY, RetryPolicy

__all__ = [
    "NO_RETRY",
    "SERVICE_NAME",
    "AsyncEmotionClient",
    "ChannelSettings",
    "DeadlineExceeded",
    "EmbeddingResult",
    "EmotionClient",
    "EmotionClientError",
    "Frame",
    "InvalidAudio",
    "LabelInfo",
    "ModelInfo",
    "ModelRef",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "Recognition",
    "RetryPolicy",
    "Segment",
    "Segmentation",
    "ServerError",
    "StreamSummary",
    "TLSConfig",
    "Timing",
    "Unauthenticated",
    "Unavailable",
]
