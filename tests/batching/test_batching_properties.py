"""Hypothesis properties over random arrival streams, lengths, deadlines, priorities and cancellations.

Most properties run on the discrete-event simulation (virtual clock, the real queue/policy/latency model);
one runs the asyncio DynamicBatcher itself with a gated runner.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emotion2vec_serving.batching import BatchPolicy, DeadlineExceeded, DynamicBatcher
from emotion2vec_serving.batching.simulation import SimRequest, simulate

SR = 16000
MAX_DELAY = 0.010

requests_st = st.lists(
    st.tuples(
        st.floats(0.0, 0.05),  # gap to previous arrival (s)
        st.integers(SR // 2, 30 * SR),  # cost
        st.one_of(st.none(), st.floats(0.0, 2.0)),  # deadline after arrival
        st.integers(0, 2),  # priority
        st.one_of(st.none(), st.floats(0.0, 0.5)),  # cancel after arrival
    ),
    min_size=1,
    max_size=60,
)

profiles = st.sampled_from(
    [
        lambda n, L: 0.02 + 0.002 * n * L / SR,  # GPU-like: batching pays
        lambda n, L: 0.002 + 0.01 * n * L / SR * (1 + 0.05 * (n - 1)),  # CPU-like: it does not
    ]
)


def build(raw: list[tuple[float, int, float | None, int, float | None]]) -> list[SimRequest]:
    t = 0.0
    out = []
    for gap, cost, dl, prio, cancel in raw:
        t += gap
        out.append(
            SimRequest(t, cost, None if dl is None else t + dl, prio, None if cancel is None else t + cancel)
        )
    return out


@settings(max_examples=150, deadline=None)
@given(
    raw=requests_st,
    max_batch_size=st.integers(1, 8),
    budget_s=st.integers(30, 240),
    adaptive=st.booleans(),
    instances=st.integers(1, 2),
    profile=profiles,
    queue_requests=st.integers(1, 64),
)
def test_simulated_streams_keep_every_invariant(
    raw: Any,
    max_batch_size: int,
    budget_s: int,
    adaptive: bool,
    instances: int,
    profile: Any,
    queue_requests: int,
) -> None:
    policy = BatchPolicy(
        max_batch_size=max_batch_size,
        max_batch_cost=budget_s * SR,
        max_queue_delay_s=MAX_DELAY,
        max_queue_requests=queue_requests,
        adaptive=adaptive,
    )
    reqs = build(raw)
    rep = simulate(reqs, policy, profile, instances=instances, record_left_behind=True)
    # Every request ends exactly once in a terminal state.
    assert set(rep.outcome) <= {"ok", "rejected", "expired", "cancelled"}
    ran = [i for b in rep.batches for i in b.ids]
    assert len(ran) == len(set(ran))  # nothing runs twice
    assert {i for i, o in enumerate(rep.outcome) if o == "ok"} == set(ran)
    for b in rep.batches:
        assert len(b.ids) <= max_batch_size
        if len(b.ids) > 1:
            assert b.padded_cost <= policy.max_batch_cost
        for i in b.ids:
            r = reqs[i]
            assert r.deadline_s is None or b.start_s < r.deadline_s  # expired never run
            assert r.cancel_s is None or b.start_s <= r.cancel_s  # cancelled while queued never run
    # Priority and fairness: each batch holds the most urgent request queued at that moment.
    for b, behind in zip(rep.batches, rep.left_behind, strict=True):

        def key(i: int) -> tuple[int, float, int]:
            r = reqs[i]
            arrival = r.arrival_s
            due = arrival + MAX_DELAY if r.deadline_s is None else min(arrival + MAX_DELAY, r.deadline_s)
            return (-r.priority, due, i)

        anchor = min(b.ids, key=key)
        assert all(key(anchor) <= key(j) for j in behind)


@settings(max_examples=100, deadline=None)
@given(
    costs=st.lists(st.integers(SR // 2, 30 * SR), min_size=1, max_size=40),
    gaps=st.lists(st.floats(0.0, 0.2), min_size=40, max_size=40),
    adaptive=st.booleans(),
    max_batch_size=st.integers(1, 8),
)
def test_no_request_waits_longer_than_max_delay_plus_one_run_while_the_runner_keeps_up(
    costs: list[int], gaps: list[float], adaptive: bool, max_batch_size: int
) -> None:
    def run_time(n: int, L: int) -> float:
        return 0.02 + 0.002 * n * L / SR

    budget = 8 * 30 * SR
    run_max = run_time(max_batch_size, 30 * SR)
    # Keeping up: arrivals at least one full batch run apart.
    t, reqs = 0.0, []
    for cost, gap in zip(costs, gaps, strict=False):
        t += run_max + gap
        reqs.append(SimRequest(t, cost))
    policy = BatchPolicy(
        max_batch_size=max_batch_size, max_batch_cost=budget, max_queue_delay_s=MAX_DELAY, adaptive=adaptive
    )
    rep = simulate(reqs, policy, run_time)
    assert rep.outcome == ["ok"] * len(reqs)
    for i, r in enumerate(reqs):
        wait = rep.dispatch_s[i] - r.arrival_s  # type: ignore[operator]
        assert wait <= MAX_DELAY + run_max + 1e-9


class RecordingRunner:
    """Records each call; the first call blocks until the gate opens (so cancellations find a queue)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.calls: list[list[tuple[int, int]]] = []
        self.gate = threading.Event()
        self.started = asyncio.Event()
        self._loop = loop

    def __call__(self, payloads: list[tuple[int, int]]) -> list[int]:
        self.calls.append(list(payloads))
        self._loop.call_soon_threadsafe(self.started.set)
        assert self.gate.wait(timeout=20)
        return [i * 10 for i, _ in payloads]


