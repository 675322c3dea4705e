"""Batch policy settings and the pure dispatch decision.

``decide(queue, now, policy, model)`` looks at the pending requests and answers either
``Dispatch(batch)`` — send these requests to a free runner now — or ``Wait(seconds)`` — nothing is worth
sending yet; ask again after that long or when something arrives. It reads the queue and the latency model
but changes neither, uses no clock and no asyncio, so it is tested with a fake clock and no sleeps
(as in Triton, the decision is separate from whatever does the waiting).

Batch formation (length-aware, from the whole queue, not only its head):
1. The anchor is the most urgent request: highest priority, then earliest ``due_s`` (the earlier of its
   deadline and its arrival + ``max_queue_delay_s``), then earliest arrival. It is always in the batch, so
   every dispatch serves the most urgent request: nothing starves within a priority level.
2. Requests are added best-fit first: walking outwards from the anchor's length in the per-level sorted
   lists, take whichever neighbour (shorter or longer) adds the least padding. The anchor's level is used
   first, then lower levels. A side stops at the first neighbour that would break a limit — further
   neighbours would break it more: ``max_batch_size``, ``max_batch_cost`` (items x longest), the padding
   waste cap, and, once the latency model shows batching pays, the marginal rule "running it in this batch
   costs less than running it on its own".

When to dispatch:
- ``adaptive`` and the model is not ready yet (conservative start): dispatch what is queued at once, never
  leaving a runner idle while work waits. Under load this forms batches of several sizes: the model learns.
- ``adaptive`` and the model says batching does not pay at this length (a CPU, typically): the anchor alone,
  at once — never slower than one at a time. Every ``explore_every`` runs one two-item batch is still tried
  when requests wait, to notice if that changes.
- batching pays (or ``adaptive=False``, the classic Triton rule): dispatch when the batch reaches the best
  size (the model's throughput-optimal size, else ``max_batch_size`` / the largest preferred size) or is
  bound by the cost budget, when any queued request is due (waited ``max_queue_delay_s``), or when waiting
  longer would make a member miss its deadline; otherwise wait.
Requests whose deadline has passed, or that the model says cannot finish in time even alone, come back as
``doomed``: the batcher fails them with DeadlineExceeded instead of wasting compute on them.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Protocol

from .latency import LatencyModel
from .queue import RequestQueue
from .request import QueuedRequest

__all__ = ["BatchPolicy", "DecideFn", "Dispatch", "Wait", "decide", "padded_cost"]

Request = QueuedRequest[Any, Any]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How batches are formed and when they are sent. Costs are in samples (16 kHz audio).

    - ``max_batch_size``: most requests in one batch.
    - ``preferred_batch_sizes``: sizes to form when possible (e.g. sizes a GPU profile was optimised for);
      the largest is dispatched as soon as it forms, and a batch sent for another reason is cut to the
      largest preferred size it exceeds (the rest goes in the next batch).
    - ``max_batch_cost``: padded cost budget, items x longest item. A single request above it runs alone.
    - ``max_queue_delay_s``: longest a request waits for others to join before it is sent anyway.
    - ``max_queue_requests``, ``max_queue_cost``: queue bounds; beyond either, ``submit`` raises QueueFull.
    - ``priority_levels``: None allows any int priority; N allows 0..N-1. Higher runs first.
    - ``adaptive``: fit a latency model per runner and use it (whether batching pays, best size, early
      deadline failures). False: the classic rule (wait up to ``max_queue_delay_s`` for a full batch).
    - ``max_padding_waste``: a request joins a batch only if the batch's waste 1 - useful/padded stays at
      or below this fraction.
    - ``deadline_slack``: a request fails early when its remaining time is below this fraction of the
      predicted time to run it alone (below 1: only when clearly hopeless, predictions are estimates).
    """

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_batch_cost: int = 16000 * 60
    max_queue_delay_s: float = 0.010
    max_queue_requests: int = 256
    max_queue_cost: int = 16000 * 600
    priority_levels: int | None = None
    adaptive: bool = True
    max_padding_waste: float = 0.10
    deadline_slack: float = 0.9

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [p for p in self.preferred_batch_sizes if not 1 <= p <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes must lie in 1..max_batch_size, got {bad}")
        if self.max_batch_cost < 1 or self.max_queue_requests < 1 or self.max_queue_cost < 1:
            raise ValueError("max_batch_cost, max_queue_requests and max_queue_cost must be >= 1")
        if not (self.max_queue_delay_s >= 0 and math.isfinite(self.max_queue_delay_s)):
            raise ValueError(f"max_queue_delay_s must be finite and >= 0, got {self.max_queue_delay_s}")
        if self.priority_levels is not None and self.priority_levels < 1:
            raise ValueError(f"priority_levels must be None or >= 1, got {self.priority_levels}")
        if not 0.0 <= self.max_padding_waste <= 1.0:
            raise ValueError(f"max_padding_waste must lie in [0, 1], got {self.max_padding_waste}")
        if self.deadline_slack <= 0:
            raise ValueError(f"deadline_slack must be > 0, got {self.deadline_slack}")
        # Normalise so that equality and hashing do not depend on the order given.
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes))))


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send ``batch`` (anchor first) to a free runner now. ``doomed`` must fail with DeadlineExceeded."""

    batch: tuple[Request, ...]
    reason: str
    doomed: tuple[Request, ...] = ()


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to send yet: decide again after ``seconds`` (``inf``: only when something arrives)."""

    seconds: float
    doomed: tuple[Request, ...] = ()


