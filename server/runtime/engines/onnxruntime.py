"""The ONNX Runtime engine: ``ort_session_factory``, and its sessions in the shape the runner uses.

The session factory builds an ``onnxruntime.InferenceSession`` from ``RunnerOptions``. Memory and CPU
settings, from measurements on a 2-core CPU (``benchmarks/README.md``): ``allow_spinning`` off by default,
because ONNX Runtime's intra-op threads otherwise spin after every run and take the CPU the event loop needs;
``arena_shrinkage`` gives the CPU arena's free chunks back after every run, so the process does not keep the
peak of the longest batch it ever ran. GPU providers get their options from ``server/runtime/gpu.py``.

A run handle wraps one ``onnxruntime.RunOptions``: the watchdog's ``terminate()`` sets its ``terminate``
flag, which ONNX Runtime checks between graph nodes (the run then raises and the session is free again).
The same RunOptions carries the CPU arena shrinkage request (``memory.enable_memory_arena_shrinkage``), so
that RSS falls back to the weights after each run instead of staying at the peak of the longest batch.

``onnxruntime`` itself is imported inside the functions that create sessions and run options, not at the
top: a server running another engine (``--engine openvino``) never loads ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emotion2vec_serving.server.runtime.contract import RunnerError, RunnerOptions, SessionLike
from emotion2vec_serving.server.runtime.gpu import disable_tf32_in_environment, provider_list
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, GPU_PROVIDERS

__all__ = ["OrtRunHandle", "OrtSession", "ort_session_factory"]


def ort_session_factory(model_path: Path, providers: Sequence[str], options: RunnerOptions) -> SessionLike:
    """Create a real ``onnxruntime.InferenceSession``."""
    import onnxruntime as ort  # lazy: loaded only when this engine creates a session (see the docstring)

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
    # The memory-pattern cache keeps a plan per distinct input shape and never frees it; with audio every
    # length is a new shape (measured: +298 MB RSS over 600 random 1-6 s requests on the tiny model, +23 MB
    # without it). The arena still reuses buffers.
    so.enable_mem_pattern = False
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    available = set(ort.get_available_providers())
    usable = [p for p in providers if p in available]
    if not usable:
        raise RunnerError(
            f"none of the providers {list(providers)} is available in this onnxruntime "
            f"(available: {sorted(available)})"
        )
    if any(p in GPU_PROVIDERS for p in usable):
        disable_tf32_in_environment(options.gpu)
    session = ort.InferenceSession(str(model_path), sess_options=so,
                                   providers=provider_list(usable, options.gpu))
    return OrtSession(session, arena_shrinkage=options.arena_shrinkage and options.cpu_arena)


class OrtRunHandle:
    """One run's ``RunOptions``; ``terminate()`` is safe from any thread."""

    __slots__ = ("run_options",)

    def __init__(self, run_options: Any) -> None:
        self.run_options = run_options

    def terminate(self) -> None:
        self.run_options.terminate = True

    @property
    def terminated(self) -> bool:
        return bool(self.run_options.terminate)


class OrtSession:
    """An ``onnxruntime.InferenceSession`` with run handles. ``precision`` is the model repository's."""

    engine = "onnxruntime"
    inference_precision: str | None = None  # the graph's own number format: the manifest says which

    def __init__(self, session: Any, *, arena_shrinkage: bool = False) -> None:
        self.session = session
        self._shrink_cpu = arena_shrinkage and session.get_providers()[:1] == [CPU_PROVIDER]

    def get_providers(self) -> list[str]:
        providers: list[str] = self.session.get_providers()
        return providers

    def new_run_handle(self) -> OrtRunHandle:
        import onnxruntime as ort  # lazy, as above

        run_options = ort.RunOptions()
        if self._shrink_cpu:
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return OrtRunHandle(run_options)

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_handle: Any = None) -> list[Any]:
        run_options = run_handle.run_options if isinstance(run_handle, OrtRunHandle) else run_handle
        outputs: list[Any] = self.session.run(output_names, input_feed, run_options)
        return outputs
