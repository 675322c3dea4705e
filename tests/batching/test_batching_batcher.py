"""DynamicBatcher on a real event loop with a fake runner gated by events (no wall-clock sleeps)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from emotion2vec_serving.batching import (
    BatcherClosed,
    BatchPolicy,
    DeadlineExceeded,
    DynamicBatcher,
    LatencyModel,
    QueueFull,
)
from tests.support.polling import wait_until_async

SR = 16000
pytestmark = pytest.mark.timeout(30)


class GatedRunner:
    """Blocking runner: records each call, blocks until the gate opens, returns payload results."""

    def __init__(self, fn: Callable[[Any], Any] = lambda p: ("result", p), open_: bool = False) -> None:
        self.calls: list[list[Any]] = []
        self.gate = threading.Event()
        if open_:
            self.gate.set()
        self.started = threading.Semaphore(0)
        self.fn = fn

    def __call__(self, payloads: list[Any]) -> list[Any]:
        self.calls.append(list(payloads))
        self.started.release()
        assert self.gate.wait(timeout=20), "test never opened the gate"
        return [self.fn(p) for p in payloads]

    async def wait_started(self, n: int = 1) -> None:
        for _ in range(n):
            assert await asyncio.to_thread(self.started.acquire, True, 10), "runner was never called"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_batch(self, size: int, padded: int, useful: int, run_s: float, waits: list[float]) -> None:
        self.events.append(("batch", size, padded, useful))

    def on_reject(self, reason: str) -> None:
        self.events.append(("reject", reason))

    def on_expire(self, n: int) -> None:
        self.events.append(("expire", n))

    def on_cancel(self, n: int) -> None:
        self.events.append(("cancel", n))

    def on_batch_error(self, size: int, exc: BaseException, will_retry: bool) -> None:
        self.events.append(("error", size, will_retry))


async def settle() -> None:
    """Let the event loop run pending callbacks (yields, no wall-clock wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


def policy(**kw: Any) -> BatchPolicy:
    base: dict[str, Any] = {"max_batch_size": 8, "max_batch_cost": SR * 400, "max_queue_delay_s": 0.0}
    base.update(kw)
    return BatchPolicy(**base)


async def test_every_caller_gets_its_own_result() -> None:
    runner = GatedRunner(open_=True)
    b: DynamicBatcher[int, Any] = DynamicBatcher(runner, policy())
    await b.start()
    results = await asyncio.gather(*(b.submit(i, cost=SR * (1 + i % 7)) for i in range(40)))
    assert results == [("result", i) for i in range(40)]
    assert sorted(p for call in runner.calls for p in call) == list(range(40))
    await b.close()


async def test_next_batch_forms_while_current_one_runs() -> None:
    runner = GatedRunner()
    rec = Recorder()
    b: DynamicBatcher[str, Any] = DynamicBatcher(runner, policy(), observer=rec)
    await b.start()
    first = asyncio.create_task(b.submit("a", cost=SR))
    await runner.wait_started()
    later = [asyncio.create_task(b.submit(x, cost=SR)) for x in "bcd"]
    await settle()
    assert b.queued_requests == 3 and b.queued_cost == 3 * SR
    runner.gate.set()
    assert await first == ("result", "a")
    assert [await t for t in later] == [("result", x) for x in "bcd"]
    assert runner.calls == [["a"], ["b", "c", "d"]]
    assert [e for e in rec.events if e[0] == "batch"] == [("batch", 1, SR, SR), ("batch", 3, 3 * SR, 3 * SR)]
    await b.close()


async def test_queue_full_in_requests_and_in_cost() -> None:
    runner = GatedRunner()
    rec = Recorder()
    b: DynamicBatcher[int, Any] = DynamicBatcher(
        runner, policy(max_queue_requests=2, max_queue_cost=SR * 10), observer=rec
    )
    await b.start()
    running = asyncio.create_task(b.submit(0, cost=SR))
    await runner.wait_started()
    queued = [asyncio.create_task(b.submit(i, cost=SR)) for i in (1, 2)]
    await settle()
    with pytest.raises(QueueFull) as info:
        await b.submit(3, cost=SR)
    assert info.value.reason == "requests"
    runner.gate.clear()
    b2: DynamicBatcher[int, Any] = DynamicBatcher(GatedRunner(open_=True), policy(max_queue_cost=SR * 10))
    await b2.start()
    with pytest.raises(QueueFull) as info:
        await b2.submit(9, cost=SR * 11)
    assert info.value.reason == "cost"
    runner.gate.set()
    await asyncio.gather(running, *queued)
    assert ("reject", "queue_full") in rec.events
    await b.close()
    await b2.close()


async def test_cancelled_request_leaves_the_queue_and_never_runs() -> None:
    runner = GatedRunner()
    rec = Recorder()
    b: DynamicBatcher[str, Any] = DynamicBatcher(runner, policy(), observer=rec)
    await b.start()
    first = asyncio.create_task(b.submit("a", cost=SR))
    await runner.wait_started()
    doomed = asyncio.create_task(b.submit("cancel-me", cost=SR))
    kept = asyncio.create_task(b.submit("b", cost=SR))
    await settle()
    doomed.cancel()
    await settle()
    assert b.queued_requests == 1
    runner.gate.set()
    await first
    assert await kept == ("result", "b")
    assert doomed.cancelled()
    assert all("cancel-me" not in call for call in runner.calls)
    assert ("cancel", 1) in rec.events
    await b.close()


async def test_request_expires_while_runners_are_busy_and_never_runs() -> None:
    runner = GatedRunner()
    rec = Recorder()
    b: DynamicBatcher[str, Any] = DynamicBatcher(runner, policy(), observer=rec)
    await b.start()
    first = asyncio.create_task(b.submit("a", cost=SR))
    await runner.wait_started()
    with pytest.raises(DeadlineExceeded):
        await b.submit("late", cost=SR, deadline=time.monotonic() + 0.02)
    assert ("expire", 1) in rec.events
    runner.gate.set()
    await first
    await b.close()
    assert all("late" not in call for call in runner.calls)


async def test_past_deadline_and_hopeless_deadline_fail_at_submit() -> None:
    model = LatencyModel(min_observations=4)
    for n in (1, 2, 4):
        for sec in (1, 5, 10, 20):
            model.observe(n, sec * SR, 0.31 * n * sec)  # CPU-like: 0.31 s per audio second
    b: DynamicBatcher[str, Any] = DynamicBatcher(GatedRunner(open_=True), policy(), latency_model=model)
    await b.start()
    with pytest.raises(DeadlineExceeded):
        await b.submit("past", cost=SR, deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded, match="cannot finish in time"):
        await b.submit("long", cost=20 * SR, deadline=time.monotonic() + 1.0)  # needs ~6 s
    assert await b.submit("ok", cost=SR, deadline=time.monotonic() + 10) == ("result", "ok")
    await b.close()


async def test_long_item_after_only_short_runs_is_not_refused() -> None:
    # Only short clips measured, with scheduling noise: a long item is predicted from the longest run,
    # not from the fitted curve's quadratic term, so a generous deadline is not refused (CI failure).
    model = LatencyModel(min_observations=4)
    for i in range(20):
        sec = (0.5, 1.0, 2.0, 3.0)[i % 4]  # every 3-s run delayed 0.4 s: the quadratic fit says 42 s at 30 s
        model.observe(1, int(sec * SR), 0.004 + 0.003 * sec + (0.4 if sec == 3.0 else 0.0))
    b: DynamicBatcher[str, Any] = DynamicBatcher(GatedRunner(open_=True), policy(), latency_model=model)
    await b.start()
    assert await b.submit("long", cost=30 * SR, deadline=time.monotonic() + 30.0) == ("result", "long")
    await b.close()


def poison_runner(payloads: list[str]) -> list[str]:
    if "poison" in payloads:
        raise ValueError("bad input")
    return [p.upper() for p in payloads]


@pytest.mark.parametrize("split", [True, False])
async def test_failed_batch_fails_all_or_splits_down_to_the_poison(split: bool) -> None:
    gate = GatedRunner(fn=lambda p: p)
    calls: list[list[str]] = []

    def runner(payloads: list[str]) -> list[str]:
        calls.append(list(payloads))
        if payloads[0] == "hold":
            return gate(payloads)
        return poison_runner(payloads)

    rec = Recorder()
    b: DynamicBatcher[str, str] = DynamicBatcher(
        runner,
        policy(adaptive=False),
        observer=rec,
        split_on_error=(lambda exc: isinstance(exc, ValueError)) if split else None,
    )
    await b.start()
    hold = asyncio.create_task(b.submit("hold", cost=SR))
    await gate.wait_started()
    names = ["a", "poison", "b", "c"]
    tasks = [asyncio.create_task(b.submit(x, cost=SR)) for x in names]
    await settle()
    gate.gate.set()
    await hold
    results = await asyncio.gather(*tasks, return_exceptions=True)
    if split:
        assert results[0] == "A" and results[2] == "B" and results[3] == "C"
        assert isinstance(results[1], ValueError)
        assert ["poison"] in calls
        assert ("error", 4, True) in rec.events and ("error", 1, False) in rec.events
    else:
        assert all(isinstance(r, ValueError) for r in results)
        assert ("error", 4, False) in rec.events
    await b.close()


async def test_close_drains_accepted_work_and_refuses_new() -> None:
    runner = GatedRunner()
    b: DynamicBatcher[int, Any] = DynamicBatcher(runner, policy())
    await b.start()
    tasks = [asyncio.create_task(b.submit(i, cost=SR)) for i in range(3)]
    await runner.wait_started()
    closing = asyncio.create_task(b.close(drain=True, timeout_s=10))
    await settle()
    with pytest.raises(BatcherClosed):
        await b.submit(99, cost=SR)
    runner.gate.set()
    await closing
    assert [await t for t in tasks] == [("result", i) for i in range(3)]


async def test_close_without_drain_fails_queued_and_running() -> None:
    runner = GatedRunner()
    b: DynamicBatcher[int, Any] = DynamicBatcher(runner, policy())
    await b.start()
    running = asyncio.create_task(b.submit(0, cost=SR))
    await runner.wait_started()
    queued = asyncio.create_task(b.submit(1, cost=SR))
    await settle()
    await b.close(drain=False)
    runner.gate.set()
    for t in (running, queued):
        with pytest.raises(BatcherClosed):
            await t
    assert all(1 not in call for call in runner.calls)


async def test_instances_run_batches_in_parallel() -> None:
    runner = GatedRunner()
    b: DynamicBatcher[int, Any] = DynamicBatcher(runner, policy(max_batch_size=1), instances=2)
    await b.start()
    tasks = [asyncio.create_task(b.submit(i, cost=SR)) for i in range(2)]
    await runner.wait_started(2)  # both entered run_batch while the gate is closed: two threads
    runner.gate.set()
    assert [await t for t in tasks] == [("result", 0), ("result", 1)]
    await b.close()


async def test_cpu_profile_never_batches() -> None:
    model = LatencyModel(min_observations=4, explore_every=1000)
    for n in (1, 2, 4, 8):
        for sec in (1, 5, 10, 20):
            model.observe(n, sec * SR, 0.31 * n * sec * (1 + 0.025 * (n - 1)))
    runner = GatedRunner()
    b: DynamicBatcher[int, Any] = DynamicBatcher(runner, policy(max_queue_delay_s=0.5), latency_model=model)
    await b.start()
    tasks = [asyncio.create_task(b.submit(i, cost=5 * SR)) for i in range(6)]
    await runner.wait_started()
    runner.gate.set()
    await asyncio.gather(*tasks)
    assert [len(c) for c in runner.calls] == [1] * 6
    await b.close()


async def test_misuse_is_reported_clearly() -> None:
    b: DynamicBatcher[int, Any] = DynamicBatcher(GatedRunner(open_=True), policy(priority_levels=2))
    with pytest.raises(RuntimeError, match="start"):
        await b.submit(1, cost=SR)
    await b.start()
    with pytest.raises(ValueError, match="cost"):
        await b.submit(1, cost=0)
    with pytest.raises(ValueError, match="priority"):
        await b.submit(1, cost=SR, priority=2)
    await b.close()
    with pytest.raises(BatcherClosed):
        await b.submit(1, cost=SR)


async def test_wrong_result_count_fails_the_batch() -> None:
    b: DynamicBatcher[int, Any] = DynamicBatcher(lambda ps: [], policy())
    await b.start()
    with pytest.raises(RuntimeError, match="0 results for 1"):
        await b.submit(1, cost=SR)
    await b.close()


# ---------------------------------------------------------------------------- pluggable decision


async def _queued(batcher: DynamicBatcher[Any, Any], n: int) -> None:
    """Wait until ``n`` requests are queued (submit tasks reach the queue on their first step)."""
    await wait_until_async(lambda: batcher.queued_requests >= n, timeout_s=10, interval_s=0.001,
                           message=f"{n} requests in the queue")


async def _batches_with(decide_fn: Any) -> list[list[int]]:
    """One runner busy with a first request while four more queue up; returns the payloads of each batch."""
    from emotion2vec_serving.batching import decide

    runner = GatedRunner(fn=lambda p: p)
    policy = BatchPolicy(max_batch_size=2, max_batch_cost=SR * 600, max_queue_delay_s=0.0, adaptive=False)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        runner, policy, decide=decide_fn if decide_fn is not None else decide
    )
    await batcher.start()
    first = asyncio.create_task(batcher.submit(1, cost=1))
    await runner.wait_started()
    # Arrival order alternates short and long: FIFO pairs a short one with a long one, length-aware
    # pairs the two short ones and the two long ones.
    rest = [asyncio.create_task(batcher.submit(c, cost=c)) for c in (100, 1000, 110, 1010)]
    await _queued(batcher, 4)
    runner.gate.set()
    assert await asyncio.gather(first, *rest) == [1, 100, 1000, 110, 1010]
    await batcher.close()
    return [sorted(call) for call in runner.calls[1:]]


async def test_default_decision_is_length_aware() -> None:
    assert await _batches_with(None) == [[100, 110], [1000, 1010]]


async def test_fifo_decision_plugs_in_and_pads_to_the_longest_in_arrival_order() -> None:
    from emotion2vec_serving.batching import decide_fifo

    assert await _batches_with(decide_fifo) == [[100, 1000], [110, 1010]]


async def test_equal_shape_decision_never_mixes_lengths() -> None:
    from emotion2vec_serving.batching import decide_equal_shape

    assert await _batches_with(decide_equal_shape) == [[100], [1000], [110], [1010]]


async def test_fifo_decision_flushes_at_once_when_draining() -> None:
    """``flush`` reaches a plugged-in decision: a drain does not wait out a long queue delay."""
    from emotion2vec_serving.batching import decide_fifo

    runner = GatedRunner(fn=lambda p: p, open_=True)
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=3600.0, adaptive=False)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(runner, policy, decide=decide_fifo)
    await batcher.start()
    task = asyncio.create_task(batcher.submit(7, cost=10))
    await _queued(batcher, 1)
    started = time.monotonic()
    await batcher.close(drain=True, timeout_s=10)
    assert await task == 7
    assert time.monotonic() - started < 5
