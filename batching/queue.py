"""The pending-request queue: bounded, indexed for length-aware batch formation.

Structure (all operations are O(log n) plus list shifts, no full scans):
- per priority level, a list sorted by ``(cost, seq)``: batch formation walks outwards from a length;
- a heap ordered by ``(-priority, due_s, seq)``: the most urgent request (the anchor of the next batch);
- a heap ordered by ``(due_s, seq)``: the earliest moment any request is due, across levels.
The heaps delete lazily (entries of requests no longer ``queued`` are dropped when they surface) and are
compacted when dead entries dominate. Not thread-safe: the batcher uses it from the event loop only.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterator
from typing import Any

from .request import QueuedRequest

__all__ = ["RequestQueue"]

Request = QueuedRequest[Any, Any]


class RequestQueue:
    """Pending requests, bounded in count and in total cost (samples)."""

    def __init__(self, max_requests: int, max_cost: int) -> None:
        self.max_requests = max_requests
        self.max_cost = max_cost
        self._levels: dict[int, list[tuple[int, int, Request]]] = {}
        self._levels_desc: list[int] = []
        self._urgent: list[tuple[int, float, int, Request]] = []
        self._due: list[tuple[float, int, Request]] = []
        self._count = 0
        self._cost = 0

    def __len__(self) -> int:
        return self._count

    @property
    def cost(self) -> int:
        """Total cost (samples) of the queued requests."""
        return self._cost

    def refusal(self, cost: int) -> str | None:
        """Why a request of ``cost`` would be refused now (``"requests"`` or ``"cost"``), or None."""
        if self._count + 1 > self.max_requests:
            return "requests"
        if self._cost + cost > self.max_cost:
            return "cost"
        return None

    def push(self, req: Request) -> None:
        """Add a request. The caller checks :meth:`refusal` first; the bounds are not re-checked here."""
        level = self._levels.get(req.priority)
        if level is None:
            level = self._levels[req.priority] = []
            bisect.insort(self._levels_desc, -req.priority)
        bisect.insort(level, (req.cost, req.seq, req))
        heapq.heappush(self._urgent, (-req.priority, req.due_s, req.seq, req))
        heapq.heappush(self._due, (req.due_s, req.seq, req))
        req.queued = True
        self._count += 1
        self._cost += req.cost

    def remove(self, req: Request) -> bool:
        """Take a request out of the queue; False when it was not queued (already taken or removed)."""
        if not req.queued:
            return False
        level = self._levels[req.priority]
        i = bisect.bisect_left(level, (req.cost, req.seq))
        del level[i]
        if not level:
            del self._levels[req.priority]
            self._levels_desc.remove(-req.priority)
        req.queued = False
        self._count -= 1
        self._cost -= req.cost
        if len(self._urgent) > 2 * self._count + 64:
            self._compact()
        return True

    def _compact(self) -> None:
        self._urgent = [e for e in self._urgent if e[3].queued]
        heapq.heapify(self._urgent)
        self._due = [e for e in self._due if e[2].queued]
        heapq.heapify(self._due)

    def most_urgent(self) -> Request | None:
        """Highest priority; within it, earliest ``due_s``; then earliest arrival. None when empty."""
        heap = self._urgent
        while heap and not heap[0][3].queued:
            heapq.heappop(heap)
        return heap[0][3] if heap else None

    def earliest_due_s(self) -> float:
        """The earliest ``due_s`` over all levels (``inf`` when empty)."""
        heap = self._due
        while heap and not heap[0][2].queued:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def levels_desc(self) -> list[int]:
        """Priority levels that have requests, highest first."""
        return [-p for p in self._levels_desc]

    def level(self, priority: int) -> list[tuple[int, int, Request]]:
        """The requests of one level as ``(cost, seq, request)`` sorted by cost. Read-only view."""
        return self._levels.get(priority, [])

    def __iter__(self) -> Iterator[Request]:
        for p in self.levels_desc():
            for _, _, req in self._levels[p]:
                yield req

    def drain_all(self) -> list[Request]:
        """Remove and return every queued request (hard close)."""
        out = list(self)
        for req in out:
            req.queued = False
        self._levels.clear()
        self._levels_desc.clear()
        self._urgent.clear()
        self._due.clear()
        self._count = 0
        self._cost = 0
        return out
