"""A queued request: what the policy looks at (cost, priority, times) plus the caller's future."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["QueuedRequest"]

P = TypeVar("P")
R = TypeVar("R")


@dataclass(eq=False, slots=True)
class QueuedRequest(Generic[P, R]):
    """One request waiting in (or taken from) the queue.

    Times are absolute ``time.monotonic()`` seconds. ``due_s`` is the moment by which the request should be
    dispatched: the earlier of its caller's deadline and ``enqueued_s + max_queue_delay_s``. Ordering by it
    is earliest-deadline-first for requests whose deadline is pressing and first-in-first-out for the rest,
    which is what keeps a request from starving behind a stream of later ones with deadlines.
    ``seq`` is a unique, increasing arrival number (ties and stable ordering). ``future`` is None in tests of
    the pure policy.
    """

    payload: P
    cost: int
    priority: int
    enqueued_s: float
    deadline_s: float | None
    due_s: float
    seq: int
    future: asyncio.Future[R] | None = None
    #: True while the request sits in a queue; heaps in the queue drop entries lazily by this flag.
    queued: bool = False
    expiry_handle: asyncio.TimerHandle | None = field(default=None, repr=False)
