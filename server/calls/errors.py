"""Domain errors and the ONE classification of errors into outcomes, shared by every front end.

Core code raises domain errors (``AudioError``, ``QueueFull``, ``RunnerError``...). :func:`classify` turns
any of them into a :class:`Failure`: a protocol-neutral kind (whose value is the ``code`` label of
``emotion_requests_total`` on every protocol), the message for the person reading the client's error, the
``emotion_rejections_total`` reason when the error is a rejection the server counts itself, and the
suggested wait before retrying. Each front end maps kinds to its own statuses: ``grpc_status`` (gRPC
codes and trailing metadata) and ``http_status`` (HTTP status, JSON body, headers). No protocol types here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from emotion2vec_serving.batching import BatcherClosed, DeadlineExceeded, QueueFull
from emotion2vec_serving.server.audio.errors import AudioError
from emotion2vec_serving.server.runtime.contract import RunnerError, RunnerOutOfMemory

__all__ = [
    "CallFailed",
    "Draining",
    "ErrorKind",
    "Failure",
    "InvalidRequest",
    "ModelNotFound",
    "NoClassifierHead",
    "StreamTimeout",
    "TooManyStreams",
    "Unauthenticated",
    "classify",
]


class ErrorKind(str, enum.Enum):
    """Outcome of a call. Values are the canonical code names used as the metrics ``code`` label."""

    OK = "OK"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


class InvalidRequest(ValueError):
    """The request is malformed (missing audio, bad stream order, bad segmentation settings...)."""


class Draining(RuntimeError):
    """The server is shutting down and accepts no new work."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down; retry on another replica")


class TooManyStreams(RuntimeError):
    """More streaming calls are open than the server allows."""


class StreamTimeout(Exception):
    """A stream ran past one of its time limits (``calls.streams.StreamClock``): no audio for
    ``--stream-idle-timeout-s``, open longer than ``--stream-max-open-s``, or (WebSocket) no config in time.
    ``reason`` is the ``emotion_stream_endings_total`` reason: idle_timeout, duration_limit, config_timeout.

    DEADLINE_EXCEEDED, not RESOURCE_EXHAUSTED: the server is not overloaded and the same stream retried
    would run into the same limit (gRPC's retry policy retries RESOURCE_EXHAUSTED, and for a stream that
    had no answer yet it would replay the config and wait idle again); the message names the limit, so the
    client knows to open a new stream when it has audio again (idle) or to continue in a new one (the
    wall-clock limit)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoClassifierHead(RuntimeError):
    """The served model has no classifier head (emotion2vec_base): only Embed works."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model} has no emotion classifier head; only Embed is available")


class ModelNotFound(LookupError):
    """A call named a model (or version) this server does not serve."""


class Unauthenticated(PermissionError):
    """The call carries no valid credentials."""


@dataclass(frozen=True)
class Failure:
    """How one failed call is reported, whatever the protocol."""

    kind: ErrorKind
    message: str
    reason: str | None  # label of emotion_rejections_total; None when not a rejection counted here
    retry_after_ms: int | None = None  # suggested wait before retrying (RESOURCE_EXHAUSTED, UNAVAILABLE)


class CallFailed(Exception):
    """Raised by ``EmotionCore`` calls once the failure has been counted; front ends only report it."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def classify(exc: BaseException, retry_after_ms: int | None = None) -> Failure:
    """The one classification of an error raised while serving a call.

    ``retry_after_ms`` (the caller's current estimate) is attached to the kinds worth retrying soon.
    """
    if isinstance(exc, CallFailed):
        return exc.failure
    retry = max(1, int(retry_after_ms)) if retry_after_ms is not None else None
    if isinstance(exc, (AudioError, InvalidRequest)):
        return Failure(ErrorKind.INVALID_ARGUMENT, str(exc), "invalid_argument")
    if isinstance(exc, QueueFull):
        return Failure(ErrorKind.RESOURCE_EXHAUSTED,
                       "the server is overloaded (request queue full); retry after a short wait",
                       "queue_full", retry)
    if isinstance(exc, TooManyStreams):
        return Failure(ErrorKind.RESOURCE_EXHAUSTED, str(exc), "too_many_streams", retry)
    if isinstance(exc, DeadlineExceeded):
        # Refused at submission: a rejection. Expired while queued: counted as a drop (batcher_dropped).
        return Failure(ErrorKind.DEADLINE_EXCEEDED,
                       "the deadline passed before the request could be processed "
                       "(the server is busy or the deadline is too short)",
                       "deadline" if exc.rejected else None)
    if isinstance(exc, StreamTimeout):
        return Failure(ErrorKind.DEADLINE_EXCEEDED, str(exc), None)
    if isinstance(exc, Draining):
        return Failure(ErrorKind.UNAVAILABLE, str(exc), "draining", retry)
    if isinstance(exc, BatcherClosed):
        return Failure(ErrorKind.UNAVAILABLE, str(Draining()), "draining" if exc.rejected else None, retry)
    if isinstance(exc, NoClassifierHead):
        return Failure(ErrorKind.FAILED_PRECONDITION, str(exc), None)
    if isinstance(exc, ModelNotFound):
        return Failure(ErrorKind.NOT_FOUND, str(exc), None)
    if isinstance(exc, Unauthenticated):
        return Failure(ErrorKind.UNAUTHENTICATED, str(exc) or "missing or invalid bearer token",
                       "unauthenticated")
    if isinstance(exc, RunnerOutOfMemory):
        return Failure(ErrorKind.RESOURCE_EXHAUSTED,
                       "the audio is too long to process with the memory available; send shorter audio",
                       None, retry)
    if isinstance(exc, RunnerError):
        return Failure(ErrorKind.UNAVAILABLE, f"inference failed: {exc}", None, retry)
    return Failure(ErrorKind.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", None)
