"""ONNX Runtime execution of an exported model repository.

``Runner.run(batch)`` is blocking and is called by the batcher from its worker thread(s). It pads the
waveforms on the right, runs the graph once and slices every output back to each item's valid frames.

Providers come from configuration in order of preference (CUDA first, then CPU). After a session is
created the runner asks it which providers are really active: ONNX Runtime silently drops a provider it
cannot load, so the configured list says nothing about what runs. CUDA failing at load time gives a CPU
session. At run time an out-of-memory error is raised as ``RunnerOutOfMemory`` so that the batcher splits
the batch and retries (``split_on_error``); repeated failures on a GPU session move the runner to a CPU
session, counted through ``on_provider_change``.

A watchdog bounds every run (``run_timeout_s``): each run gets its own ``onnxruntime.RunOptions`` and a
timer sets ``terminate`` on it when the run takes too long. ONNX Runtime checks the flag between graph
nodes and makes the run raise, which frees the session for the next batch; the batch fails with
``RunnerTimeout`` (a ``RunnerError``, so the batcher splits and retries it and only the item that really
hangs finally fails). A single node that never returns (a hung GPU kernel) cannot be interrupted this way.
One watchdog thread per runner serves every run (a timer thread per run cost a thread start per batch).

Memory and CPU settings (``RunnerOptions``), from measurements on a 2-core CPU (``benchmarks/README.md``):
``allow_spinning`` off by default, because ONNX Runtime's intra-op threads otherwise spin after every run and
take the CPU the event loop needs; ``arena_shrinkage`` gives the CPU arena's free chunks back after every
run, so the process does not keep the peak of the longest batch it ever ran.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.server.manifest import ModelManifest

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "ItemResult",
    "Runner",
    "RunnerError",
    "RunnerOptions",
    "RunnerOutOfMemory",
    "RunnerTimeout",
    "SessionFactory",
    "SessionLike",
    "ort_session_factory",
    "split_on_error",
]

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_GPU_PROVIDERS = frozenset({CUDA_PROVIDER, "TensorrtExecutionProvider", "ROCMExecutionProvider"})
# Substrings of ONNX Runtime / CUDA error messages that mean "not enough memory for this batch".
_OOM_MARKERS = ("out of memory", "failed to allocate memory", "bfcarena", "cudnn_status_alloc_failed",
                "cublas_status_alloc_failed", "std::bad_alloc")

FloatArray = npt.NDArray[np.float32]


class RunnerError(RuntimeError):
    """The model failed to run a batch."""


class RunnerOutOfMemory(RunnerError):
    """The batch did not fit in memory; a smaller batch may."""


class RunnerTimeout(RunnerError):
    """The watchdog cut a run off after ``run_timeout_s``."""


def split_on_error(exc: BaseException) -> bool:
    """The batcher's ``split_on_error`` predicate: split and retry on any model failure.

    Out-of-memory shrinks the batch until it fits; any other failure is isolated to the request that
    causes it, so one poison request never fails the others in its batch.
    """
    return isinstance(exc, RunnerError)


class SessionLike(Protocol):
    """What the runner needs of an ``onnxruntime.InferenceSession`` (tests wrap real sessions)."""

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_options: Any = None) -> list[Any]: ...

    def get_providers(self) -> list[str]: ...


#: ``factory(model_path, providers, options) -> session``; raise if the providers cannot be loaded.
SessionFactory = Callable[[Path, Sequence[str], "RunnerOptions"], SessionLike]


@dataclass(frozen=True)
class RunnerOptions:
    """ONNX Runtime session settings (taken from ``server.config.Settings``)."""

    providers: tuple[str, ...] = (CUDA_PROVIDER, CPU_PROVIDER)
    intra_op_threads: int = 1
    instances: int = 1
    graph_optimization_level: str = "all"
    gpu_failures_before_fallback: int = 3
    run_timeout_s: float = 0.0  # a run longer than this is terminated (0 = no watchdog)
    allow_spinning: bool = False  # intra-op threads spin-wait after a run (burns CPU on small machines)
    cpu_arena: bool = True  # ONNX Runtime's CPU memory arena
    arena_shrinkage: bool = False  # free the CPU arena's unused chunks after every run (needs cpu_arena)


def ort_session_factory(model_path: Path, providers: Sequence[str], options: RunnerOptions) -> SessionLike:
    """Create a real ``onnxruntime.InferenceSession``."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    # One inference per session at a time: inter-op parallelism only adds contention on few cores.
    so.inter_op_num_threads = 1
    so.graph_optimization_level = levels[options.graph_optimization_level]
    so.enable_cpu_mem_arena = options.cpu_arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    available = set(ort.get_available_providers())
    usable = [p for p in providers if p in available]
    if not usable:
        raise RunnerError(
            f"none of the providers {list(providers)} is available in this onnxruntime "
            f"(available: {sorted(available)})"
        )
    session: SessionLike = ort.InferenceSession(str(model_path), sess_options=so, providers=usable)
    return session