@pytest.mark.timeout(120)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(
        st.tuples(
            st.integers(SR // 2, 30 * SR),
            st.integers(0, 2),
            st.one_of(st.none(), st.floats(-0.01, 0.3)),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    ),
    max_batch_size=st.integers(1, 8),
    instances=st.integers(1, 2),
)
def test_real_batcher_resolves_each_request_once_with_its_own_result(
    items: list[tuple[int, int, float | None, bool]], max_batch_size: int, instances: int
) -> None:
    policy = BatchPolicy(
        max_batch_size=max_batch_size, max_batch_cost=60 * SR, max_queue_delay_s=0.001, max_queue_requests=64
    )

    async def scenario() -> None:
        runner = RecordingRunner(asyncio.get_running_loop())
        b: DynamicBatcher[tuple[int, int], int] = DynamicBatcher(runner, policy, instances=instances)
        await b.start()
        now = time.monotonic()
        tasks = [
            asyncio.create_task(b.submit((i, cost), cost, None if dl is None else now + dl, prio))
            for i, (cost, prio, dl, _) in enumerate(items)
        ]
        # Until a first batch is inside the (shut) runner, or every request already failed at submit.
        everything = asyncio.gather(*tasks, return_exceptions=True)
        started = asyncio.create_task(runner.started.wait())
        await asyncio.wait({started, everything}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        cancelled: set[int] = set()
        if instances == 1:  # the only runner is held by the gate: nothing else can leave the queue now
            in_flight = {i for call in runner.calls for i, _ in call}
            for i, it in enumerate(items):
                if it[3] and i not in in_flight and not tasks[i].done():
                    tasks[i].cancel()
                    cancelled.add(i)
        runner.gate.set()
        results = await everything
        await b.close()
        ran = [i for call in runner.calls for i, _ in call]
        assert len(ran) == len(set(ran))  # nothing ran twice
        for call in runner.calls:
            assert len(call) <= max_batch_size
            if len(call) > 1:
                assert len(call) * max(c for _, c in call) <= policy.max_batch_cost
        for i, res in enumerate(results):
            if i in cancelled:
                assert isinstance(res, asyncio.CancelledError) and i not in ran
            elif isinstance(res, DeadlineExceeded):
                assert i not in ran
            else:
                assert res == i * 10 and i in ran  # exactly its own result

    asyncio.run(scenario())
