"""Load-adaptive CPU parallelism (issue 24): one copy of the weights, run wide or narrow per batch.

On a few CPU cores the best fixed configuration depends on the load: one session with every core
(``1 x 2`` on 2 cores) serves a lone batch fastest, two one-thread sessions (``2 x 1``) serve a queue
fastest (measured in ``benchmarks/results/cpu_engines`` and ``benchmarks/results/adaptive_cpu``). The
adaptive runner (``--runner-instances 0``, the default) holds both: a *wide* session with the whole thread
budget and *narrow* ones with half of it, all over one pre-packed copy of the weights (ONNX Runtime:
``RunnerOptions.share_weights``, ``engines/onnxruntime.py``: the optimised model is saved once with its
pre-packed weights and every session memory-maps it). ``WidthPool`` picks the session per batch:

- the wide one when nothing else runs and nothing else is waiting (the batcher's queue is empty: the
  runner's ``queue_probe``);
- otherwise a narrow one: two ready batches run narrow side by side. With one thread per narrow run (two
  cores) both run on one one-thread session, each on its caller's thread; wider narrow runs get a session
  each (runs that share a session share its intra-op thread pool: one two-thread session running two
  batches at once served 1.08 runs/s against 1.27 for a one-thread session running two, large model,
  3.75 s clip).

A batch that arrives while a wide run is going takes a narrow session at once rather than waiting for the wide
run to end (for the rest of that run the threads exceed the budget by the narrow width; waiting would cost the
new batch up to a whole run), unless the audio running side by side would pass ``--side-by-side-audio-s``
(``WidthPool.max_side_by_side_samples``): then it waits for the running batch to end and runs wide. Batches
side by side hold their activations at the same time. With the model's convolutional front end and its long
attentions in chunks (the exporter's defaults, ``export/chunking.py``, ``export/attention_chunks.py``) those
grow about linearly with the padded audio (ONNX Runtime alone, large fp32: four 10.7 s clips +162 MiB, ~3.5
MiB per padded second), so the bound is a memory bound. Its default is the default batch's own bound
(``--max-batch-audio-s``, 60 s): two batches at once never hold more than one full batch alone, and the peak
is the model's memory plus one full batch whatever the width. (The 10-minute open-loop benchmark's overshoot,
``benchmarks/results/rss_open_loop``, was not this: its batches hold one or two clips; it was arena regions
kept by held outputs, ``engines/onnxruntime.py``.) The bound never makes a batch wait at up to 4 clients with
clips of at most 15 s (four requests in flight pad to at most 60 s); under a deep queue a batch that would
pass it runs wide after the running one, as one instance would. A smaller bound trades throughput for memory
(12 s on an older export at 4 clients: 1,497 MiB against 1,569 with no bound, at one instance's throughput,
``benchmarks/results/peak_memory``); 0 removes it. At most ``narrow_sessions`` batches run at once (the
batcher runs ``runner.concurrency`` workers). The width does not change a batch's answer beyond the project's
batch-exactness tolerance (tests/server/runtime/test_adaptive_widths.py).

Only ONNX Runtime on the CPU runs adaptive: a GPU session, OpenVINO and the emulated GPU run the fixed
number of instances (``--runner-instances 0`` means one there). OpenVINO fixes a request's threads by the
compiled model's streams, so widths would need two compiled models (two copies of the weights).

Measured (``benchmarks/results/adaptive_cpu``, large model, 2 AMD EPYC cores, quiet, three rounds of 100
requests per row): adaptive is 0.98 / 1.02 / 1.00 x the best fixed configuration at 1 / 2 / 4 clients for fp32
and 0.99 / 0.98 / 0.97 x for int8, where one fixed instance of two threads is 0.94 (fp32) and 0.84 (int8) at
four clients and two of one thread 0.59-0.64 at one. Its peak proportional memory (PSS) is 1.05-1.08 x one
instance's for fp32 and 1.09-1.23 x for int8 (two batches' activations in flight beside int8's small weights;
two fixed instances: 1.61-1.91 x); with the chunked front end 1.05 x (fp32) and 1.14-1.16 x (int8) at 4
clients (``benchmarks/results/peak_memory/front_end_chunks``, two rounds); with attention in chunks too 1.05 x
and 1.14 x (``benchmarks/results/peak_memory/attention_chunks``). ``VmRSS`` counts the mapped weights
once per session that maps them (twice); PSS and the container's memory count them once
(``engines/onnxruntime.py``). The earlier adaptive runner (shared ``add_initializer`` arrays, pre-packing off;
external data not shared at all) measured 0.85-0.96 x and 2.7 x the memory, and was opt-in.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from emotion2vec_serving.server.runtime.contract import RunnerError, SessionLike

__all__ = ["ADAPTIVE", "ADAPTIVE_CONCURRENCY", "WidthPlan", "WidthPool", "plan_widths", "runner_concurrency"]

#: ``--runner-instances`` value that asks for adaptive widths.
ADAPTIVE = 0
#: Narrow sessions of the adaptive runner: the most batches it runs at once.
ADAPTIVE_CONCURRENCY = 2


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class WidthPlan:
    """The adaptive runner's sessions: one of ``wide_threads``, ``narrow_sessions`` of ``narrow_threads``."""

    wide_threads: int
    narrow_threads: int
    narrow_sessions: int = ADAPTIVE_CONCURRENCY


