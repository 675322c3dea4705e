"""The runner contract: what an engine's session gives the runner, and what the runner gives its callers.

Below the runner (``server/runtime/engines/``): a ``SessionFactory`` builds a ``SessionLike`` from a model
path, a provider list and ``RunnerOptions``; each run gets a ``RunHandle`` the watchdog can terminate.
Above it (the batcher and ``server/calls/``): ``Runner.run`` returns one ``ItemResult`` per request, and a
failed batch raises a ``RunnerError`` (``RunnerOutOfMemory`` when a smaller batch may fit, ``RunnerTimeout``
when the watchdog cut the run off); ``split_on_error`` and ``is_out_of_memory`` are the batcher's predicates
over them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.server import defaults
from emotion2vec_serving.server.runtime.buckets import LengthBuckets
from emotion2vec_serving.server.runtime.gpu import GpuOptions

__all__ = [
    "FloatArray",
    "ItemResult",
    "RunHandle",
    "RunnerError",
    "RunnerOptions",
    "RunnerOutOfMemory",
    "RunnerTimeout",
    "SessionFactory",
    "SessionLike",
    "is_out_of_memory",
    "split_on_error",
]

FloatArray = npt.NDArray[np.float32]


class RunnerError(RuntimeError):
    """The model failed to run a batch."""


class SharedWeightsUnavailable(RunnerError):
    """The engine cannot give several sessions one copy of the weights here (the adaptive runner then runs
    one fixed instance)."""


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


def is_out_of_memory(exc: BaseException) -> bool:
    """The batcher's ``out_of_memory`` predicate: the batch did not fit (``RunnerOutOfMemory``)."""
    return isinstance(exc, RunnerOutOfMemory)


class RunHandle(Protocol):
    """One run's handle: ``terminate()`` (called by the watchdog from its own thread) stops the run."""

    def terminate(self) -> None: ...


class SessionLike(Protocol):
    """What the runner needs of an engine's session (``server/runtime/engines/``; tests wrap real sessions).

    Optional attributes: ``engine`` (str) and ``inference_precision`` (str | None, the number format the
    engine computes in when it differs from the graph's), read with ``getattr``.
    """

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_handle: Any = None) -> list[Any]: ...

    def get_providers(self) -> list[str]: ...

    def new_run_handle(self) -> RunHandle | None: ...


#: ``factory(model_path, providers, options) -> session``; raise if the providers cannot be loaded.
SessionFactory = Callable[[Path, Sequence[str], "RunnerOptions"], SessionLike]


@dataclass(frozen=True)
class RunnerOptions:
    """Session settings (taken from ``server.config.Settings``; defaults from ``server/defaults.py``)."""

    providers: tuple[str, ...] = defaults.PROVIDERS
    intra_op_threads: int = defaults.INTRA_OP_THREADS  # 0 = the engine picks (every core)
    instances: int = defaults.RUNNER_INSTANCES
    graph_optimization_level: str = defaults.GRAPH_OPTIMIZATION_LEVEL
    gpu_failures_before_fallback: int = defaults.GPU_FAILURES_BEFORE_FALLBACK
    run_timeout_s: float = defaults.RUN_TIMEOUT_S  # a run longer than this is terminated (0 = no watchdog)
    allow_spinning: bool = defaults.ORT_ALLOW_SPINNING  # intra-op threads spin-wait after a run
    cpu_arena: bool = defaults.ORT_CPU_ARENA  # ONNX Runtime's CPU memory arena
    arena_shrinkage: bool = defaults.ORT_ARENA_SHRINKAGE  # free the CPU arena's unused chunks after every run
    # --- GPU (issue 15)
    gpu: GpuOptions = field(default_factory=GpuOptions)  # CUDA / TensorRT options (runtime/gpu.py)
    gpu_cooldown_s: float = defaults.GPU_COOLDOWN_S  # after a fallback to CPU, probe the GPU again (0: never)
    length_buckets: LengthBuckets | None = None  # pad to these lengths while on a GPU (None = exact lengths)
    # --- engine (issue 16)
    engine: str = defaults.ENGINE  # which engine the session factory runs ("onnxruntime" | "openvino")
    inference_precision: str = defaults.INFERENCE_PRECISION  # OpenVINO: auto | f32 | bf16
    # --- adaptive widths (issue 24, server/runtime/widths.py)
    share_weights: bool = False  # ONNX Runtime on the CPU: one copy of the weights for a model's sessions
    # batches run side by side only while their padded audio stays within this, in seconds (0: no bound)
    side_by_side_audio_s: float = defaults.SIDE_BY_SIDE_AUDIO_S


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
    batch_id: int = 0  # the runner's number for the batch (traces: the inference span names its batch)
