"""Observability hook: the batcher reports what it does through a small observer interface.

``server/metrics.py`` implements it with Prometheus; the batcher itself stays standard-library only.
All methods are optional: an observer may define any subset, the rest are no-ops. They are called on the
event loop and must not block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["BatchObserver", "ObserverProtocol"]


@runtime_checkable
class ObserverProtocol(Protocol):
    """The full observer interface (every method). Implementations may define only a subset."""

    def on_batch(
        self, size: int, padded_cost: int, useful_cost: int, run_s: float, queue_waits_s: list[float]
    ) -> None: ...

    def on_reject(self, reason: str) -> None: ...

    def on_expire(self, n: int) -> None: ...

    def on_cancel(self, n: int) -> None: ...

    def on_batch_error(self, size: int, exc: BaseException, will_retry: bool) -> None: ...

    def on_queue(self, requests: int, cost: int) -> None: ...


class BatchObserver:
    """No-op observer; subclass it and override what you need.

    - ``on_batch``: a batch ran successfully. ``padded_cost`` = size x longest item; ``useful_cost`` = sum of
      item costs (both in samples); ``run_s`` = time inside ``run_batch``; one queue wait per request.
    - ``on_reject(reason)``: ``submit`` refused a request: ``"queue_full"``, ``"draining"`` (closed) or
      ``"deadline"`` (already past, or cannot finish in time per the latency model).
    - ``on_expire(n)``: n queued requests failed with DeadlineExceeded without running.
    - ``on_cancel(n)``: n queued requests left the queue because their caller cancelled.
    - ``on_batch_error(size, exc, will_retry)``: ``run_batch`` raised; ``will_retry``: it
      is split and retried.
    - ``on_queue(requests, cost)``: the queue's size changed (gauges).
    """

    def on_batch(
        self, size: int, padded_cost: int, useful_cost: int, run_s: float, queue_waits_s: list[float]
    ) -> None:
        """A batch ran successfully."""

    def on_reject(self, reason: str) -> None:
        """``submit`` refused a request."""

    def on_expire(self, n: int) -> None:
        """n queued requests failed with DeadlineExceeded without running."""

    def on_cancel(self, n: int) -> None:
        """n queued requests were cancelled by their callers and left the queue."""

    def on_batch_error(self, size: int, exc: BaseException, will_retry: bool) -> None:
        """``run_batch`` raised for a batch of ``size``."""

    def on_queue(self, requests: int, cost: int) -> None:
        """The queue now holds ``requests`` requests worth ``cost`` samples."""


_METHODS = ("on_batch", "on_reject", "on_expire", "on_cancel", "on_batch_error", "on_queue")


def bind_observer(observer: object | None) -> dict[str, Callable[..., Any]]:
    """Resolve each observer method once, falling back to a no-op for the ones the observer lacks."""
    default = BatchObserver()
    source = observer if observer is not None else default
    return {name: getattr(source, name, getattr(default, name)) for name in _METHODS}
