"""The run-timeout watchdog: bounds every model run to ``run_timeout_s``.

Each run gets its own run handle from its session (``session.new_run_handle()``: an ``onnxruntime.RunOptions``
for ONNX Runtime, the infer request for OpenVINO) and the watchdog calls ``handle.terminate()`` when the run
takes too long. ONNX Runtime checks its terminate flag between graph nodes, OpenVINO cancels the request;
either way the run raises, which frees the session for the next batch; the runner then fails the batch with
``RunnerTimeout`` (a ``RunnerError``, so the batcher splits and retries it and only the item that really
hangs finally fails). A single node that never returns (a hung GPU kernel) cannot be interrupted this way.
One watchdog thread per runner serves every run (a timer thread per run cost a thread start per batch).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time

from emotion2vec_serving.server.runtime.contract import RunHandle

__all__ = ["Watchdog"]


class Watchdog:
    """One thread that calls ``terminate()`` on the run handle of every run still going at its deadline.

    ``arm`` costs a lock and a heap push; the thread is only woken when a new deadline is earlier than the
    one it sleeps towards (with one timeout for every run, only the first run after an idle spell).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[float, RunHandle]] = {}  # token -> (deadline, handle) while running
        self._fired: set[int] = set()
        self._tokens = itertools.count()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, handle: RunHandle, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            token = next(self._tokens)
            self._armed[token] = (deadline, handle)
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="run-watchdog", daemon=True)
                self._thread.start()
            elif deadline < self._wake_at:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Stop watching a run; True when the watchdog had terminated it."""
        with self._cond:
            self._armed.pop(token, None)
            if len(self._heap) > 64 + 4 * len(self._armed):
                # Finished runs leave their entries behind until their deadline; drop them now and then.
                self._heap = [(deadline, t) for t, (deadline, _) in self._armed.items()]
                heapq.heapify(self._heap)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][1] not in self._armed):
                    _, token = heapq.heappop(self._heap)
                    entry = self._armed.pop(token, None)
                    if entry is not None:
                        self._fired.add(token)
                        entry[1].terminate()
                self._wake_at = self._heap[0][0] if self._heap else math.inf
                self._cond.wait(None if not self._heap else self._wake_at - now)
