"""The model runner: batched execution of an exported model repository on an engine's sessions.

``Runner.run(batch)`` is blocking and is called by the batcher from its worker thread(s). It pads the
waveforms on the right, runs the graph once and slices every output back to each item's valid frames.

Providers come from configuration in order of preference (CUDA first, then CPU). After a session is
created the runner asks it which providers are really active: ONNX Runtime silently drops a provider it
cannot load, so the configured list says nothing about what runs. CUDA failing at load time gives a CPU
session. At run time an out-of-memory error is raised as ``RunnerOutOfMemory`` so that the batcher splits
the batch and retries (``split_on_error``) and learns the largest batch that fits (``is_out_of_memory``).

GPU failures are counted per device error, not per split retry (issue 15). Any other failure on a GPU session
is followed by a probe: a short known-good input on the same session. If the probe runs, the device is fine
and the failure belongs to the batch's input: it is raised (the batcher splits down to the item at fault,
which alone fails) and counts nothing. If the probe fails too, that is one device failure;
``gpu_failures_before_fallback`` consecutive ones move the runner to CPU sessions (the batch is rerun
there). After ``gpu_cooldown_s`` a background thread loads GPU sessions again and probes them; when the
probe runs, the runner returns to the GPU (``on_provider_change(CPU, GPU, "recovered")``), otherwise it tries
again after a doubled cool-down (at most 8x). On a GPU, batches are padded to length buckets
(``server/runtime/buckets.py``) and ``cost(n)`` tells the batcher the padded length. CUDA options:
``server/runtime/gpu.py``.

A watchdog (``server/runtime/watchdog.py``) bounds every run (``run_timeout_s``): a run it terminates fails
its batch with ``RunnerTimeout``.

Engines (``server/runtime/engines/``): the session factory decides what runs the graph, ONNX Runtime by
default or OpenVINO (``engine``); the runner reports the engine and the precision really used
(``precision``: the model repository's, or OpenVINO's inference precision for an fp32 repository). What a
session and its factory must provide, and what the runner returns and raises: ``server/runtime/contract.py``.

Widths (issue 24): ``instances`` 0 (``--runner-instances 0``, the default) on ONNX Runtime's CPU provider
is the adaptive runner: a wide and a narrow session over one pre-packed copy of the weights, the session
chosen per batch from the queue (``server/runtime/widths.py``; ``set_queue_probe`` tells it the batcher's
queue). Anywhere else 0 means one instance; ``instances`` N >= 1 is N fixed instances of
``intra_op_threads`` each.
``concurrency`` is how many batches may run at once (the batcher's workers); ``on_width(threads)`` is told
the threads of the session that ran each batch (``emotion_runner_width``), ``on_bound_wait()`` of each batch
that waited for the running ones to end under the side-by-side bound (``emotion_runner_bound_waits_total``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.runtime.buckets import LengthBuckets
from emotion2vec_serving.server.runtime.contract import (
    FloatArray,
    ItemResult,
    RunnerError,
    RunnerOptions,
    RunnerOutOfMemory,
    RunnerTimeout,
    SessionFactory,
    SessionLike,
    SharedWeightsUnavailable,
)
from emotion2vec_serving.server.runtime.engines.onnxruntime import ort_session_factory
from emotion2vec_serving.server.runtime.heap import trim_heap
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, GPU_PROVIDERS
from emotion2vec_serving.server.runtime.watchdog import Watchdog
from emotion2vec_serving.server.runtime.widths import ADAPTIVE, WidthPool, plan_widths

__all__ = ["Runner"]

log = logging.getLogger(__name__)

# Substrings of ONNX Runtime / CUDA error messages that mean "not enough memory for this batch".
_OOM_MARKERS = ("out of memory", "failed to allocate memory", "bfcarena", "cudnn_status_alloc_failed",
                "cublas_status_alloc_failed", "std::bad_alloc")


#: ``on_batch(batch, batch_id, started, run_s, provider, error)`` after every run (``error``: None, or what
#: the run raised); ``started`` is ``time.monotonic``. The tracer's batch span (``server/tracing.py``).
BatchHook = Callable[[Sequence[FloatArray], int, float, float, str, "BaseException | None"], None]


#: A runner thread keeps its padding buffer while a batch needs at most this many samples (16 MiB of float32:
#: 60 s of batch audio needs 3.7 MiB); a larger batch pads into an array of its own, freed after the run.
PAD_SCRATCH_MAX_SAMPLES = 4 * 1024 * 1024


class PadScratch(threading.local):
    """Each thread's reusable padding buffer (``_pad_batch``), grown to the largest batch it has padded.

    A fresh zeroed array per batch costs the zeroing of the whole array or, for arrays of 1 MiB or more (the
    heap's mmap threshold, ``runtime/heap.py``), a new mapping whose every page faults on first write. The
    runner threads pad into their own buffer instead, zeroing only the rows' tails. Measured through the
    emulated GPU (batches of 15 x 4 s, 3.8 MB; ``benchmarks/results/emulated_gpu`` against its
    ``before_pad_scratch/``, runs an hour apart): server CPU per PCM request 0.73-0.77 ms against 0.91-1.04.
    ONNX Runtime and OpenVINO read the input only while the run lasts, and the next run on that thread starts
    after it has returned.
    """

    def __init__(self) -> None:
        self.flat = np.empty(0, dtype=np.float32)


def _pad_batch(batch: Sequence[FloatArray], width: int, scratch: PadScratch | None = None) -> FloatArray:
    """The batch as one right-padded ``(n, width)`` float32 array, each sample copied once.

    One waveform of exactly ``width`` samples (a batch of one on a CPU) is not copied at all. Measured
    (issue 24): building it with one masked numpy assignment (a boolean ``n x width`` mask and a
    concatenation) was 40-70 times slower than one slice copy per row for batches of 1-16 one-to-three
    second clips, so rows are copied one by one. With ``scratch`` the rows go into the calling thread's
    reused buffer (valid until that thread pads its next batch), each row's tail zeroed; without it, or past
    ``PAD_SCRATCH_MAX_SAMPLES``, into a new zeroed array.
    """
    if len(batch) == 1 and len(batch[0]) == width:
        return np.ascontiguousarray(batch[0], dtype=np.float32).reshape(1, width)
    need = len(batch) * width
    if scratch is None or need > PAD_SCRATCH_MAX_SAMPLES:
        waveform = np.zeros((len(batch), width), dtype=np.float32)
        for i, w in enumerate(batch):
            waveform[i, : len(w)] = w
        return waveform
    if scratch.flat.size < need:
        scratch.flat = np.empty(need, dtype=np.float32)
    waveform = scratch.flat[:need].reshape(len(batch), width)
    for i, w in enumerate(batch):
        n = len(w)
        waveform[i, :n] = w
        waveform[i, n:] = 0.0
    return waveform


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(marker in text for marker in _OOM_MARKERS)


class Runner:
    """Runs padded batches on a pool of engine sessions (one per runner instance; ONNX Runtime by default).

    Thread-safe: ``run`` may be called from several batcher worker threads at once; each takes its own
    session from the pool. Provider fallback replaces every session under ``_lock``.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        options: RunnerOptions,
        *,
        session_factory: SessionFactory = ort_session_factory,
        on_provider_change: Callable[[str | None, str, str], None] | None = None,
        on_run_timeout: Callable[[], None] | None = None,
        on_batch: BatchHook | None = None,
        on_width: Callable[[int], None] | None = None,
        on_bound_wait: Callable[[], None] | None = None,
    ) -> None:
        self.manifest = manifest
        self.options = options
        self._factory = session_factory
        self._on_provider_change = on_provider_change
        self._on_run_timeout = on_run_timeout
        #: Traces (``server/tracing.py``): told of every run, in the run's thread; None while tracing is off.
        self.on_batch = on_batch
        self.on_width = on_width  # told the threads of the session that ran each batch
        self.on_bound_wait = on_bound_wait  # told of each batch that waits for the side-by-side bound
        self._instances = max(1, options.instances)  # fixed instances (adaptive: where it does not apply)
        self._widths: WidthPool | None = None  # the adaptive runner's sessions (None: the fixed pool)
        self._batch_ids = itertools.count(1)  # next() is atomic under the GIL: batcher threads share it
        self._pad_scratch = PadScratch()  # one padding buffer per thread that runs batches
        self._lock = threading.Lock()
        self._pool: queue.SimpleQueue[tuple[int, SessionLike]] = queue.SimpleQueue()
        self._generation = 0  # bumped on fallback so that sessions of the old provider are discarded
        self._gpu_failures = 0
        self._closed = False
        self._stop = threading.Event()  # set by close(): ends the GPU restorer thread
        self._restorer: threading.Thread | None = None
        self._buckets = options.length_buckets
        self._output_names = tuple(name for name in _ORDER if name in manifest.output_names)
        self._output_list = list(self._output_names)
        self._watchdog = Watchdog()
        self._engine = options.engine
        self._precision = manifest.precision
        self._provider = self._load(options.providers)

    # ------------------------------------------------------------------ loading

    def _load(self, providers: Sequence[str]) -> str:
        """Create the session pool; fall back to CPU when a GPU provider fails to load."""
        adaptive = self.options.instances == ADAPTIVE and self.options.engine == "onnxruntime"
        plan = plan_widths(self.options.intra_op_threads)
        wide = dataclasses.replace(self.options, intra_op_threads=plan.wide_threads, share_weights=True)
        try:
            first, active = self._create(providers, wide if adaptive else self.options)
        except SharedWeightsUnavailable as exc:
            log.warning("adaptive widths are not available (%s); running one instance of %d intra-op "
                        "thread(s) instead", exc, plan.wide_threads)
            adaptive = False
            first, active = self._create(providers, dataclasses.replace(self.options,
                                                                        intra_op_threads=plan.wide_threads))
        if adaptive and active == CPU_PROVIDER:
            narrow = dataclasses.replace(wide, intra_op_threads=plan.narrow_threads)
            if plan.narrow_threads == 1:
                # One one-thread session runs the narrow batches side by side, each on its caller's thread
                # (ONNX Runtime's Run is thread-safe): one arena and one mapping of the weights fewer.
                # Wider narrow sessions each get their own: runs sharing a session share its thread pool,
                # measured slower (the numbers: runtime/widths.py).
                narrows = [self._create(providers, narrow)[0]] * plan.narrow_sessions
            else:
                narrows = [self._create(providers, narrow)[0] for _ in range(plan.narrow_sessions)]
            bound = int(self.options.side_by_side_audio_s * self.manifest.sample_rate_hz)
            self._widths = WidthPool(first, narrows, plan, max_side_by_side_samples=bound)
            self._widths.on_wait = self.on_bound_wait
            shape = (f"adaptive: 1 x {plan.wide_threads} or {plan.narrow_sessions} x {plan.narrow_threads} "
                     "thread(s), one pre-packed copy of the weights")
        else:
            sessions = [first]
            for _ in range(self._instances - 1):
                sessions.append(self._create(providers)[0])
            for session in sessions:
                self._pool.put((self._generation, session))
            shape = f"{self._instances} instance(s), {self.options.intra_op_threads} intra-op thread(s)"
        trim_heap()  # what parsing the model file left in the heap (runtime/heap.py)
        wanted = providers[0]
        if active != wanted:
            log.warning("execution provider %s is not active; running on %s", wanted, active)
        log.info("model %s %s loaded on %s (%s)", self.manifest.model_name, self.manifest.model_version,
                 active, shape)
        if self._on_provider_change is not None:
            if active == wanted:
                self._on_provider_change(None, active, "load")
            else:
                self._on_provider_change(wanted, active, "unavailable_at_load")
        return active

    def _create(self, providers: Sequence[str],
                options: RunnerOptions | None = None) -> tuple[SessionLike, str]:
        options = options or self.options
        try:
            session = self._factory(self.manifest.onnx_path, providers, options)
        except SharedWeightsUnavailable:
            raise  # _load runs one fixed instance instead
        except Exception as exc:
            rest = [p for p in providers if p not in GPU_PROVIDERS]
            if rest and len(rest) < len(providers):
                log.warning("loading with %s failed (%s); falling back to %s", list(providers), exc, rest)
                session = self._factory(self.manifest.onnx_path, rest, options)
            else:
                raise RunnerError(f"cannot load {self.manifest.onnx_path}: {exc}") from exc
        active = session.get_providers()[0] if session.get_providers() else CPU_PROVIDER
        self._engine = str(getattr(session, "engine", self.options.engine))
        computes_in = getattr(session, "inference_precision", None)
        # An engine's own inference precision (OpenVINO bf16) applies to an fp32 graph; a quantised or
        # fp16 graph runs in the precision it was exported in.
        self._precision = str(computes_in) if computes_in and self.manifest.precision == "fp32" \
            else self.manifest.precision
        return session, active

    @property
    def concurrency(self) -> int:
        """How many batches may run at once: the batcher's workers (adaptive: the narrow sessions)."""
        return self._widths.plan.narrow_sessions if self._widths is not None else self._instances

    @property
    def thread_counts(self) -> tuple[int, ...]:
        """The intra-op thread counts of the sessions batches run on (adaptive: the wide and the narrow)."""
        if self._widths is not None:
            return tuple(sorted({self._widths.plan.wide_threads, self._widths.plan.narrow_threads}))
        return (plan_widths(self.options.intra_op_threads).wide_threads,)  # 0: every usable core

    @property
    def widths(self) -> WidthPool | None:
        """The adaptive runner's sessions and their counters (None: fixed instances)."""
        return self._widths

    def set_queue_probe(self, probe: Callable[[], int]) -> None:
        """``probe()``: requests waiting in the batcher's queue; the adaptive runner runs wide only at 0."""
        if self._widths is not None:
            self._widths.queue_probe = probe

    @property
    def provider(self) -> str:
        """The execution provider that really runs the model now."""
        return self._provider

    @property
    def engine(self) -> str:
        """The inference engine that runs the model: ``onnxruntime`` or ``openvino``."""
        return self._engine

    @property
    def precision(self) -> str:
        """The number format the model really runs in (``fp32``, ``fp16``, ``int8``, ``bf16``)."""
        return self._precision

    # ------------------------------------------------------------------ running

    def run(self, batch: Sequence[FloatArray]) -> list[ItemResult]:
        """Run 16 kHz mono float32 waveforms as one right-padded batch; blocking.

        Raises RunnerOutOfMemory when the batch does not fit, RunnerError for other model failures.
        """
        if self._closed:
            raise RunnerError("the model runner is closed")
        if not batch:
            return []
        lengths = np.fromiter((len(w) for w in batch), dtype=np.int64, count=len(batch))
        widths = self._widths
        samples = 0
        if widths is not None:
            samples = len(batch) * int(lengths.max())  # the run's padded samples (CPU: exact lengths)
            session, threads = widths.acquire(lambda: self._closed, samples)
            generation = self._generation
        else:
            generation, session = self._acquire()
            threads = self.options.intra_op_threads
        if self.on_width is not None:
            self.on_width(threads)
        provider = self._provider
        # On a GPU the batch is padded to a length bucket (the model masks by `lengths`: same results).
        width = self._padded(max(1, int(lengths.max())), provider)
        waveform = _pad_batch(batch, width, self._pad_scratch)
        feeds = {"waveform": waveform, "lengths": lengths}
        batch_id = next(self._batch_ids)
        new_handle = getattr(session, "new_run_handle", None)
        handle = new_handle() if new_handle is not None else None
        timeout_s = self.options.run_timeout_s
        token = None
        if handle is not None and timeout_s > 0:
            token = self._watchdog.arm(handle, timeout_s)
        try:
            started = time.monotonic()
            try:
                outputs = session.run(self._output_list, feeds, handle)
            except Exception as exc:
                if self.on_batch is not None:
                    self.on_batch(batch, batch_id, started, time.monotonic() - started, provider, exc)
                if token is not None and self._watchdog.disarm(token):
                    raise self._timed_out(len(batch), provider, time.monotonic() - started) from exc
                return self._handle_failure(exc, generation, session, provider, batch)
            finally:
                if token is not None:
                    self._watchdog.disarm(token)
            run_s = time.monotonic() - started
            if self.on_batch is not None:
                self.on_batch(batch, batch_id, started, run_s, provider, None)
            if self._gpu_failures:
                with self._lock:
                    self._gpu_failures = 0
        finally:
            if widths is not None:
                widths.release(session, samples)
            else:
                self._release(generation, session)
        return self._slice(dict(zip(self._output_names, outputs, strict=True)), len(batch), started, run_s,
                           provider, batch_id)

    def cost(self, n_samples: int) -> int:
        """The batcher's cost of an input of ``n_samples``: the length it is really run at.

        The length bucket while on a GPU with buckets, else ``n_samples``. Pass it as ``submit(cost=...)``
        so that the batcher's padding and latency model see what the device computes.
        """
        return self._padded(n_samples, self._provider)

    def _padded(self, n_samples: int, provider: str) -> int:
        if self._buckets is None or provider not in GPU_PROVIDERS:
            return n_samples
        return self._buckets.pad(n_samples)

    @property
    def length_buckets(self) -> LengthBuckets | None:
        """The length grid used while on a GPU (None: exact lengths)."""
        return self._buckets

    @property
    def active_length_buckets(self) -> LengthBuckets | None:
        """The length grid batches are padded to now: ``length_buckets`` while on a GPU, else None."""
        return self._buckets if self._provider in GPU_PROVIDERS else None

    def _timed_out(self, n: int, provider: str, elapsed_s: float) -> RunnerTimeout:
        log.error("a batch of %d on %s ran %.1f s, past the %.1f s run timeout: terminated",
                  n, provider, elapsed_s, self.options.run_timeout_s)
        if self._on_run_timeout is not None:
            self._on_run_timeout()
        return RunnerTimeout(
            f"the model run exceeded the {self.options.run_timeout_s:g} s run timeout and was terminated"
        )

    def _acquire(self) -> tuple[int, SessionLike]:
        while True:
            try:
                return self._pool.get(timeout=0.5)
            except queue.Empty:
                # The pool is empty only while every session is busy, or after close().
                if self._closed:
                    raise RunnerError("the model runner is closed") from None

    def _release(self, generation: int, session: SessionLike) -> None:
        with self._lock:
            if generation == self._generation:
                self._pool.put((generation, session))

    def _handle_failure(self, exc: Exception, generation: int, session: SessionLike, provider: str,
                        batch: Sequence[FloatArray]) -> list[ItemResult]:
        if _is_oom(exc):
            # Not the GPU's fault: the batcher splits the batch and retries the halves.
            raise RunnerOutOfMemory(f"out of memory running a batch of {len(batch)} on {provider}") from exc
        if provider not in GPU_PROVIDERS:
            raise RunnerError(f"model failed on {provider}: {exc}") from exc
        if generation == self._generation and self._probe(session, provider):
            # The device runs a known-good input: the failure belongs to this batch's input. Not a device
            # failure; the batcher splits the batch down to the item at fault.
            log.warning("a batch of %d failed on %s but a probe run passed: an input failure, not the "
                        "device (%s)", len(batch), provider, exc)
            raise RunnerError(f"model failed on {provider} for this input: {exc}") from exc
        with self._lock:
            if generation == self._generation:
                self._gpu_failures += 1
            failures = self._gpu_failures
            current = generation == self._generation
            fall_back = current and failures >= self.options.gpu_failures_before_fallback
            if fall_back:
                self._fall_back_locked(provider, exc)
        if fall_back or generation != self._generation:
            # Run this batch again on the CPU session rather than failing its requests.
            return self.run(batch)
        log.error("device failure %d of %d on %s (a probe run failed too): %s",
                  failures, self.options.gpu_failures_before_fallback, provider, exc)
        raise RunnerError(
            f"model failed on {provider} ({failures} consecutive device failure(s)): {exc}"
        ) from exc

    def _probe(self, session: SessionLike, provider: str) -> bool:
        """Run a short known-good input on ``session``: True when it runs and gives finite scores."""
        n = self.manifest.sample_rate_hz
        rng = np.random.default_rng(12345)
        wave = np.zeros((1, self._padded(n, provider)), dtype=np.float32)
        wave[0, :n] = 0.01 * rng.standard_normal(n).astype(np.float32)
        feeds = {"waveform": wave, "lengths": np.array([n], dtype=np.int64)}
        new_handle = getattr(session, "new_run_handle", None)
        handle = new_handle() if new_handle is not None else None
        token = None
        if handle is not None and self.options.run_timeout_s > 0:
            token = self._watchdog.arm(handle, self.options.run_timeout_s)
        try:
            outputs = session.run(self._output_list, feeds, handle)
        except Exception as exc:  # the device (or the session) is broken
            log.warning("probe run on %s failed: %s", provider, exc)
            return False
        finally:
            if token is not None:
                self._watchdog.disarm(token)
        return all(np.isfinite(np.asarray(o, dtype=np.float64)).all() for o in outputs)

    def _discard_pool_locked(self) -> None:
        """Start a new session generation and empty the pool. Precondition: ``_lock`` is held.

        Sessions in use when this runs belong to the old generation and are dropped on release.
        """
        self._generation += 1
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                break

    def _fall_back_locked(self, provider: str, exc: Exception) -> None:
        """Replace every session with a CPU one. Precondition: ``_lock`` is held."""
        log.error("%d consecutive device failures on %s (last: %s); moving to %s%s",
                  self._gpu_failures, provider, exc, CPU_PROVIDER,
                  f", back after a probe in {self.options.gpu_cooldown_s:g} s"
                  if self.options.gpu_cooldown_s > 0 else "")
        self._discard_pool_locked()
        for _ in range(self._instances):
            session = self._factory(self.manifest.onnx_path, [CPU_PROVIDER], self.options)
            self._pool.put((self._generation, session))
        self._provider = CPU_PROVIDER
        self._gpu_failures = 0
        if self._on_provider_change is not None:
            self._on_provider_change(provider, CPU_PROVIDER, "runtime_failure")
        if self.options.gpu_cooldown_s > 0 and not self._closed:
            self._restorer = threading.Thread(target=self._restore_loop, args=(provider,),
                                              name="gpu-restorer", daemon=True)
            self._restorer.start()

    def _restore_loop(self, gpu_provider: str) -> None:
        """After the cool-down, load GPU sessions and probe them; on success, move back to the GPU."""
        delay = self.options.gpu_cooldown_s
        while not self._stop.wait(delay):
            if self._try_restore(gpu_provider):
                return
            delay = min(2 * delay, 8 * self.options.gpu_cooldown_s)
            log.warning("still on %s; next GPU probe in %g s", CPU_PROVIDER, delay)

    def _try_restore(self, gpu_provider: str) -> bool:
        """One attempt to return to the GPU; True when done (or closed), False to try again later."""
        try:
            sessions = [self._factory(self.manifest.onnx_path, self.options.providers, self.options)
                        for _ in range(self._instances)]
        except Exception as exc:
            log.warning("cannot load a %s session yet: %s", gpu_provider, exc)
            return False
        active = sessions[0].get_providers()[0] if sessions[0].get_providers() else CPU_PROVIDER
        if active not in GPU_PROVIDERS:
            log.warning("a new session runs on %s, not a GPU: staying on %s", active, CPU_PROVIDER)
            return False
        if not self._probe(sessions[0], active):
            return False
        with self._lock:
            if self._closed:
                return True
            self._discard_pool_locked()
            for session in sessions:
                self._pool.put((self._generation, session))
            self._provider = active
            self._gpu_failures = 0
            if self._on_provider_change is not None:
                self._on_provider_change(CPU_PROVIDER, active, "recovered")
        log.warning("back on %s: a probe run passed after the cool-down", active)
        return True

    def _slice(self, out: dict[str, Any], n: int, started: float, run_s: float,
               provider: str, batch_id: int) -> list[ItemResult]:
        # Each output converted once for the batch; an item's arrays are views of it (issue 24).
        frame_lengths = np.asarray(out["frame_lengths"]).astype(np.int64).tolist()
        embedding = np.asarray(out["embedding"], dtype=np.float32)
        frame_features = np.asarray(out["frame_features"], dtype=np.float32)
        has_head = "probs" in out
        logits = np.asarray(out["logits"], dtype=np.float32) if has_head else None
        probs = np.asarray(out["probs"], dtype=np.float32) if has_head else None
        frame_probs = np.asarray(out["frame_probs"], dtype=np.float32) if has_head else None
        results = []
        for i in range(n):
            frames = frame_lengths[i]
            results.append(ItemResult(
                embedding=embedding[i],
                frame_features=frame_features[i, :frames],
                logits=None if logits is None else logits[i],
                probs=None if probs is None else probs[i],
                frame_probs=None if frame_probs is None else frame_probs[i, :frames],
                batch_size=n,
                started_monotonic=started,
                inference_s=run_s,
                provider=provider,
                batch_id=batch_id,
            ))
        return results

    def close(self) -> None:
        """Release the sessions. Later ``run`` calls fail with RunnerError."""
        self._stop.set()
        self._watchdog.close()
        with self._lock:
            self._closed = True
            self._discard_pool_locked()
        if self._widths is not None:
            self._widths.close()


_ORDER = ("logits", "probs", "frame_probs", "embedding", "frame_features", "frame_lengths")