def padded_cost(costs: list[int] | tuple[int, ...]) -> int:
    """Cost of running these items padded to the longest: items x longest."""
    return len(costs) * max(costs) if costs else 0


def _is_doomed(req: Request, now: float, policy: BatchPolicy, model: LatencyModel | None) -> bool:
    if req.deadline_s is None:
        return False
    if req.deadline_s <= now:
        return True
    if model is None:
        return False
    alone = model.predict(1, req.cost)
    return alone is not None and req.deadline_s - now < policy.deadline_slack * alone


def _form(
    queue: RequestQueue,
    anchor: Request,
    now: float,
    policy: BatchPolicy,
    model: LatencyModel | None,
    limit: int,
    marginal: bool,
) -> tuple[list[Request], list[Request]]:
    """Best-fit batch around ``anchor`` of at most ``limit`` items; returns (batch, doomed seen)."""
    batch = [anchor]
    doomed: list[Request] = []
    n, total, longest = 1, anchor.cost, anchor.cost
    budget, cap = policy.max_batch_cost, policy.max_padding_waste
    for level in queue.levels_desc():
        if n >= limit or (n + 1) * longest > budget:
            break
        entries = queue.level(level)
        if level == anchor.priority:
            i = bisect.bisect_left(entries, (anchor.cost, anchor.seq))
            lo, hi = i - 1, i + 1
        else:
            hi = bisect.bisect_right(entries, (longest, math.inf))
            lo = hi - 1
        lo_open, hi_open = lo >= 0, hi < len(entries)
        while n < limit and (lo_open or hi_open):
            if lo_open and _is_doomed(entries[lo][2], now, policy, model):
                doomed.append(entries[lo][2])
                lo -= 1
                lo_open = lo >= 0
                continue
            if hi_open and _is_doomed(entries[hi][2], now, policy, model):
                doomed.append(entries[hi][2])
                hi += 1
                hi_open = hi < len(entries)
                continue
            # Padding each neighbour would add: a shorter one pads itself up to `longest`; a longer one
            # pads every item already in the batch up to its length.
            inc_lo = longest - entries[lo][0] if lo_open else math.inf
            inc_hi = n * (entries[hi][0] - longest) if hi_open else math.inf
            take_lo = inc_lo <= inc_hi
            cand = entries[lo][2] if take_lo else entries[hi][2]
            new_longest = max(longest, cand.cost)
            ok = (n + 1) * new_longest <= budget and 1.0 - (total + cand.cost) / (
                (n + 1) * new_longest
            ) <= cap
            if ok and model is not None:
                ok = model.fits(n + 1, new_longest)  # a batch this large already ran out of memory
            if ok and marginal and model is not None:
                together = model.predict(n + 1, new_longest)
                apart_a, apart_b = model.predict(n, longest), model.predict(1, cand.cost)
                ok = together is not None and apart_a is not None and apart_b is not None
                ok = ok and together <= apart_a + apart_b  # type: ignore[operator]
            if not ok:
                # Neighbours further out on this side would add more padding: close the side.
                if take_lo:
                    lo_open = False
                else:
                    hi_open = False
                continue
            batch.append(cand)
            n, total, longest = n + 1, total + cand.cost, new_longest
            if take_lo:
                lo -= 1
                lo_open = lo >= 0
            else:
                hi += 1
                hi_open = hi < len(entries)
    return batch, doomed


