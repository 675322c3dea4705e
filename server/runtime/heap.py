"""The C heap: what freed memory glibc keeps, and giving it back.

glibc's malloc keeps freed memory in its arenas (one per thread that allocated, up to 8 x cores) instead of
returning it, so after a burst of large requests (decode buffers, batch arrays, protobuf messages) RSS stays
high and drifts up as the arenas fragment. ``malloc_trim(0)`` returns every free page of every arena (glibc
2.8+ also releases free pages in the middle of a heap, not only at its top).

- :func:`trim_heap` once, after loading a model (parsing the file frees all of it again);
- :class:`HeapTrimmer` every ``--heap-trim-interval-s`` while the server runs, off the event loop, and only
  when batches ran since the last trim (an idle server costs nothing). Measured with ``benchmarks/soak.py``
  (30 minutes of mixed traffic): results in benchmarks/results/soak/.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections.abc import Callable
from concurrent.futures import Executor

__all__ = ["HeapTrimmer", "trim_heap"]

log = logging.getLogger(__name__)


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``; elsewhere nothing).

    Loading a session parses the whole model file (weights included) and frees it again; glibc keeps most
    of that. Measured on the base model (373 MB): three shared-weight sessions 977 MB RSS after loading,
    380 MB after the trim (one session: 712 and 371 MB).
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class HeapTrimmer:
    """Trims the heap every ``interval_s`` on ``executor`` while ``activity()`` (a count that grows with
    work, e.g. batches run) has moved since the last trim. ``start()`` / ``stop()`` on the event loop."""

    def __init__(self, interval_s: float, executor: Executor, activity: Callable[[], int]) -> None:
        self.interval_s = interval_s
        self._executor = executor
        self._activity = activity
        self._task: asyncio.Task[None] | None = None
        self.checks = 0  # wake-ups
        self.trims = 0

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="heap-trimmer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        seen = self._activity()
        while True:
            await asyncio.sleep(self.interval_s)
            self.checks += 1
            now = self._activity()
            if now == seen:
                continue
            seen = now
            try:
                await loop.run_in_executor(self._executor, trim_heap)
                self.trims += 1
            except RuntimeError:  # the executor is shutting down with the server
                return
