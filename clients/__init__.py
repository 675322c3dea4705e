"""Python client for the emotion2vec serving API (sync and asyncio), and the ``emotion-client`` CLI.

Imports only the generated ``emotion.v1`` stubs: callers get typed dataclasses and numpy arrays, never
protobuf messages. The names below load on first use (PEP 562), so ``clients.wire`` (the constants the
server shares) can be imported without loading gRPC or the stubs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        ChannelEmbedding,
        ChannelRecognition,
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

#: Public name -> the module of this package that defines it.
_WHERE = {
    "Segmentation": "_requests",
    "AsyncEmotionClient": "aio",
    "ChannelSettings": "channel", "TLSConfig": "channel",
    "SERVICE_NAME": "client", "EmotionClient": "client",
    **{name: "errors" for name in ("DeadlineExceeded", "EmotionClientError", "InvalidAudio", "NotFound",
                                   "Overloaded", "PermissionDenied", "ServerError", "Unauthenticated",
                                   "Unavailable")},
    **{name: "results" for name in ("ChannelEmbedding", "ChannelRecognition", "EmbeddingResult", "Frame",
                                    "LabelInfo", "ModelInfo", "ModelRef", "Recognition", "Segment",
                                    "StreamSummary", "Timing")},
    "NO_RETRY": "retry", "RetryPolicy": "retry",
}

__all__ = [
    "NO_RETRY",
    "SERVICE_NAME",
    "AsyncEmotionClient",
    "ChannelEmbedding",
    "ChannelRecognition",
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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
