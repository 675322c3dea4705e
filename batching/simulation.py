"""Discrete-event simulation of the batcher's policy with a virtual clock (no asyncio, no sleeping).

It drives the same ``RequestQueue``, ``decide`` and ``LatencyModel`` as :class:`DynamicBatcher`, with a
runner whose run time is a function of (items, longest). Used by the property and workload tests and by
``benchmarks/simulate_batching.py`` to compare policies on identical request streams. A different
decision function (e.g. ``batching.baselines.decide_fifo``) can be plugged in for comparison;
``decide_fifo`` and ``decide_equal_shape`` are re-exported here for older imports.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .baselines import decide_equal_shape, decide_fifo
from .latency import LatencyModel
from .policy import BatchPolicy, DecideFn, Wait, decide
from .queue import RequestQueue
from .request import QueuedRequest

__all__ = ["SimBatch", "SimReport", "SimRequest", "decide_equal_shape", "decide_fifo", "simulate"]

@dataclass(frozen=True, slots=True)
class SimRequest:
    """One simulated request: arrival time (s), cost (samples), optional absolute deadline and cancel time."""

    arrival_s: float
    cost: int
    deadline_s: float | None = None
    priority: int = 0
    cancel_s: float | None = None


@dataclass(frozen=True, slots=True)
class SimBatch:
    """One simulated run: request indices (anchor first), start/end times, runner instance."""

    ids: tuple[int, ...]
    costs: tuple[int, ...]
    start_s: float
    end_s: float
    instance: int

    @property
    def padded_cost(self) -> int:
        return len(self.costs) * max(self.costs)

    @property
    def useful_cost(self) -> int:
        return sum(self.costs)


@dataclass(slots=True)
class SimReport:
    """Outcome per request (``ok``, ``rejected``, ``expired``, ``cancelled``) and the batches run."""

    outcome: list[str]
    dispatch_s: list[float | None]
    finish_s: list[float | None]
    batches: list[SimBatch] = field(default_factory=list)
    #: For each batch, the queued requests left behind at dispatch (indices), for ordering checks.
    left_behind: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def padding_waste(self) -> float:
        padded = sum(b.padded_cost for b in self.batches)
        return 1.0 - sum(b.useful_cost for b in self.batches) / padded if padded else 0.0

    @property
    def makespan_s(self) -> float:
        return max((b.end_s for b in self.batches), default=0.0)

    @property
    def mean_batch_size(self) -> float:
        return sum(len(b.ids) for b in self.batches) / len(self.batches) if self.batches else 0.0


def simulate(
    requests: Sequence[SimRequest],
    policy: BatchPolicy,
    run_time_s: Callable[[int, int], float],
    *,
    instances: int = 1,
    model: LatencyModel | None = None,
    decide_fn: DecideFn | None = None,
    record_left_behind: bool = False,
) -> SimReport:
    """Run ``requests`` through the policy on ``instances`` simulated runners; see :class:`SimReport`.

    ``model``: the latency model to fit and use when ``policy.adaptive`` (a fresh one if None).
    """
    if model is None:
        model = LatencyModel()
    decide_with = decide_fn if decide_fn is not None else decide
    n = len(requests)
    report = SimReport(["pending"] * n, [None] * n, [None] * n)
    queue = RequestQueue(policy.max_queue_requests, policy.max_queue_cost)
    by_seq: dict[int, QueuedRequest[int, None]] = {}
    # events: (time, order, kind, payload); order keeps simultaneous events deterministic:
    # completions free runners before arrivals at the same instant are decided on.
    events: list[tuple[float, int, int, str, Any]] = []
    counter = 0

    def push(t: float, order: int, kind: str, data: Any) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(events, (t, order, counter, kind, data))

    for i, r in enumerate(requests):
        push(r.arrival_s, 1, "arrive", i)
    free = list(range(instances))
    wake_s = math.inf
    while events or (free and len(queue) and math.isfinite(wake_s)):
        if events and events[0][0] <= wake_s:
            now, _, _, kind, data = heapq.heappop(events)
        else:
            now, kind, data = wake_s, "wake", None
        wake_s = math.inf
        if kind == "arrive":
            i = data
            r = requests[i]
            alone = model.predict(1, r.cost) if policy.adaptive else None
            if (
                queue.refusal(r.cost) is not None
                or (r.deadline_s is not None and r.deadline_s <= now)
                or (
                    r.deadline_s is not None
                    and alone is not None
                    and r.deadline_s - now < policy.deadline_slack * alone
                )
            ):
                report.outcome[i] = "rejected"
            else:
                due = now + policy.max_queue_delay_s
                if r.deadline_s is not None:
                    due = min(due, r.deadline_s)
                req: QueuedRequest[int, None] = QueuedRequest(
                    i, r.cost, r.priority, now, r.deadline_s, due, i
                )
                by_seq[i] = req
                queue.push(req)
                if r.deadline_s is not None:
                    push(r.deadline_s, 2, "expire", i)
                if r.cancel_s is not None:
                    push(max(r.cancel_s, now), 2, "cancel", i)
        elif kind in ("expire", "cancel"):
            if queue.remove(by_seq[data]):
                report.outcome[data] = "expired" if kind == "expire" else "cancelled"
        elif kind == "done":
            instance, batch = data
            free.append(instance)
            model.observe(len(batch.ids), max(batch.costs), batch.end_s - batch.start_s)
            for i in batch.ids:
                if report.outcome[i] == "running":
                    report.outcome[i] = "ok"
                    report.finish_s[i] = now
        # Let every free runner ask for work.
        while free:
            decision = decide_with(queue, now, policy, model if policy.adaptive else None)
            for req in decision.doomed:
                queue.remove(req)
                report.outcome[req.payload] = "expired"
            if isinstance(decision, Wait):
                if decision.doomed:
                    continue
                wake_s = now + decision.seconds
                break
            ids = tuple(q.payload for q in decision.batch)
            for q in decision.batch:
                queue.remove(q)
                report.outcome[q.payload] = "running"
                report.dispatch_s[q.payload] = now
            costs = tuple(q.cost for q in decision.batch)
            instance = free.pop(0)
            run_s = run_time_s(len(ids), max(costs))
            batch = SimBatch(ids, costs, now, now + run_s, instance)
            report.batches.append(batch)
            if record_left_behind:
                report.left_behind.append(tuple(q.payload for q in queue))
            push(now + run_s, 0, "done", (instance, batch))
    return report
