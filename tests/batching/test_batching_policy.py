"""The dispatch decision as a pure function: fake clock, no sleeps, no asyncio."""

from __future__ import annotations

import math
from typing import Any

import pytest

from emotion2vec_serving.batching import (
    BatchPolicy,
    Dispatch,
    LatencyModel,
    QueuedRequest,
    RequestQueue,
    Wait,
    decide,
)

SR = 16000


class Q:
    """A queue plus a fake clock for building test situations."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self.queue = RequestQueue(policy.max_queue_requests, policy.max_queue_cost)
        self.seq = 0

    def add(
        self, cost: int, at: float = 0.0, priority: int = 0, deadline: float | None = None
    ) -> QueuedRequest[Any, Any]:
        due = at + self.policy.max_queue_delay_s
        if deadline is not None:
            due = min(due, deadline)
        req: QueuedRequest[Any, Any] = QueuedRequest(self.seq, cost, priority, at, deadline, due, self.seq)
        self.seq += 1
        self.queue.push(req)
        return req


def ids(decision: Dispatch | Wait) -> list[int]:
    assert isinstance(decision, Dispatch), decision
    return [r.payload for r in decision.batch]


def fitted(run_time: Any, lengths_s: tuple[float, ...] = (1, 3, 7, 12, 20, 30)) -> LatencyModel:
    model = LatencyModel(min_observations=4)
    for n in (1, 2, 4, 8):
        for sec in lengths_s:
            model.observe(n, int(sec * SR), run_time(n, sec * SR))
    return model


GPU = fitted(lambda n, L: 0.020 + 0.002 * n * L / SR)
CPU = fitted(lambda n, L: 0.005 + 0.31 * n * L / SR * (1 + 0.025 * (n - 1)))

CLASSIC = BatchPolicy(max_batch_size=4, max_batch_cost=SR * 100, max_queue_delay_s=0.010, adaptive=False)


def test_empty_queue_waits_forever() -> None:
    assert decide(Q(CLASSIC).queue, 0.0, CLASSIC) == Wait(math.inf)


def test_lone_request_waits_for_company_then_goes_after_max_queue_delay() -> None:
    q = Q(CLASSIC)
    q.add(SR * 5, at=1.0)
    d = decide(q.queue, 1.004, CLASSIC)
    assert isinstance(d, Wait) and d.seconds == pytest.approx(0.006)
    d = decide(q.queue, 1.010, CLASSIC)
    assert ids(d) == [0] and d.reason == "delay"


def test_full_batch_goes_at_once() -> None:
    q = Q(CLASSIC)
    for _ in range(4):
        q.add(SR * 5, at=0.0)
    d = decide(q.queue, 0.0, CLASSIC)
    assert sorted(ids(d)) == [0, 1, 2, 3] and d.reason == "full"


def test_groups_similar_lengths_from_the_whole_queue() -> None:
    policy = BatchPolicy(max_batch_size=3, max_batch_cost=SR * 100, adaptive=False)
    q = Q(policy)
    for sec in (10.0, 1.0, 29.0, 10.3, 2.0, 9.8, 30.0):
        q.add(int(sec * SR))
    d = decide(q.queue, 0.0, policy)
    # Anchor: the oldest (10 s); its nearest neighbours in length, not the next ones in arrival order.
    assert ids(d) == [0, 5, 3]


def test_padded_cost_budget_bounds_the_batch_and_counts_as_full() -> None:
    policy = BatchPolicy(max_batch_size=8, max_batch_cost=SR * 30, adaptive=False)
    q = Q(policy)
    for _ in range(5):
        q.add(SR * 10)
    d = decide(q.queue, 0.0, policy)
    assert len(ids(d)) == 3 and d.reason == "full"  # 3 x 10 s = 30 s budget; a 4th would exceed it


def test_oversized_request_runs_alone_at_once() -> None:
    policy = BatchPolicy(max_batch_size=8, max_batch_cost=SR * 30, adaptive=False)
    q = Q(policy)
    q.add(SR * 45)
    q.add(SR * 45)
    assert ids(decide(q.queue, 0.0, policy)) == [0]


def test_waste_cap_keeps_far_lengths_apart() -> None:
    policy = BatchPolicy(max_batch_size=8, max_batch_cost=SR * 200, adaptive=False, max_padding_waste=0.1)
    q = Q(policy)
    q.add(SR * 20)
    q.add(SR * 2)
    d = decide(q.queue, 0.010, policy)
    assert ids(d) == [0]


def test_higher_priority_is_anchor_and_lower_levels_only_fill_room() -> None:
    policy = BatchPolicy(max_batch_size=2, max_batch_cost=SR * 100, adaptive=False)
    q = Q(policy)
    q.add(SR * 5, at=0.0, priority=0)
    q.add(SR * 5, at=0.0, priority=0)
    q.add(SR * 20, at=0.005, priority=1)
    d = decide(q.queue, 0.015, policy)
    assert ids(d)[0] == 2  # the high-priority request leads even though it is newer and unlike the rest
    policy3 = BatchPolicy(max_batch_size=3, max_batch_cost=SR * 100, adaptive=False, max_padding_waste=1.0)
    q3 = Q(policy3)
    q3.add(SR * 5, priority=0)
    q3.add(SR * 8, priority=1)
    q3.add(SR * 8, priority=1)
    assert ids(decide(q3.queue, 0.0, policy3)) == [1, 2, 0]


def test_earliest_deadline_first_within_a_level() -> None:
    policy = BatchPolicy(max_batch_size=1, max_batch_cost=SR * 100, adaptive=False)
    q = Q(policy)
    q.add(SR * 5, at=0.0)  # no deadline: due at 0.010
    q.add(SR * 5, at=0.001, deadline=0.005)  # pressing deadline: due at 0.005
    assert ids(decide(q.queue, 0.001, policy)) == [1]


def test_expired_anchor_is_reported_doomed() -> None:
    q = Q(CLASSIC)
    q.add(SR, at=0.0, deadline=0.5)
    d = decide(q.queue, 0.6, CLASSIC)
    assert isinstance(d, Wait) and d.seconds == 0.0 and [r.payload for r in d.doomed] == [0]


def test_model_fails_early_what_cannot_finish_in_time() -> None:
    policy = BatchPolicy(max_batch_size=4, max_batch_cost=SR * 100)
    q = Q(policy)
    q.add(SR * 30, at=0.0, deadline=1.0)  # CPU needs ~9.3 s for 30 s of audio: hopeless
    d = decide(q.queue, 0.0, policy, CPU)
    assert isinstance(d, Wait) and [r.payload for r in d.doomed] == [0]


def test_cpu_profile_dispatches_one_at_a_time_without_waiting() -> None:
    policy = BatchPolicy(max_batch_size=8, max_batch_cost=SR * 400)
    assert CPU.batching_pays(SR * 5, 8) is False
    q = Q(policy)
    for _ in range(6):
        q.add(SR * 5)
    d = decide(q.queue, 0.0, policy, CPU)
    assert ids(d) == [0] and d.reason == "batching_does_not_pay"


def test_gpu_profile_waits_for_a_batch_and_sends_it_full() -> None:
    policy = BatchPolicy(max_batch_size=4, max_batch_cost=SR * 400)
    assert GPU.best_batch_size(SR * 5, 4) == 4
    q = Q(policy)
    q.add(SR * 5)
    assert isinstance(decide(q.queue, 0.0, policy, GPU), Wait)
    for _ in range(3):
        q.add(SR * 5)
    d = decide(q.queue, 0.0, policy, GPU)
    assert len(ids(d)) == 4 and d.reason == "full"


def test_unfitted_model_dispatches_what_is_queued_at_once() -> None:
    policy = BatchPolicy(max_batch_size=4, max_batch_cost=SR * 400)
    q = Q(policy)
    q.add(SR * 5)
    q.add(SR * 5)
    d = decide(q.queue, 0.0, policy, LatencyModel())
    assert sorted(ids(d)) == [0, 1] and d.reason == "explore"


def test_deadline_pressure_dispatches_before_the_queue_delay() -> None:
    policy = BatchPolicy(max_batch_size=4, max_batch_cost=SR * 400, max_queue_delay_s=1.0)
    q = Q(policy)
    q.add(SR * 10, at=0.0, deadline=0.1)  # GPU needs 0.04 s: must start by ~0.06
    d = decide(q.queue, 0.0, policy, GPU)
    assert isinstance(d, Wait) and d.seconds == pytest.approx(0.06, abs=1e-3)
    assert ids(decide(q.queue, 0.061, policy, GPU)) == [0]


def test_preferred_sizes_largest_goes_at_once_and_others_are_trimmed() -> None:
    policy = BatchPolicy(
        max_batch_size=8, preferred_batch_sizes=(2, 4), max_batch_cost=SR * 400, adaptive=False
    )
    q = Q(policy)
    for _ in range(4):
        q.add(SR * 5)
    assert len(ids(decide(q.queue, 0.0, policy))) == 4
    q2 = Q(policy)
    for _ in range(3):
        q2.add(SR * 5)
    assert isinstance(decide(q2.queue, 0.0, policy), Wait)
    assert len(ids(decide(q2.queue, 0.010, policy))) == 2  # sent at the delay, cut to the preferred 2


def test_flush_sends_at_once() -> None:
    q = Q(CLASSIC)
    q.add(SR)
    assert ids(decide(q.queue, 0.0, CLASSIC, flush=True)) == [0]


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(max_batch_size=0)
    with pytest.raises(ValueError):
        BatchPolicy(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError):
        BatchPolicy(max_padding_waste=1.5)
