"""The batcher learns the largest batch that fits in memory per length (issue 15).

A runner with a memory budget (items x padded length) raises out-of-memory above it; after the first such
failure the latency model knows the shape and the policy never forms it again. No sleeps, no wall clock.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from emotion2vec_serving.batching import (
    BatchPolicy,
    Dispatch,
    DynamicBatcher,
    LatencyModel,
    RequestQueue,
    decide,
)
from emotion2vec_serving.batching.request import QueuedRequest

SR = 16000
pytestmark = pytest.mark.timeout(30)


class OutOfMemory(RuntimeError):
    pass


def test_a_shape_that_ran_out_of_memory_bounds_larger_shapes_only() -> None:
    model = LatencyModel()
    assert model.fits(64, 30 * SR) and model.max_items(30 * SR, 16) == 16
    model.observe_out_of_memory(8, 10 * SR)
    assert not model.fits(8, 10 * SR) and not model.fits(9, 20 * SR)
    assert model.fits(7, 10 * SR) and model.fits(16, 5 * SR)  # smaller in one dimension: unknown, allowed
    assert model.max_items(10 * SR, 16) == 7 and model.max_items(30 * SR, 16) == 7
    assert model.max_items(5 * SR, 16) == 16
    model.observe_out_of_memory(2, 30 * SR)
    assert model.max_items(30 * SR, 16) == 1 and model.max_items(12 * SR, 16) == 7
    model.observe_out_of_memory(1, 40 * SR)
    assert model.max_items(40 * SR, 16) == 1  # never below one: a lone item is still tried (and fails)


def test_a_success_at_a_larger_shape_forgets_the_failure_and_points_expire() -> None:
    model = LatencyModel(oom_memory_runs=10)
    model.observe_out_of_memory(8, 10 * SR)
    model.observe(8, 12 * SR, 0.5)  # it fitted after all (the first failure was transient)
    assert model.fits(8, 10 * SR)
    model.observe_out_of_memory(8, 10 * SR)
    for _ in range(9):
        model.observe(1, SR, 0.01)
    assert not model.fits(8, 10 * SR)
    model.observe(1, SR, 0.01)
    model.observe(1, SR, 0.01)
    assert model.fits(8, 10 * SR)  # expired: the limit is tried again


def _queue(costs: list[int]) -> RequestQueue:
    queue = RequestQueue(1000, 10**12)
    for i, cost in enumerate(costs):
        queue.push(QueuedRequest(i, cost, 0, 0.0, None, 0.0, i))
    return queue


def test_policy_forms_no_batch_known_not_to_fit() -> None:
    policy = BatchPolicy(max_batch_size=16, max_batch_cost=SR * 1000, adaptive=False)
    model = LatencyModel()
    full = decide(_queue([4 * SR] * 12), 1.0, policy, model, flush=True)
    assert isinstance(full, Dispatch) and len(full.batch) == 12
    model.observe_out_of_memory(6, 4 * SR)
    capped = decide(_queue([4 * SR] * 12), 1.0, policy, model, flush=True)
    assert isinstance(capped, Dispatch) and len(capped.batch) == 5
    # Shorter items are not limited by a failure at a longer length.
    short = decide(_queue([2 * SR] * 12), 1.0, policy, model, flush=True)
    assert isinstance(short, Dispatch) and len(short.batch) == 12


async def test_batcher_learns_from_out_of_memory_and_stops_forming_that_batch() -> None:
    budget = 4 * 3 * SR  # four 3-second items fit, five do not
    calls: list[int] = []
    gate = threading.Event()

    def runner(payloads: list[int]) -> list[int]:
        if payloads[0] == -1:
            assert gate.wait(10)
            return payloads
        calls.append(len(payloads))
        if len(payloads) * max(payloads) > budget:
            raise OutOfMemory("out of memory (test budget)")
        return payloads

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        runner, BatchPolicy(max_batch_size=16, max_batch_cost=SR * 1000, max_queue_delay_s=0.0),
        split_on_error=lambda exc: isinstance(exc, OutOfMemory),
        out_of_memory=lambda exc: isinstance(exc, OutOfMemory),
    )
    await batcher.start()

    async def burst() -> list[int]:
        hold = asyncio.create_task(batcher.submit(-1, cost=1))
        for _ in range(50):
            await asyncio.sleep(0)
            if batcher.queued_requests == 0:
                break
        tasks = [asyncio.create_task(batcher.submit(3 * SR, cost=3 * SR)) for _ in range(12)]
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        await hold
        gate.clear()
        return list(await asyncio.gather(*tasks))

    first = await burst()
    assert first == [3 * SR] * 12  # split on out-of-memory: nothing lost
    assert calls[0] == 12 and any(n > 4 for n in calls)
    calls.clear()
    second = await burst()
    assert second == [3 * SR] * 12
    # Each failure tightens the limit: 6 did not fit, so 5 is tried once (it does not fit either) ...
    assert calls[0] == 5 and sum(n > 4 for n in calls) == 1, calls
    calls.clear()
    third = await burst()
    assert third == [3 * SR] * 12
    assert calls == [4, 4, 4], calls  # ... and from then on only batches that fit are formed
    await batcher.close()


