"""OpenVINO engine: the model repository's ``model.onnx`` compiled by OpenVINO's CPU plugin.

Imported only when ``--engine openvino`` is chosen (``pip install '.[openvino]'``).

- Dynamic shapes: the ONNX graph's batch and time axes stay dynamic; the CPU plugin compiles it once and
  runs any [batch, samples] without a reshape per request.
- Precision: ``inference_precision`` f32 or bf16 (OpenVINO's ``INFERENCE_PRECISION_HINT``); ``auto`` picks
  bf16 only where the CPU has native bf16 (OpenVINO lists ``BF16`` in the CPU's
  ``OPTIMIZATION_CAPABILITIES``: avx512_bf16 or AMX). Asked for bf16 on a CPU without it, OpenVINO runs
  f32: the session reads the precision back from the compiled model and reports what really runs.
- Instances: one compiled model per factory, with ``NUM_STREAMS`` = the runner's instances and one infer
  request per runner session, so N instances share one copy of the weights (ONNX Runtime instances each
  hold their own). Whether two streams beat one on a given machine is measured in
  ``benchmarks/results/cpu_engines``.
- Watchdog: a run is ``start_async`` + ``wait``; the run handle's ``terminate()`` calls
  ``InferRequest.cancel()``, which makes the wait raise and frees the request for the next batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from emotion2vec_serving.server.runtime.contract import RunnerOptions
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER

__all__ = ["OpenVinoFactory", "OpenVinoRunHandle", "OpenVinoSession", "cpu_has_native_bf16",
           "resolve_inference_precision"]

log = logging.getLogger(__name__)

_REPORTED = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def cpu_has_native_bf16(core: Any = None) -> bool:
    """Whether OpenVINO's CPU plugin has native bf16 kernels on this CPU."""
    core = core or ov.Core()
    capabilities = [str(c).upper() for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    return "BF16" in capabilities


def resolve_inference_precision(requested: str, native_bf16: bool) -> str:
    """``auto|f32|bf16`` -> the hint to compile with (``auto`` = bf16 only with native bf16)."""
    if requested == "auto":
        return "bf16" if native_bf16 else "f32"
    if requested in ("f32", "bf16"):
        if requested == "bf16" and not native_bf16:
            log.warning("inference precision bf16 asked for, but this CPU has no native bf16: OpenVINO "
                        "runs f32 (reported as such)")
        return requested
    raise ValueError(f"inference precision {requested!r}: choose auto, f32 or bf16")


class OpenVinoRunHandle:
    """Lets the watchdog cancel the infer request a run is waiting on (``terminate()``, any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request: Any = None
        self._terminated = False

    @property
    def terminated(self) -> bool:
        return self._terminated

    def terminate(self) -> None:
        with self._lock:
            self._terminated = True
            request = self._request
        if request is not None:
            request.cancel()

    def _attach(self, request: Any) -> bool:
        with self._lock:
            if self._terminated:
                return False
            self._request = request
            return True

    def _detach(self) -> None:
        with self._lock:
            self._request = None


class OpenVinoSession:
    """One infer request of a compiled model; the runner's pool gives each to one thread at a time."""

    engine = "openvino"

    def __init__(self, compiled: Any, inference_precision: str) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._outputs = {name: compiled.output(name) for o in compiled.outputs for name in o.get_names()}
        self.inference_precision = inference_precision

    def get_providers(self) -> list[str]:
        return [CPU_PROVIDER]

    def new_run_handle(self) -> OpenVinoRunHandle:
        return OpenVinoRunHandle()

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_handle: Any = None) -> list[Any]:
        handle = run_handle if isinstance(run_handle, OpenVinoRunHandle) else None
        if handle is not None and not handle._attach(self._request):
            raise RuntimeError("OpenVINO run terminated before it started")
        try:
            self._request.start_async(input_feed, share_inputs=True)
            self._request.wait()
        except RuntimeError as exc:
            if handle is not None and handle.terminated:
                raise RuntimeError(f"OpenVINO run cancelled by the watchdog: {exc}") from exc
            raise
        finally:
            if handle is not None:
                handle._detach()
        if handle is not None and handle.terminated:
            raise RuntimeError("OpenVINO run cancelled by the watchdog")
        names = list(output_names) if output_names else list(self._outputs)
        # Copies: the request's output tensors are overwritten by its next run.
        return [np.array(self._request.get_tensor(self._outputs[name]).data, copy=True) for name in names]


class OpenVinoFactory:
    """Session factory: compiles the model once (per path) and hands out one infer request per call.

    ``options`` is the runner's ``RunnerOptions``: ``inference_precision``, ``intra_op_threads`` (per
    instance) and ``instances`` (OpenVINO streams) are used; the ONNX Runtime settings are ignored.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._compiled: dict[Path, tuple[Any, str]] = {}

    def __call__(self, model_path: Path, providers: Sequence[str], options: RunnerOptions) -> OpenVinoSession:
        if CPU_PROVIDER not in providers:
            raise RuntimeError(f"the openvino engine runs on the CPU only; providers {list(providers)} "
                               f"do not include {CPU_PROVIDER}")
        with self._lock:
            if model_path not in self._compiled:
                self._compiled[model_path] = self._compile(model_path, options)
            compiled, effective = self._compiled[model_path]
        return OpenVinoSession(compiled, effective)

    @staticmethod
    def _compile(model_path: Path, options: RunnerOptions) -> tuple[Any, str]:
        core = ov.Core()
        hint = resolve_inference_precision(options.inference_precision, cpu_has_native_bf16(core))
        streams = max(1, int(options.instances))
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "NUM_STREAMS": streams,
            # 0 threads: OpenVINO picks (every core), as ONNX Runtime does with 0.
            "INFERENCE_NUM_THREADS": max(0, int(options.intra_op_threads)) * streams,
            # The process has other busy threads (event loop, decoding): pinning would fight them.
            "ENABLE_CPU_PINNING": False,
        }
        compiled = core.compile_model(str(model_path), "CPU", config)
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
        name = got.get_type_name() if hasattr(got, "get_type_name") else str(got)
        effective = _REPORTED.get(name, name)
        log.info("OpenVINO compiled %s: inference precision %s (asked %s), %d stream(s), %d thread(s)",
                 model_path, effective, hint, streams, config["INFERENCE_NUM_THREADS"])
        return compiled, effective