def _trim_to_preferred(batch: list[Request], policy: BatchPolicy) -> list[Request]:
    sizes = policy.preferred_batch_sizes
    n = len(batch)
    if not sizes or n in sizes or n >= policy.max_batch_size:
        return batch
    smaller = [p for p in sizes if p < n]
    return batch[: smaller[-1]] if smaller else batch


def decide(
    queue: RequestQueue,
    now: float,
    policy: BatchPolicy,
    model: LatencyModel | None = None,
    *,
    flush: bool = False,
) -> Dispatch | Wait:
    """Decide what a free runner should do now. Pure: reads ``queue`` and ``model``, changes neither.

    ``model`` None means non-adaptive (the classic rule, no early deadline failures). ``flush`` (draining)
    dispatches whatever is best right away instead of waiting for more requests.
    """
    anchor = queue.most_urgent()
    if anchor is None:
        return Wait(math.inf)
    if _is_doomed(anchor, now, policy, model):
        # Decide again at once: the batcher fails the anchor, the next most urgent becomes the anchor.
        return Wait(0.0, doomed=(anchor,))

    max_items = policy.max_batch_size
    if anchor.cost <= policy.max_batch_cost:
        max_items = min(max_items, max(1, policy.max_batch_cost // anchor.cost))
    if model is not None:
        max_items = model.max_items(anchor.cost, max_items)  # learnt from out-of-memory failures
    ready = model is not None and model.ready
    if model is not None and not ready:
        # Conservative start: work-conserving, take what is queued now; this is also the exploration.
        batch, doomed = _form(queue, anchor, now, policy, model, policy.max_batch_size, marginal=False)
        return Dispatch(tuple(_trim_to_preferred(batch, policy)), "explore", tuple(doomed))
    if model is not None:
        target = model.best_batch_size(anchor.cost, max_items)
        if target == 1:
            if model.explore_due and len(queue) > 1:
                # Two items suffice to measure what batching costs; more cost more where it does not pay.
                batch, doomed = _form(queue, anchor, now, policy, model, min(2, max_items), marginal=False)
                return Dispatch(tuple(batch), "explore", tuple(doomed))
            return Dispatch((anchor,), "batching_does_not_pay")
    else:
        target = policy.preferred_batch_sizes[-1] if policy.preferred_batch_sizes else max_items

    batch, doomed = _form(queue, anchor, now, policy, model, target, marginal=ready)
    longest = max(r.cost for r in batch)
    if len(batch) >= target or (len(batch) + 1) * longest > policy.max_batch_cost:
        return Dispatch(tuple(batch), "full", tuple(doomed))
    if flush:
        return Dispatch(tuple(_trim_to_preferred(batch, policy)), "flush", tuple(doomed))
    dispatch_by = queue.earliest_due_s()
    reason = "delay"
    if model is not None:
        run_s = model.predict(len(batch), longest)
        for r in batch:
            if r.deadline_s is not None and run_s is not None and r.deadline_s - run_s < dispatch_by:
                dispatch_by, reason = r.deadline_s - run_s, "deadline"
    if now >= dispatch_by:
        return Dispatch(tuple(_trim_to_preferred(batch, policy)), reason, tuple(doomed))
    return Wait(dispatch_by - now, tuple(doomed))


class DecideFn(Protocol):
    """A batching decision: ``decide`` here, or a baseline of ``batching.baselines``.

    Pure: reads the queue and the model, changes neither. ``model`` is None when the policy is not adaptive;
    ``flush`` (draining) asks for whatever is best right away.
    """

    def __call__(
        self,
        queue: RequestQueue,
        now: float,
        policy: BatchPolicy,
        model: LatencyModel | None = None,
        *,
        flush: bool = False,
    ) -> Dispatch | Wait: ...

