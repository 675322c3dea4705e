"""Inference engines below the runner: each is a session factory (contract: ``server/runtime/contract.py``).

``onnxruntime`` (default) runs every precision of a model repository (fp32, fp16, int8) through ONNX
Runtime. ``openvino`` compiles the same ``model.onnx`` with OpenVINO's CPU plugin, in f32 or bf16
(``inference_precision``); OpenVINO is an optional dependency (``pip install '.[openvino]'``) and is
imported only when this engine is chosen, never by a default server. ``emulated-gpu`` runs no model: an
EMULATED GPU for benchmarks and tests only (``engines/emulated_gpu.py``), which sleeps per batch by a cost
curve and falls back to real ONNX Runtime CPU sessions.

Both give the runner the same thing: ``session.run(output_names, feeds, run_handle)``,
``session.new_run_handle()`` (what the watchdog terminates), ``session.get_providers()`` and the
``engine`` / ``inference_precision`` they really run with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from typing import TypeVar

from emotion2vec_serving.server.runtime.contract import SessionFactory
from emotion2vec_serving.server.runtime.engines.emulated_gpu import EmulatedGpuFactory, parse_emulated_gpu
from emotion2vec_serving.server.runtime.engines.onnxruntime import ort_session_factory
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, EMULATED_GPU_PROVIDER

__all__ = ["ENGINES", "INFERENCE_PRECISIONS", "engine_providers", "equal_length_batches",
           "session_factory_for"]

P = TypeVar("P", bound=Sized)
R = TypeVar("R")

ENGINES = ("onnxruntime", "openvino", "emulated-gpu")
INFERENCE_PRECISIONS = ("auto", "f32", "bf16")


def session_factory_for(engine: str, emulated_gpu: str = "") -> SessionFactory:
    """The session factory of ``engine``; OpenVINO is imported here, and only for ``openvino``.

    ``emulated_gpu``: the emulated card's parameters (``--emulated-gpu``), for ``emulated-gpu`` only.
    """
    if engine == "onnxruntime":
        return ort_session_factory
    if engine == "emulated-gpu":
        return EmulatedGpuFactory(parse_emulated_gpu(emulated_gpu))
    if engine == "openvino":
        # Optional engine (``pip install '.[openvino]'``): its module imports OpenVINO, so it loads only here.
        from emotion2vec_serving.server.runtime.engines.openvino import OpenVinoFactory

        return OpenVinoFactory()
    raise ValueError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")


def engine_providers(engine: str, providers: tuple[str, ...]) -> tuple[str, ...]:
    """The runner's provider list for ``engine``: ONNX Runtime's from the settings; OpenVINO runs on the CPU;
    the emulated GPU first, with the CPU (real ONNX Runtime sessions) to fall back to."""
    if engine == "openvino":
        return (CPU_PROVIDER,)
    if engine == "emulated-gpu":
        return (EMULATED_GPU_PROVIDER, CPU_PROVIDER)
    return providers


def equal_length_batches(run: Callable[[Sequence[P]], list[R]]) -> Callable[[Sequence[P]], list[R]]:
    """Wrap a batch runner so that it never pads one item to another's length.

    For a model that is batch-exact only between items of the same length (the manifest's
    ``batch_exact_equal_length`` without ``batch_exact``: int8, whose activation rounding turns padding's
    last-bit differences into visible ones): the batch is run as one sub-batch per distinct length, in the
    batcher's worker thread, and the results are put back in order. The batcher's latency model sees the
    total time, so it learns what such a batch really costs.
    """

    def run_grouped(batch: Sequence[P]) -> list[R]:
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(len(item), []).append(i)
        if len(groups) <= 1:
            return run(batch)
        out: list[R | None] = [None] * len(batch)
        for indices in groups.values():
            for i, result in zip(indices, run([batch[i] for i in indices]), strict=True):
                out[i] = result
        return [r for r in out if r is not None]

    return run_grouped
