"""The C heap: what freed memory glibc keeps, and giving it back.

glibc's malloc keeps freed memory in its arenas (one per thread that allocated, up to 8 x cores) instead of
returning it, so after a burst of large requests (decode buffers, batch arrays, protobuf messages) RSS stays
high and drifts up as the arenas fragment. ``malloc_trim(0)`` returns every free page of every arena (glibc
2.8+ also releases free pages in the middle of a heap, not only at its top).

- :func:`set_mmap_threshold` at start-up (``--heap-mmap-threshold-kb``, default 1 MiB): glibc maps a large
  block on its own and unmaps it when freed, but only below a *sliding* threshold: the first free of a
  mapped block raises the threshold to that block's size (up to 32 MiB), and from then on blocks of a batch's
  size (ONNX Runtime's arena regions, which arena shrinkage frees after every run, numpy batch arrays,
  decode buffers) come from the heap and stay there, fragmented, until the next trim. A fixed threshold keeps
  them mapped, so memory goes back the moment a run ends. Measured (large fp32 model, adaptive runner, 4
  closed-loop clients, 100 requests, 2 AMD EPYC cores, two rounds): peak PSS 1,638 / 1,662 MiB with the
  sliding threshold against 1,565 / 1,535 MiB at 1 MiB, throughput within the rounds' noise (4.19 / 4.11
  against 4.14 / 4.17 audio-s/s);
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
import os
from collections.abc import Callable
from concurrent.futures import Executor

__all__ = ["HeapTrimmer", "set_mmap_threshold", "trim_heap"]

log = logging.getLogger(__name__)


#: glibc's mallopt parameter number for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
#: glibc's environment tunable for the same; when set, the operator's value stands.
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"


def set_mmap_threshold(kib: int) -> bool:
    """Fix glibc's mmap threshold at ``kib`` KiB (module docstring: why). False, changing nothing, when
    ``kib`` is 0, ``MALLOC_MMAP_THRESHOLD_`` is set in the environment, or the C library is not glibc."""
    if kib <= 0 or MMAP_THRESHOLD_ENV in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(kib * 1024)))
    except (OSError, AttributeError):
        return False


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
