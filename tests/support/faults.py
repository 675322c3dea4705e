"""Fault injection for the runner: real ONNX Runtime sessions wrapped to fail, block or pretend a GPU.

The runner takes a session factory; these factories return the real CPU session wrapped, so every
successful run is still the real model. Blocking (a gate, a hang) honours the run handle's ``terminate()``
(the real session's handle, whose ``terminated`` reads ``RunOptions.terminate``) the way ONNX Runtime does:
the run raises ``Fail("... Exiting due to terminate flag being set to true.")``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail

from emotion2vec_serving.server.runtime.contract import RunnerOptions, SessionLike
from emotion2vec_serving.server.runtime.engines.onnxruntime import ort_session_factory
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, CUDA_PROVIDER

#: Decides, from one batch's feeds, whether to raise (return the exception) or run normally (None).
Fault = Callable[[dict[str, Any]], BaseException | None]


#: What ONNX Runtime raises when a run's ``RunOptions.terminate`` is set (checked with onnxruntime 1.32).
TERMINATED_MESSAGE = "[ONNXRuntimeError] : 1 : FAIL : Exiting due to terminate flag being set to true."


def wait_or_terminate(event: threading.Event, run_handle: Any, timeout_s: float) -> bool:
    """Wait for ``event`` like a blocked ONNX Runtime run: raise OrtFail as soon as it is terminated."""
    end = time.monotonic() + timeout_s
    while not event.wait(timeout=0.005):
        if run_handle is not None and run_handle.terminated:
            raise OrtFail(TERMINATED_MESSAGE)
        if time.monotonic() >= end:
            return False
    return True


class HangRuns:
    """Blocks chosen runs until ``release`` is set or the run is terminated: a hung model run (a
    deadlocked driver, a pathological input). ``which``: 1-based run counts (over every session) that
    hang; ``lengths``: every run whose batch holds an item of one of these lengths hangs."""

    def __init__(self, which: frozenset[int] = frozenset({1}), lengths: frozenset[int] = frozenset()) -> None:
        self.which = which
        self.lengths = lengths
        self.release = threading.Event()
        self.calls = 0
        self.terminated = 0
        self._lock = threading.Lock()

    def block(self, run_handle: Any, lengths: Sequence[int]) -> None:
        with self._lock:
            self.calls += 1
            hang = self.calls in self.which or bool(self.lengths.intersection(lengths))
        if hang:
            try:
                wait_or_terminate(self.release, run_handle, timeout_s=60)
            except OrtFail:
                with self._lock:
                    self.terminated += 1
                raise


class WrappedSession:
    """A real CPU session that records every batch and can block or fail on demand."""

    def __init__(self, real: SessionLike, providers: list[str], fault: Fault | None,
                 gate: threading.Event | None, log: list[list[int]], entered: list[list[int]],
                 hang: HangRuns | None = None) -> None:
        self._real = real
        self._providers = providers
        self._fault = fault
        self._gate = gate
        self._log = log
        self._entered = entered
        self._hang = hang

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def new_run_handle(self) -> Any:
        return self._real.new_run_handle()

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_handle: Any = None) -> list[Any]:
        lengths = [int(n) for n in np.asarray(input_feed["lengths"])]
        self._entered.append(lengths)
        if self._gate is not None and not wait_or_terminate(self._gate, run_handle, timeout_s=30):
            raise RuntimeError("test gate never opened")
        if self._hang is not None:
            self._hang.block(run_handle, lengths)
        self._log.append(lengths)
        if self._fault is not None:
            exc = self._fault(input_feed)
            if exc is not None:
                raise exc
        return self._real.run(output_names, input_feed, run_handle)


class FaultyFactory:
    """Session factory for ``Runner``/``EmotionServer``.

    - ``fault``: applied to every run (of the pretend-GPU sessions only, when ``fake_gpu``).
    - ``gate``: runs wait until it is set (to hold requests in the queue or in flight).
    - ``fake_gpu``: sessions created with CUDA in the provider list claim CUDA is active.
    - ``fail_gpu_load``: creating a session with CUDA in the list raises, as a broken CUDA install does.
    - ``hang``: runs block as ``HangRuns`` says (until released or terminated by the watchdog).
    ``entered`` records the item lengths of every batch that reached a session (before the gate),
    ``batches`` those that passed the gate.
    """

    def __init__(self, fault: Fault | None = None, gate: threading.Event | None = None, *,
                 fake_gpu: bool = False, fail_gpu_load: bool = False, hang: HangRuns | None = None) -> None:
        self.fault = fault
        self.gate = gate
        self.fake_gpu = fake_gpu
        self.fail_gpu_load = fail_gpu_load
        self.hang = hang
        self.batches: list[list[int]] = []
        self.entered: list[list[int]] = []
        self.created: list[list[str]] = []

    def __call__(self, model_path: Path, providers: Sequence[str], options: RunnerOptions) -> SessionLike:
        self.created.append(list(providers))
        wants_gpu = CUDA_PROVIDER in providers
        if wants_gpu and self.fail_gpu_load:
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version (injected)")
        real = ort_session_factory(model_path, [CPU_PROVIDER], options)
        if self.fake_gpu and wants_gpu:
            return WrappedSession(real, [CUDA_PROVIDER, CPU_PROVIDER], self.fault, self.gate, self.batches,
                                  self.entered, self.hang)
        fault = None if self.fake_gpu else self.fault
        return WrappedSession(real, [CPU_PROVIDER], fault, self.gate, self.batches, self.entered, self.hang)


def oom_above(max_padded_samples: int) -> Fault:
    """Out-of-memory whenever the padded batch (items x longest) exceeds the budget."""

    def fault(feeds: dict[str, Any]) -> BaseException | None:
        if int(np.prod(feeds["waveform"].shape)) > max_padded_samples:
            return RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer "
                "(injected)"
            )
        return None

    return fault


def poison_length(n_samples: int) -> Fault:
    """A generic model failure whenever a batch contains an item of exactly this length."""

    def fault(feeds: dict[str, Any]) -> BaseException | None:
        if n_samples in {int(n) for n in feeds["lengths"]}:
            return RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code (injected poison)")
        return None

    return fault


def always(message: str) -> Fault:
    def fault(feeds: dict[str, Any]) -> BaseException | None:
        return RuntimeError(message)

    return fault