def plan_widths(threads: int) -> WidthPlan:
    """The plan for a budget of ``threads`` intra-op threads (0: every usable core)."""
    budget = threads if threads > 0 else usable_cores()
    return WidthPlan(wide_threads=budget, narrow_threads=max(1, budget // ADAPTIVE_CONCURRENCY))


def runner_concurrency(instances: int) -> int:
    """Batches a runner with ``--runner-instances instances`` may run at once (at most)."""
    return instances if instances > 0 else ADAPTIVE_CONCURRENCY


class WidthPool:
    """The adaptive runner's sessions and the choice between them; thread-safe.

    ``queue_probe()``: how many requests wait in the batcher's queue (None: taken as 0). ``counts``: runs
    per width (threads); ``peak_narrow``: the most narrow runs seen at once (tests and benchmarks).
    """

    def __init__(self, wide: SessionLike, narrow: Sequence[SessionLike], plan: WidthPlan,
                 max_side_by_side_samples: int = 0) -> None:
        if not narrow:
            raise ValueError("the adaptive runner needs at least one narrow session")
        self.plan = plan
        #: A batch starts beside running ones only while the samples running stay within this (0: no
        #: bound); past it, it waits for them to end. Batches side by side hold their activations at once.
        self.max_side_by_side_samples = max_side_by_side_samples
        self._running_samples = 0
        self.waits = 0  # batches that waited for the bound (tests and benchmarks)
        self.on_wait: Callable[[], None] | None = None  # told of each batch that waits for the bound
        self.queue_probe: Callable[[], int] | None = None
        self._cond = threading.Condition()
        self._wide: SessionLike | None = wide
        self._wide_busy = False
        self._narrow_free: list[SessionLike] = list(narrow)
        self._narrow_running = 0
        self.counts: dict[int, int] = {}
        self.peak_narrow = 0

    def _others_waiting(self) -> bool:
        probe = self.queue_probe
        if probe is None:
            return False
        try:
            return probe() > 0
        except Exception:  # a probe must never fail a batch
            return False

    def acquire(self, closed: Callable[[], bool], samples: int = 0) -> tuple[SessionLike, int]:
        """Take the session for the next batch of ``samples`` padded samples: (session, its threads).

        Blocks while none is free, and while running it beside the batches already running would pass
        ``max_side_by_side_samples`` (a batch alone always runs). Give the same ``samples`` to ``release``.
        """
        waited = False
        with self._cond:
            while True:
                if closed() or self._wide is None:
                    raise RunnerError("the model runner is closed")
                idle = not self._wide_busy and self._narrow_running == 0
                bound = self.max_side_by_side_samples
                if not idle and bound > 0 and self._running_samples + samples > bound:
                    if not waited:
                        waited = True
                        self.waits += 1
                        if self.on_wait is not None:
                            self.on_wait()
                    self._cond.wait(0.5)
                    continue
                # Alone: wide when nothing waits, and also when the bound keeps others from running beside
                # it (it waited for the bound, or a batch of its size could not join it): narrow alone would
                # leave threads idle.
                if idle and (waited or (bound > 0 and 2 * samples > bound) or not self._others_waiting()):
                    self._wide_busy = True
                    self._running_samples += samples
                    return self._taken(self._wide, self.plan.wide_threads)
                if self._narrow_free:
                    self._narrow_running += 1
                    self.peak_narrow = max(self.peak_narrow, self._narrow_running)
                    self._running_samples += samples
                    return self._taken(self._narrow_free.pop(), self.plan.narrow_threads)
                self._cond.wait(0.5)

    def _taken(self, session: SessionLike, threads: int) -> tuple[SessionLike, int]:
        self.counts[threads] = self.counts.get(threads, 0) + 1
        return session, threads

    def release(self, session: SessionLike, samples: int = 0) -> None:
        with self._cond:
            self._running_samples -= samples
            if session is self._wide:
                self._wide_busy = False
            else:
                self._narrow_running -= 1
                self._narrow_free.append(session)
            self._cond.notify_all()

    def close(self) -> None:
        """Drop the sessions (runs in progress finish); later ``acquire`` calls fail."""
        with self._cond:
            self._wide = None
            self._narrow_free.clear()
            self._cond.notify_all()
