"""The one table that maps domain errors to gRPC status codes.

Core code raises domain errors (``AudioError``, ``QueueFull``, ``RunnerError``...); only this module knows
about gRPC codes. Messages are written for the person reading the client's error.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from emotion2vec_serving.batching import BatcherClosed, DeadlineExceeded, QueueFull
from emotion2vec_serving.server.runner import RunnerError, RunnerOutOfMemory

__all__ = [
    "RETRY_AFTER_METADATA_KEY",
    "Draining",
    "InvalidRequest",
    "NoClassifierHead",
    "Status",
    "TooManyStreams",
    "to_status",
]

#: Trailing metadata key with a suggested wait before retrying, in milliseconds.
RETRY_AFTER_METADATA_KEY = "retry-after-ms"


class InvalidRequest(ValueError):
    """The request is malformed (missing audio, bad stream order, bad segmentation settings...)."""


class Draining(RuntimeError):
    """The server is shutting down and accepts no new work."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down; retry on another replica")


class TooManyStreams(RuntimeError):
    """More StreamRecognize calls are open than the server allows."""


class NoClassifierHead(RuntimeError):
    """The served model has no classifier head (emotion2vec_base): only Embed works."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model} has no emotion classifier head; only Embed is available")


@dataclass(frozen=True)
class Status:
    """How one error is reported: status code, message, rejection reason for metrics, trailing metadata."""

    code: grpc.StatusCode
    message: str
    reason: str | None  # label of emotion_rejections_total, None when the error is not a rejection
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def _audio_error_types() -> tuple[type[BaseException], ...]:
    # Imported lazily: the audio module pulls in the decoders, and this table must stay importable alone.
    try:
        from emotion2vec_serving.server.audio import AudioError
    except ImportError:  # pragma: no cover - audio module always ships with the server
        return ()
    return (AudioError,)


def to_status(exc: BaseException, *, retry_after_ms: int | None = None) -> Status:
    """Translate a domain error raised while serving a call into the gRPC status to return.

    ``retry_after_ms`` is sent as trailing metadata on RESOURCE_EXHAUSTED and UNAVAILABLE.
    """
    retry = ((RETRY_AFTER_METADATA_KEY, str(max(1, retry_after_ms))),) if retry_after_ms is not None else ()
    if isinstance(exc, (*_audio_error_types(), InvalidRequest)):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc), "invalid_argument")
    if isinstance(exc, QueueFull):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "the server is overloaded (request queue full); retry after a short wait",
                      None,  # the batcher reports queue_full rejections itself
                      retry)
    if isinstance(exc, TooManyStreams):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), "too_many_streams", retry)
    if isinstance(exc, DeadlineExceeded):
        return Status(grpc.StatusCode.DEADLINE_EXCEEDED,
                      "the deadline passed before the request could be processed "
                      "(the server is busy or the deadline is too short)",
                      None)  # the batcher counts "deadline" rejections and expiries itself
    if isinstance(exc, Draining):
        return Status(grpc.StatusCode.UNAVAILABLE, str(exc), "draining", retry)
    if isinstance(exc, BatcherClosed):  # the batcher counts its own "draining" rejections
        return Status(grpc.StatusCode.UNAVAILABLE, str(Draining()), None, retry)
    if isinstance(exc, NoClassifierHead):
        return Status(grpc.StatusCode.FAILED_PRECONDITION, str(exc), None)
    if isinstance(exc, RunnerOutOfMemory):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "the audio is too long to process with the memory available; send shorter audio",
                      None, retry)
    if isinstance(exc, RunnerError):
        return Status(grpc.StatusCode.UNAVAILABLE, f"inference failed: {exc}", None, retry)
    return Status(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", None)
