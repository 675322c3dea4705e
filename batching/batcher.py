"""DynamicBatcher: asyncio front end that queues requests, forms batches and runs them on runner threads.

Concurrency model: everything that touches the queue, the latency model and the request futures runs on
one event loop, so none of it needs locks. ``run_batch`` is blocking and runs in dedicated threads, one per
runner instance, so the loop keeps admitting requests and forming the next batch while batches run. A runner
thread hands a finished batch back with one ``call_soon_threadsafe`` whose callback sets every request's
future at once (issue 24: no ``concurrent.futures`` machinery and no extra loop iteration between the
batch's end and its callers waking). ``instances`` worker tasks each loop: ask the pure policy for a
decision, then either run the batch or wait on a future that ``submit`` resolves (or a timer, for
``Wait(seconds)``) — no polling.
A batch is chosen at the moment a runner is free, from the queue as it is then: deciding costs microseconds
on the loop, and late binding lets requests that arrived during the previous run join the best-fitting batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import queue as queue_module
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from .errors import BatcherClosed, DeadlineExceeded, QueueFull
from .latency import LatencyModel
from .observer import bind_observer
from .policy import BatchPolicy, DecideFn, Dispatch, decide
from .queue import RequestQueue
from .request import QueuedRequest

__all__ = ["DynamicBatcher"]

P = TypeVar("P")
R = TypeVar("R")

_log = logging.getLogger(__name__)


#: A runner thread's job: the payloads and the loop callback ``deliver(results, error, run_s)``.
_Job = tuple[list[Any], Callable[[Any, "BaseException | None", float], None]]


def _runner_thread(loop: asyncio.AbstractEventLoop, run_batch: Callable[[list[P]], Sequence[R]],
                   jobs: queue_module.SimpleQueue[_Job | None]) -> None:
    """Run batches until a None job; each result goes back to the loop in one ``call_soon_threadsafe``."""
    while True:
        job = jobs.get()
        if job is None:
            return
        payloads, deliver = job
        results: Sequence[R] | None = None
        error: BaseException | None = None
        t0 = time.perf_counter()  # timed in the runner thread: the model learns the device's time
        try:
            results = run_batch(payloads)
        except BaseException as exc:  # handed to the loop, which fails (or splits) the batch
            error = exc
        run_s = time.perf_counter() - t0
        try:
            loop.call_soon_threadsafe(deliver, results, error, run_s)
        except RuntimeError:  # the loop is closed: nobody is waiting for this batch any more
            return
        del job, payloads, deliver, results, error  # no reference kept while waiting for the next job


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class DynamicBatcher(Generic[P, R]):
    """Length-aware dynamic batcher.

    ``run_batch(payloads) -> results`` is a blocking callable, run in a runner thread; results come back in
    the same order. If it raises, every request of the batch fails with that exception, unless
    ``split_on_error(exc)`` is true: then the batch is split in halves and each half retried, down to single
    items, so a poison request only fails itself.

    ``instances`` runner instances run batches in parallel (one thread each). ``latency_model`` is fitted
    from measured runs when ``policy.adaptive``; pass one to tune it, one per runner device.

    ``out_of_memory(exc)``: true when a batch failed for lack of memory; the latency model then learns
    that this many items of that length do not fit (``LatencyModel.observe_out_of_memory``).

    ``decide`` is the batching decision (default: the length-aware ``batching.policy.decide``); the
    baselines ``batching.baselines.decide_fifo`` and ``decide_equal_shape`` plug in here for comparison.
    """

    def __init__(
        self,
        run_batch: Callable[[list[P]], Sequence[R]],
        policy: BatchPolicy | None = None,
        *,
        instances: int = 1,
        observer: object | None = None,
        split_on_error: Callable[[BaseException], bool] | None = None,
        latency_model: LatencyModel | None = None,
        decide: DecideFn = decide,
        out_of_memory: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        self._run_batch = run_batch
        self._decide = decide
        self.policy = policy if policy is not None else BatchPolicy()
        self.instances = instances
        self._split_on_error = split_on_error
        self._out_of_memory = out_of_memory
        self.latency_model = latency_model if latency_model is not None else LatencyModel()
        obs = bind_observer(observer)
        self._on_batch = obs["on_batch"]
        self._on_reject = obs["on_reject"]
        self._on_expire = obs["on_expire"]
        self._on_cancel = obs["on_cancel"]
        self._on_batch_error = obs["on_batch_error"]
        self._on_queue = obs["on_queue"]
        self._queue = RequestQueue(self.policy.max_queue_requests, self.policy.max_queue_cost)
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue_module.SimpleQueue[_Job | None] = queue_module.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._workers: list[asyncio.Task[None]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._running: set[QueuedRequest[P, R]] = set()
        self._closing = False
        self._flush = False
        self._closed = False

    # -- gauges -------------------------------------------------------------------------------------

    @property
    def queued_requests(self) -> int:
        """Requests waiting in the queue (not counting running batches)."""
        return len(self._queue)

    @property
    def queued_cost(self) -> int:
        """Samples waiting in the queue."""
        return self._queue.cost

    @property
    def estimated_drain_s(self) -> float:
        """Seconds to run the queued work with the fitted throughput (0.0 before any run was measured)."""
        return self.latency_model.estimated_drain_s(
            len(self._queue), self._queue.cost, self.policy.max_batch_size, self.instances
        )

    @property
    def closed(self) -> bool:
        """True once ``close`` was called: new requests are refused."""
        return self._closing

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the runner workers on the running event loop. Call once, before ``submit``."""
        if self._loop is not None:
            raise RuntimeError("DynamicBatcher.start() was already called")
        if self._closing:
            raise BatcherClosed("batcher is closed")
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=_runner_thread, args=(self._loop, self._run_batch, self._jobs),
                             name=f"batch-runner_{i}", daemon=True)
            for i in range(self.instances)
        ]
        for thread in self._threads:
            thread.start()
        self._workers = [
            asyncio.create_task(self._worker(), name=f"batch-runner-{i}") for i in range(self.instances)
        ]

    async def close(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Refuse new work; with ``drain`` finish everything accepted (within ``timeout_s`` if given).

        Requests still queued or running when the drain ends (or at once without ``drain``) fail with
        BatcherClosed. A run already inside ``run_batch`` cannot be interrupted: its thread finishes in the
        background and its results are dropped.
        """
        if self._closed:
            return
        self._closing = True
        self._flush = True  # no point waiting for batches to fill: nothing new will join
        self._wake_all()
        if drain and self._workers:
            done, _ = await asyncio.wait(self._workers, timeout=timeout_s)
            if len(done) < len(self._workers):
                _log.warning("batcher drain did not finish within %.3f s; failing the rest", timeout_s)
        self._closed = True
        # Fail running requests before cancelling the workers: cancellation unwinds their bookkeeping.
        for req in list(self._running):
            self._fail(req, BatcherClosed("batcher closed while the request was running"))
        self._running.clear()
        for task in self._workers:
            task.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        leftover = self._queue.drain_all()
        for req in leftover:
            self._fail(req, BatcherClosed("batcher closed before the request ran"))
        self._on_queue(0, 0)
        for _ in self._threads:
            self._jobs.put(None)  # each runner thread ends after its current run (if any)

    # -- submission ---------------------------------------------------------------------------------

    async def submit(self, payload: P, cost: int, deadline: float | None = None, priority: int = 0) -> R:
        """Queue one request and wait for its result.

        ``cost`` is its size in samples (> 0); ``deadline`` an absolute ``time.monotonic()`` time;
        ``priority`` higher runs first. Raises QueueFull at once when a queue bound would be exceeded,
        BatcherClosed after ``close``, DeadlineExceeded when the deadline passes before it runs or the
        latency model says it cannot finish in time, and whatever ``run_batch`` raised for its batch.
        Cancelling the awaiting task removes the request from the queue.
        """
        loop = self._loop
        if self._closing:
            self._on_reject("draining")
            raise BatcherClosed("batcher is closed; not accepting new requests", rejected=True)
        if loop is None:
            raise RuntimeError("call `await DynamicBatcher.start()` before submit()")
        if cost < 1:
            raise ValueError(f"cost must be a positive number of samples, got {cost}")
        levels = self.policy.priority_levels
        if levels is not None and not 0 <= priority < levels:
            raise ValueError(f"priority must lie in 0..{levels - 1}, got {priority}")
        now = time.monotonic()
        if deadline is not None:
            if deadline <= now:
                self._on_reject("deadline")
                raise DeadlineExceeded("deadline already passed at submit", rejected=True)
            if self.policy.adaptive:
                alone = self.latency_model.predict(1, cost)
                if alone is not None and deadline - now < self.policy.deadline_slack * alone:
                    self._on_reject("deadline")
                    raise DeadlineExceeded(
                        f"cannot finish in time: {deadline - now:.3f} s left, "
                        f"a run takes about {alone:.3f} s",
                        rejected=True,
                    )
        queue = self._queue
        refusal = queue.refusal(cost)
        if refusal is not None:
            self._on_reject("queue_full")
            if refusal == "requests":
                raise QueueFull(
                    refusal, f"queue full: {len(queue)} requests queued (max {queue.max_requests})"
                )
            raise QueueFull(
                refusal, f"queue full: {queue.cost} + {cost} samples exceeds max_queue_cost {queue.max_cost}"
            )
        fut: asyncio.Future[R] = loop.create_future()
        due = now + self.policy.max_queue_delay_s
        if deadline is not None and deadline < due:
            due = deadline
        req: QueuedRequest[P, R] = QueuedRequest(
            payload, cost, priority, now, deadline, due, next(self._seq), fut
        )
        queue.push(req)
        if deadline is not None:
            # Expire exactly at the deadline even while every runner is busy and nobody is deciding.
            req.expiry_handle = loop.call_at(loop.time() + (deadline - now), self._expire, req)
        self._on_queue(len(queue), queue.cost)
        self._wake_all()
        try:
            return await fut
        except asyncio.CancelledError:
            if queue.remove(req):
                self._cancel_timer(req)
                self._on_cancel(1)
                self._on_queue(len(queue), queue.cost)
            raise

    # -- internals (event loop only) ------------------------------------------------------------------

    def _wake_all(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                _wake(w)

    @staticmethod
    def _cancel_timer(req: QueuedRequest[P, R]) -> None:
        if req.expiry_handle is not None:
            req.expiry_handle.cancel()
            req.expiry_handle = None

    def _fail(self, req: QueuedRequest[P, R], exc: BaseException) -> None:
        self._cancel_timer(req)
        fut = req.future
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _expire(self, req: QueuedRequest[P, R]) -> None:
        req.expiry_handle = None
        if self._queue.remove(req):
            self._fail(req, DeadlineExceeded("deadline passed while queued"))
            self._on_expire(1)
            self._on_queue(len(self._queue), self._queue.cost)
            self._wake_all()  # the anchor may have changed

    async def _next_batch(self) -> list[QueuedRequest[P, R]] | None:
        """Wait until the policy dispatches a batch; None when closing and nothing is left."""
        assert self._loop is not None
        queue = self._queue
        while True:
            model = self.latency_model if self.policy.adaptive else None
            decision = self._decide(queue, time.monotonic(), self.policy, model, flush=self._flush)
            if decision.doomed:
                for req in decision.doomed:
                    queue.remove(req)
                    self._fail(req, DeadlineExceeded("cannot finish before its deadline"))
                self._on_expire(len(decision.doomed))
                self._on_queue(len(queue), queue.cost)
            if isinstance(decision, Dispatch):
                batch = list(decision.batch)
                for req in batch:
                    queue.remove(req)
                    self._cancel_timer(req)
                self._on_queue(len(queue), queue.cost)
                return batch
            if decision.doomed:
                continue
            if self._closing and not queue:
                return None
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(waiter)
            timer = None
            if math.isfinite(decision.seconds):
                timer = self._loop.call_later(decision.seconds, _wake, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()

    async def _worker(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            await self._execute(batch, dispatched_s=time.monotonic())

    async def _execute(self, batch: list[QueuedRequest[P, R]], dispatched_s: float) -> None:
        assert self._loop is not None
        self._running.update(batch)
        try:
            done: asyncio.Future[tuple[Exception | None, float]] = self._loop.create_future()

            def deliver(results: Sequence[R] | None, error: BaseException | None, run_s: float) -> None:
                # On the loop, in the runner thread's one callback: the callers' futures are set here,
                # without waiting for this task to resume.
                if done.done():  # this task was cancelled (the batcher closed): the results are dropped
                    return
                if error is None and results is not None and len(results) != len(batch):
                    error = RuntimeError(
                        f"run_batch returned {len(results)} results for {len(batch)} payloads")
                if error is not None:
                    if isinstance(error, Exception):
                        done.set_result((error, run_s))
                    else:
                        done.set_exception(error)
                    return
                assert results is not None
                self._deliver(batch, results, run_s, dispatched_s)
                done.set_result((None, run_s))

            self._jobs.put(([r.payload for r in batch], deliver))
            error, _ = await done
            if error is not None:
                await self._handle_failure(batch, error, dispatched_s)
        finally:
            self._running.difference_update(batch)

    def _deliver(self, batch: list[QueuedRequest[P, R]], results: Sequence[R], run_s: float,
                 dispatched_s: float) -> None:
        costs = [r.cost for r in batch]
        longest = max(costs)
        self.latency_model.observe(len(batch), longest, run_s)
        for req, result in zip(batch, results, strict=True):
            fut = req.future
            if fut is not None and not fut.done():
                fut.set_result(result)
        self._on_batch(
            len(batch),
            len(batch) * longest,
            sum(costs),
            run_s,
            [dispatched_s - r.enqueued_s for r in batch],
        )

    async def _handle_failure(
        self, batch: list[QueuedRequest[P, R]], exc: Exception, dispatched_s: float
    ) -> None:
        retry = len(batch) > 1 and self._split_on_error is not None and self._split_on_error(exc)
        if self._out_of_memory is not None and self._out_of_memory(exc):
            # The latency model remembers the shape, so the policy does not form it again.
            self.latency_model.observe_out_of_memory(len(batch), max(r.cost for r in batch))
        self._on_batch_error(len(batch), exc, retry)
        if not retry:
            for req in batch:
                self._fail(req, exc)
            return
        # Callers that went away or ran out of time meanwhile are not retried.
        now = time.monotonic()
        alive: list[QueuedRequest[P, R]] = []
        expired = 0
        for req in batch:
            if req.future is not None and req.future.done():
                continue
            if req.deadline_s is not None and req.deadline_s <= now:
                self._fail(req, DeadlineExceeded("deadline passed while its batch was retried"))
                expired += 1
                continue
            alive.append(req)
        if expired:
            self._on_expire(expired)
        mid = (len(alive) + 1) // 2
        for half in (alive[:mid], alive[mid:]):
            if half:
                await self._execute(half, dispatched_s)