@dataclass(frozen=True)
class ItemResult:
    """One request's outputs, sliced to its valid frames. Classifier fields are None for headless models."""

    embedding: FloatArray  # [D]
    frame_features: FloatArray  # [frames, D]
    logits: FloatArray | None  # [labels]
    probs: FloatArray | None  # [labels]
    frame_probs: FloatArray | None  # [frames, labels]
    batch_size: int  # requests in the batch this item ran in
    started_monotonic: float  # when the batch started running (time.monotonic)
    inference_s: float  # run time of the whole batch
    provider: str  # execution provider that produced it


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(marker in text for marker in _OOM_MARKERS)


class Runner:
    """Runs padded batches on a pool of ONNX Runtime sessions (one per runner instance).

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
    ) -> None:
        self.manifest = manifest
        self.options = options
        self._factory = session_factory
        self._on_provider_change = on_provider_change
        self._on_run_timeout = on_run_timeout
        self._lock = threading.Lock()
        self._pool: queue.SimpleQueue[tuple[int, SessionLike]] = queue.SimpleQueue()
        self._generation = 0  # bumped on fallback so that sessions of the old provider are discarded
        self._gpu_failures = 0
        self._closed = False
        self._output_names = tuple(name for name in _ORDER if name in manifest.output_names)
        self._output_list = list(self._output_names)
        self._watchdog = _Watchdog()
        self._provider = self._load(options.providers)

    # ------------------------------------------------------------------ loading

    def _load(self, providers: Sequence[str]) -> str:
        """Create the session pool; fall back to CPU when a GPU provider fails to load."""
        first, active = self._create(providers)
        sessions = [first]
        for _ in range(self.options.instances - 1):
            sessions.append(self._create(providers)[0])
        for session in sessions:
            self._pool.put((self._generation, session))
        wanted = providers[0]
        if active != wanted:
            log.warning("execution provider %s is not active; running on %s", wanted, active)
        log.info("model %s %s loaded on %s (%d instance(s), %d intra-op thread(s))",
                 self.manifest.model_name, self.manifest.model_version, active,
                 self.options.instances, self.options.intra_op_threads)
        if self._on_provider_change is not None:
            if active == wanted:
                self._on_provider_change(None, active, "load")
            else:
                self._on_provider_change(wanted, active, "unavailable_at_load")
        return active

    def _create(self, providers: Sequence[str]) -> tuple[SessionLike, str]:
        try:
            session = self._factory(self.manifest.onnx_path, providers, self.options)
        except Exception as exc:
            rest = [p for p in providers if p not in _GPU_PROVIDERS]
            if rest and len(rest) < len(providers):
                log.warning("loading with %s failed (%s); falling back to %s", list(providers), exc, rest)
                session = self._factory(self.manifest.onnx_path, rest, self.options)
            else:
                raise RunnerError(f"cannot load {self.manifest.onnx_path}: {exc}") from exc
        active = session.get_providers()[0] if session.get_providers() else CPU_PROVIDER
        return session, active

    @property
    def provider(self) -> str:
        """The execution provider that really runs the model now."""
        return self._provider

    # ------------------------------------------------------------------ running

    def run(self, batch: Sequence[FloatArray]) -> list[ItemResult]:
        """Run 16 kHz mono float32 waveforms as one right-padded batch; blocking.

        Raises RunnerOutOfMemory when the batch does not fit, RunnerError for other model failures.
        """
        if self._closed:
            raise RunnerError("the model runner is closed")
        if not batch:
            return []
        lengths = np.array([len(w) for w in batch], dtype=np.int64)
        waveform = np.zeros((len(batch), max(1, int(lengths.max()))), dtype=np.float32)
        for i, w in enumerate(batch):
            waveform[i, : len(w)] = w
        feeds = {"waveform": waveform, "lengths": lengths}
        generation, session = self._acquire()
        provider = self._provider
        run_options = self._run_options(provider)
        timeout_s = self.options.run_timeout_s
        token = None
        if run_options is not None and timeout_s > 0:
            token = self._watchdog.arm(run_options, timeout_s)
        try:
            started = time.monotonic()
            try:
                outputs = session.run(self._output_list, feeds, run_options)
            except Exception as exc:
                if token is not None and self._watchdog.disarm(token):
                    raise self._timed_out(len(batch), provider, time.monotonic() - started) from exc
                return self._handle_failure(exc, generation, session, provider, batch)
            finally:
                if token is not None:
                    self._watchdog.disarm(token)
            run_s = time.monotonic() - started
            if self._gpu_failures:
                with self._lock:
                    self._gpu_failures = 0
        finally:
            self._release(generation, session)
        return self._slice(dict(zip(self._output_names, outputs, strict=True)), len(batch), started, run_s,
                           provider)

    def _run_options(self, provider: str) -> Any:
        """A fresh ``RunOptions`` when this run needs one (watchdog or arena shrinkage), else None."""
        shrink = self.options.arena_shrinkage and self.options.cpu_arena and provider == CPU_PROVIDER
        if self.options.run_timeout_s <= 0 and not shrink:
            return None
        import onnxruntime as ort

        run_options = ort.RunOptions()
        if shrink:
            # Free arena chunks this run no longer uses: RSS falls back to the weights after each run
            # instead of staying at the peak of the longest batch ever run.
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return run_options

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
        if provider not in _GPU_PROVIDERS:
            raise RunnerError(f"model failed on {provider}: {exc}") from exc
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
        raise RunnerError(f"model failed on {provider} ({failures} consecutive failure(s)): {exc}") from exc

    def _fall_back_locked(self, provider: str, exc: Exception) -> None:
        """Replace every session with a CPU one. Precondition: ``_lock`` is held."""
        log.error("%d consecutive failures on %s (last: %s); moving to %s",
                  self._gpu_failures, provider, exc, CPU_PROVIDER)
        self._generation += 1
        while True:  # discard old sessions still in the pool; those in use are dropped on release
            try:
                self._pool.get_nowait()
            except queue.Empty:
                break
        for _ in range(self.options.instances):
            session = self._factory(self.manifest.onnx_path, [CPU_PROVIDER], self.options)
            self._pool.put((self._generation, session))
        self._provider = CPU_PROVIDER
        self._gpu_failures = 0
        if self._on_provider_change is not None:
            self._on_provider_change(provider, CPU_PROVIDER, "runtime_failure")

    def _slice(self, out: dict[str, Any], n: int, started: float, run_s: float,
               provider: str) -> list[ItemResult]:
        frame_lengths = np.asarray(out["frame_lengths"]).astype(np.int64)
        results = []
        for i in range(n):
            frames = int(frame_lengths[i])
            has_head = "probs" in out
            frame_probs = out["frame_probs"][i, :frames] if has_head else None
            results.append(ItemResult(
                embedding=np.asarray(out["embedding"][i], dtype=np.float32),
                frame_features=np.asarray(out["frame_features"][i, :frames], dtype=np.float32),
                logits=np.asarray(out["logits"][i], dtype=np.float32) if has_head else None,
                probs=np.asarray(out["probs"][i], dtype=np.float32) if has_head else None,
                frame_probs=None if frame_probs is None else np.asarray(frame_probs, dtype=np.float32),
                batch_size=n,
                started_monotonic=started,
                inference_s=run_s,
                provider=provider,
            ))
        return results

    def close(self) -> None:
        """Release the sessions. Later ``run`` calls fail with RunnerError."""
        self._watchdog.close()
        with self._lock:
            self._closed = True
            self._generation += 1
            while True:
                try:
                    self._pool.get_nowait()
                except queue.Empty:
                    break


class _Watchdog:
    """One thread that sets ``run_options.terminate`` on every run still going at its deadline.

    ``arm`` costs a lock and a heap push; the thread is only woken when a new deadline is earlier than the
    one it sleeps towards (with one timeout for every run, only the first run after an idle spell).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[float, Any]] = {}  # token -> (deadline, run options) while running
        self._fired: set[int] = set()
        self._tokens = itertools.count()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, run_options: Any, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            token = next(self._tokens)
            self._armed[token] = (deadline, run_options)
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
                        entry[1].terminate = True
                self._wake_at = self._heap[0][0] if self._heap else math.inf
                self._cond.wait(None if not self._heap else self._wake_at - now)


_ORDER = ("logits", "probs", "frame_probs", "embedding", "frame_features", "frame_lengths")
