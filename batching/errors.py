"""Errors raised to callers of :meth:`DynamicBatcher.submit`.

They are domain errors: the server translates them to gRPC status codes in one place
(QueueFull -> RESOURCE_EXHAUSTED, DeadlineExceeded -> DEADLINE_EXCEEDED, BatcherClosed -> UNAVAILABLE).
"""

from __future__ import annotations

__all__ = ["BatcherClosed", "BatcherError", "DeadlineExceeded", "QueueFull"]


class BatcherError(Exception):
    """Base class of the batcher's own errors.

    ``rejected`` is true when ``submit`` refused the request at once (the batcher reported it to its
    observer's ``on_reject``); false when a request already queued failed later.
    """

    def __init__(self, *args: object, rejected: bool = False) -> None:
        super().__init__(*args)
        self.rejected = rejected


class QueueFull(BatcherError):
    """The queue is at its bound in requests or in queued cost; the request was refused at once.

    ``reason`` is ``"requests"`` or ``"cost"``: which bound would have been exceeded.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, rejected=True)
        self.reason = reason


class DeadlineExceeded(BatcherError):
    """The request's deadline passed before it ran, or the fitted latency model says it cannot finish in time.

    A request failed this way never ran on the runner.
    """


class BatcherClosed(BatcherError):
    """The batcher is closing or closed and accepts no new work (or dropped queued work on a hard close)."""
