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

Shared weights (``RunnerOptions.share_weights``; the adaptive runner, ``server/runtime/widths.py``): every
session of one model file made with it gets the same weights, read once (``onnx_initializers.py``) into
``OrtValue``s and given to each session with ``SessionOptions.add_initializer``, so a wide and two narrow
sessions hold one copy. Pre-packing is off for them (``session.disable_prepacking``): ONNX Runtime's Python
API has no shared pre-packed weights container, and a per-session pre-packed copy of shared weights would
cost a copy per session again. The weights live as long as a session that uses them (a weak cache).

``onnxruntime`` itself is imported inside the functions that create sessions and run options, not at the
top: a server running another engine (``--engine openvino``) never loads ONNX Runtime.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emotion2vec_serving.server.runtime.contract import RunnerError, RunnerOptions, SessionLike
from emotion2vec_serving.server.runtime.gpu import disable_tf32_in_environment, provider_list
from emotion2vec_serving.server.runtime.onnx_initializers import read_initializers
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, GPU_PROVIDERS

__all__ = ["OrtRunHandle", "OrtSession", "SharedWeights", "ort_session_factory", "shared_weights"]


class SharedWeights:
    """One model file's weights as ``OrtValue``s, for every session that shares them.

    ``arrays`` own the memory; ``values`` are ``OrtValue``s over the same buffers (no copy).
    """

    def __init__(self, model_path: Path) -> None:
        import onnxruntime as ort  # lazy, as below

        self.arrays = read_initializers(model_path)
        self.values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in self.arrays.items()}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def add_to(self, so: Any) -> None:
        for name, value in self.values.items():
            so.add_initializer(name, value)


_shared_lock = threading.Lock()
_shared: weakref.WeakValueDictionary[tuple[str, int, int], SharedWeights] = weakref.WeakValueDictionary()


def shared_weights(model_path: Path) -> SharedWeights:
    """The weights of ``model_path`` shared by its live sessions (read again when the file changed)."""
    stat = Path(model_path).stat()
    key = (str(Path(model_path).resolve()), stat.st_mtime_ns, stat.st_size)
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            found = SharedWeights(Path(model_path))
            _shared[key] = found
        return found


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
    weights = None
    if options.share_weights and usable == [CPU_PROVIDER]:
        weights = shared_weights(model_path)
        weights.add_to(so)
        # A pre-packed copy per session would undo the sharing (see the module docstring).
        so.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(model_path), sess_options=so,
                                   providers=provider_list(usable, options.gpu))
    return OrtSession(session, arena_shrinkage=options.arena_shrinkage and options.cpu_arena,
                      weights=weights, threads=options.intra_op_threads)


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

    def __init__(self, session: Any, *, arena_shrinkage: bool = False, weights: SharedWeights | None = None,
                 threads: int = 0) -> None:
        self.session = session
        self.weights = weights  # kept alive as long as this session (None: the session's own copy)
        self.threads = threads  # intra-op threads (0: the engine's choice)
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
