"""Baseline batching decisions, for comparison with the length-aware ``decide``.

Both have the signature of :func:`batching.policy.decide` (``DecideFn``) and plug into
``DynamicBatcher(..., decide=...)``, the server's ``--batch-policy`` and ``batching.simulation.simulate``.
They ignore the latency model and request priorities: they are what other servers do, not what this one
recommends.
"""

from __future__ import annotations

import math
from typing import Any

from .latency import LatencyModel
from .policy import BatchPolicy, Dispatch, Wait
from .queue import RequestQueue
from .request import QueuedRequest

__all__ = ["decide_equal_shape", "decide_fifo"]


def _head_first(queue: RequestQueue) -> list[QueuedRequest[Any, Any]]:
    return sorted(queue, key=lambda r: r.seq)


def _dispatch_when_due(
    batch: list[QueuedRequest[Any, Any]],
    head: QueuedRequest[Any, Any],
    now: float,
    policy: BatchPolicy,
    reason: str,
    *,
    ready: bool,
) -> Dispatch | Wait:
    """Dispatch ``batch`` when ``ready``, full, or the head has waited ``max_queue_delay_s``; else wait."""
    due = head.enqueued_s + policy.max_queue_delay_s
    if ready or len(batch) >= policy.max_batch_size or now >= due:
        return Dispatch(tuple(batch), reason)
    return Wait(due - now)


def decide_fifo(
    queue: RequestQueue,
    now: float,
    policy: BatchPolicy,
    model: LatencyModel | None = None,
    *,
    flush: bool = False,
) -> Dispatch | Wait:
    """Baseline: first-in-first-out, pad to the longest (Ray Serve, text-embeddings-inference style).

    Takes requests from the head in arrival order while size and padded-cost limits hold; dispatches when
    full, when the head has waited ``max_queue_delay_s`` or when ``flush`` (draining).
    """
    pending = _head_first(queue)
    if not pending:
        return Wait(math.inf)
    batch: list[QueuedRequest[Any, Any]] = []
    longest = 0
    full = False
    for r in pending:
        new_longest = max(longest, r.cost)
        if len(batch) >= policy.max_batch_size or (
            batch and (len(batch) + 1) * new_longest > policy.max_batch_cost
        ):
            full = True
            break
        batch.append(r)
        longest = new_longest
    return _dispatch_when_due(batch, pending[0], now, policy, "fifo", ready=full or flush)


def decide_equal_shape(
    queue: RequestQueue,
    now: float,
    policy: BatchPolicy,
    model: LatencyModel | None = None,
    *,
    flush: bool = False,
) -> Dispatch | Wait:
    """Baseline: batch only requests of identical shape (Triton's dynamic batcher without ragged batching).

    The head request is batched with later requests of exactly its length; dispatch when full, due or
    ``flush``.
    """
    pending = _head_first(queue)
    if not pending:
        return Wait(math.inf)
    head = pending[0]
    batch = [r for r in pending if r.cost == head.cost][: policy.max_batch_size]
    return _dispatch_when_due(batch, head, now, policy, "equal_shape", ready=flush)
