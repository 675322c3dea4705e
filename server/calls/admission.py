"""Admission and drain accounting for every call, whatever the protocol.

:class:`Admission` knows whether the server is ready or draining, how many calls are in progress and how
many stream slots are taken, and counts every call exactly once (``emotion_requests_total{rpc,code,
protocol}`` and, for refusals, ``emotion_rejections_total{reason}`` through the one classification in
``errors``), with the retry hint attached to the refusals worth retrying. ``EmotionCore`` owns one and
runs every call body inside :meth:`Admission.unary` or :meth:`Admission.stream`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from emotion2vec_serving.server.calls.errors import (
    CallFailed,
    Draining,
    ErrorKind,
    Failure,
    TooManyStreams,
    classify,
)
from emotion2vec_serving.server.calls.types import BatcherLike, CallContext
from emotion2vec_serving.server.metrics import ServerMetrics

__all__ = ["Admission"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Admission:
    """Readiness, drain, in-flight calls and stream slots; every outcome counted once."""

    def __init__(self, batcher: BatcherLike, metrics: ServerMetrics, max_concurrent_streams: int) -> None:
        self._batcher = batcher
        self._metrics = metrics
        self._max_streams = max_concurrent_streams
        self._draining = False
        self._ready = False
        #: Segments of long recordings accepted but not yet handed to the batcher (count, samples): the
        #: queue-drain estimate counts them (``longform`` keeps it up to date).
        self.backlog = [0, 0]
        self._active_streams = 0
        self._inflight = 0
        # Every call answered, by (protocol, rpc, code): the drain's accounting (see ``outcomes``).
        self._outcomes: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ readiness and drain

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def ready(self) -> bool:
        """Start-up finished and not draining (shared by every protocol's readiness)."""
        return self._ready and not self._draining

    def mark_ready(self) -> None:
        self._ready = True

    def withdraw_readiness(self) -> None:
        """Report not ready on every protocol while still serving: the drain's first step, so load balancers
        and resolvers move new work elsewhere before the front ends stop accepting it (issue 14)."""
        self._ready = False

    def begin_drain(self) -> None:
        """Refuse new calls (UNAVAILABLE); calls already accepted run to completion."""
        self._draining = True

    @property
    def active_streams(self) -> int:
        return self._active_streams

    @property
    def inflight(self) -> int:
        return self._inflight

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in progress (or the timeout); True when idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("%d call(s) still running after the drain grace", self._inflight)
            return False
        return True

    @property
    def outcomes(self) -> dict[tuple[str, str, str], int]:
        """Calls answered since start by (protocol, rpc, code): a call counted here reached the core."""
        return dict(self._outcomes)

    # ------------------------------------------------------------------ retry hints

    def estimated_drain_s(self) -> float:
        """Seconds to run the queued work, counting the segments of long recordings not yet queued."""
        batcher: Any = self._batcher
        base = float(batcher.estimated_drain_s)
        count, samples = self.backlog
        model = getattr(batcher, "latency_model", None)
        if not count or model is None:
            return base
        try:
            return float(model.estimated_drain_s(
                int(batcher.queued_requests) + count, int(batcher.queued_cost) + samples,
                batcher.policy.max_batch_size, batcher.instances,
            ))
        except AttributeError:
            return base

    def _retry_after_ms(self) -> int:
        try:
            return int(1000 * max(0.05, self.estimated_drain_s()))
        except Exception:  # the hint is best effort
            return 100

    # ------------------------------------------------------------------ counting

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def _observe(self, call: CallContext, code: str, duration_s: float) -> None:
        self._outcomes[(call.protocol, call.rpc, code)] += 1
        if call.trace is not None:  # the call span ends with the call's one count (server/tracing.py)
            call.trace.finish(call.protocol, call.rpc, code)
        self._metrics.observe_request(call.rpc, code, duration_s, call.protocol)

    def _check_accepting(self) -> None:
        if self._draining:
            raise Draining()

    def _fail(self, exc: BaseException, call: CallContext, start: float) -> CallFailed:
        """Classify, count once (requests + rejection reason), log; the exception to raise."""
        failure = classify(exc, self._retry_after_ms())
        if failure.reason is not None:
            self._metrics.reject(failure.reason)
        self._observe(call, failure.kind.value, time.monotonic() - start)
        if failure.kind is ErrorKind.INTERNAL:
            log.error("%s (%s) failed", call.rpc, call.protocol, exc_info=exc)
        else:
            log.debug("%s (%s) -> %s: %s", call.rpc, call.protocol, failure.kind.value, failure.message)
        failed = CallFailed(failure)
        failed.__cause__ = exc
        return failed

    def refuse(self, exc: BaseException, call: CallContext) -> Failure:
        """Count a call a front end refused before calling the core (e.g. a malformed message).

        A draining server reports the drain instead, as it would for any call.
        """
        if self._draining:
            exc = Draining()
        return self._fail(exc, call, time.monotonic()).failure

    # ------------------------------------------------------------------ calls

    async def unary(self, call: CallContext, body: Callable[[float], Awaitable[T]]) -> T:
        """Run one unary call: admission, then ``body(start)``; every outcome counted once."""
        start = time.monotonic()
        if call.trace is not None:
            call.trace.begin(call.protocol, call.rpc)
        self._enter()
        try:
            self._check_accepting()
            result = await body(start)
        except asyncio.CancelledError:
            self._observe(call, "CANCELLED", time.monotonic() - start)
            raise
        except Exception as exc:
            raise self._fail(exc, call, start) from exc
        finally:
            self._leave()
        self._observe(call, "OK", time.monotonic() - start)
        return result

    @contextlib.asynccontextmanager
    async def stream(self, call: CallContext) -> AsyncIterator[None]:
        """One stream slot for the block; the call is counted once at exit. Any exception raised inside
        the block is classified, counted and re-raised as :class:`CallFailed`."""
        start = time.monotonic()
        if call.trace is not None:
            call.trace.begin(call.protocol, call.rpc)
        try:
            self._check_accepting()
            if self._active_streams >= self._max_streams:
                raise TooManyStreams(f"too many open streams (limit {self._max_streams}); retry later")
        except (Draining, TooManyStreams) as refused:
            raise self._fail(refused, call, start) from refused
        self._active_streams += 1
        self._metrics.active_streams.set(self._active_streams)
        self._enter()
        code: str | None = "OK"
        try:
            yield
        except CallFailed:
            code = None  # counted already
            raise
        except Exception as exc:
            code = None
            raise self._fail(exc, call, start) from exc
        except BaseException:  # cancelled (or the generator closed) while streaming
            code = "CANCELLED"
            raise
        finally:
            self._leave()
            self._active_streams -= 1
            self._metrics.active_streams.set(self._active_streams)
            if code is not None:
                self._observe(call, code, time.monotonic() - start)
