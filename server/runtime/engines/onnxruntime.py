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

Outputs are copied out of ONNX Runtime's memory as the run returns (``OrtSession.run``). ONNX Runtime 1.32's
``run`` returns numpy arrays that alias the output tensors (their ``base`` holds the OrtValue), allocated in
the session's CPU arena; the runner hands views of them to the calls, which hold them until their answers are
sent. An arena region with a chunk still in use is not freed by the shrink at the end of a run, and the shrink
happens only then, so outputs held across other runs' ends pinned regions the arena kept growing beside
(kNextPowerOfTwo): after a 10-minute open-loop run (large fp32, adaptive) the idle server held seven 16 MiB
and three 8 MiB regions more than at the start, PSS 1,496 MiB against 1,332, and the run peaked 200-300 MiB
above its start. Copies live in numpy's own memory (large ones mapped and unmapped by the C heap); copying a
10.7 s clip's frame features (2.2 MB) took 0.05 ms, four clips' (8.9 MB) 0.25 ms, against a run of ~2 s.

Shared weights (``RunnerOptions.share_weights``; the adaptive runner, ``server/runtime/widths.py``): every
session of one model file made with it maps one pre-packed copy of the weights. ``prepacked_model`` lets
ONNX Runtime optimise the model once and save the result, its pre-packed weights included
(``session.save_external_prepacked_constant_initializers``), as an ONNX file with one external data file in a
private temporary folder; every shared session then loads that file with graph optimisation off, and ONNX
Runtime memory-maps the data file instead of copying it, so the sessions share its pages (one physical copy,
pre-packed: measured on the large fp32 model, a wide and a narrow session: PSS 1,381 MiB against 1,246 for
one plain session, the same run time, the same answers bit for bit). The saved file is built on this machine
(ONNX Runtime's layout transformations and packed formats depend on the CPU), lives as long as a session
that uses it (a weak cache), and is deleted with it or at exit; it takes about the model's size twice on
disk (``TMPDIR``), for the original and the packed weights.

Two ways that do not work, measured offline on the large model (one short script, not a committed
benchmark): ``add_initializer`` over one set of arrays shares the weights but turns pre-packing off (ONNX
Runtime's Python API has no shared pre-packed weights container): 10 % slower on a 3.75 s clip; and the
project's reader of those arrays skipped external data (the large fp32 model), so each session then mapped
the file on its own, unpacked. ``add_external_initializers_from_files_in_memory`` copies the buffers into
each session.

Resident set size counts a page once per mapping, so a process with the wide and the narrow session reports
the mapped weights twice in ``VmRSS``; the proportional set size (``Pss`` in ``/proc/PID/smaps_rollup``)
and the container's memory (cgroup: a page-cache page is charged once) count them once.

``onnxruntime`` itself is imported inside the functions that create sessions and run options, not at the
top: a server running another engine (``--engine openvino``) never loads ONNX Runtime.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emotion2vec_serving.server.runtime.contract import (
    RunnerError,
    RunnerOptions,
    SessionLike,
    SharedWeightsUnavailable,
)
from emotion2vec_serving.server.runtime.gpu import disable_tf32_in_environment, provider_list
from emotion2vec_serving.server.runtime.heap import trim_heap
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, GPU_PROVIDERS

__all__ = ["OrtRunHandle", "OrtSession", "PrepackedModel", "ort_session_factory", "prepacked_model"]


class PrepackedModel:
    """``model_path`` optimised once, pre-packed weights included, saved for sessions to memory-map."""

    def __init__(self, model_path: Path, graph_optimization_level: Any) -> None:
        import onnxruntime as ort  # lazy, as below

        try:
            self.folder = Path(tempfile.mkdtemp(prefix="emotion2vec-ort-"))
        except OSError as exc:
            raise SharedWeightsUnavailable(f"no folder for the pre-packed model in TMPDIR: {exc}") from exc
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
        self.path = self.folder / "model.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3  # its warning (the saved file suits this machine only) is what we want
        so.graph_optimization_level = graph_optimization_level
        so.optimized_model_filepath = str(self.path)
        for key, value in (("session.optimized_model_external_initializers_file_name", "model.onnx.data"),
                           ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
                           ("session.save_external_prepacked_constant_initializers", "1")):
            so.add_session_config_entry(key, value)
        try:
            ort.InferenceSession(str(model_path), sess_options=so, providers=[CPU_PROVIDER])
        except Exception as exc:
            self._cleanup()
            raise SharedWeightsUnavailable(f"cannot save the pre-packed model in {self.folder.parent} "
                                           f"(about twice the model's size is needed): {exc}") from exc
        trim_heap()  # the saving session's own copy of the weights is gone


_shared_lock = threading.Lock()
_Key = tuple[str, int, int, str]
_shared: weakref.WeakValueDictionary[_Key, PrepackedModel] = weakref.WeakValueDictionary()


def prepacked_model(model_path: Path, level: str) -> PrepackedModel:
    """The pre-packed copy of ``model_path`` its live sessions share (made again when the file changed)."""
    import onnxruntime as ort  # lazy, as below

    stat = Path(model_path).stat()
    key = (str(Path(model_path).resolve()), stat.st_mtime_ns, stat.st_size, level)
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            found = PrepackedModel(Path(model_path), _levels(ort)[level])
            _shared[key] = found
        return found


def _levels(ort: Any) -> dict[str, Any]:
    return {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }


def ort_session_factory(model_path: Path, providers: Sequence[str], options: RunnerOptions) -> SessionLike:
    """Create a real ``onnxruntime.InferenceSession``."""
    import onnxruntime as ort  # lazy: loaded only when this engine creates a session (see the docstring)

    levels = _levels(ort)
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
        # Already optimised and pre-packed: this session maps the shared copy (see the module docstring).
        weights = prepacked_model(model_path, options.graph_optimization_level)
        model_path = weights.path
        so.graph_optimization_level = levels["disable"]
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

    def __init__(self, session: Any, *, arena_shrinkage: bool = False, weights: PrepackedModel | None = None,
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
        # Out of the arena at once: an output held by a call pins its arena region (module docstring).
        return [np.array(out, copy=True) if isinstance(out, np.ndarray) and not out.flags.owndata else out
                for out in outputs]
