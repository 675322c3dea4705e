"""ONNX Runtime GPU provider options: CUDA and (opt-in) TensorRT, and the GPU memory limit.

CUDA (``cuda_provider_options``), each choice for a serving process whose input lengths vary:

- ``cudnn_conv_algo_search=HEURISTIC``: the default (EXHAUSTIVE) benchmarks every convolution algorithm for
  every new input shape, on every conv layer, and caches the answer per shape without bound. Heuristic
  search asks cuDNN for its best guess: no per-shape search, no growing cache. Length buckets
  (``server/runtime/buckets.py``) bound the number of shapes as well.
- ``cudnn_conv_use_max_workspace=1``: let cuDNN use the workspace its fastest algorithms need.
- ``do_copy_in_default_stream=1``: host/device copies on the compute stream (ONNX Runtime's safe default,
  stated so that nobody turns it off without measuring).
- ``arena_extend_strategy`` and ``gpu_mem_limit``: the CUDA arena grows by what is requested
  (``kSameAsRequested``; ``kNextPowerOfTwo`` overshoots by up to 2x) up to a limit, so that the process never
  takes the whole card; a batch that does not fit raises out-of-memory, the batcher splits it and learns the
  largest batch that fits per length (``batching/latency.py``).
- ``use_tf32=0`` (unless ``gpu_tf32``): on Ampere and later, TF32 computes fp32 MatMul/Conv with a 10-bit
  mantissa; the fp32 model is served as the exact one (batch-exact, FunASR parity), so TF32 is off. cuDNN's
  graph API (used for some convolutions since ONNX Runtime 1.20) ignores ``use_tf32``; the environment
  variable ``NVIDIA_TF32_OVERRIDE=0`` turns it off there too and is set by the session factory.

TensorRT is not in the default providers. Listing ``TensorrtExecutionProvider`` gets it configured, never
bare (a bare TensorRT provider builds an engine per new input shape, taking seconds to minutes each time):
optimisation profiles over the length buckets and batch sizes, engine and timing caches under the model
cache directory, fp16 only when asked (it breaks the fp32 model's exactness). It has not been measured on a
GPU in this project; the CUDA provider is the tested path.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from emotion2vec_serving.server.runtime.providers import CUDA_PROVIDER, GPU_PROVIDERS, TENSORRT_PROVIDER

__all__ = [
    "ARENA_EXTEND_STRATEGIES",
    "CONV_ALGO_SEARCH",
    "GpuOptions",
    "cuda_provider_options",
    "device_memory_bytes",
    "disable_tf32_in_environment",
    "gpu_wanted",
    "provider_list",
    "resolve_gpu_mem_limit",
    "tensorrt_provider_options",
]

log = logging.getLogger(__name__)

CONV_ALGO_SEARCH = {"heuristic": "HEURISTIC", "exhaustive": "EXHAUSTIVE", "default": "DEFAULT"}
ARENA_EXTEND_STRATEGIES = {"same_as_requested": "kSameAsRequested", "next_power_of_two": "kNextPowerOfTwo"}


@dataclass(frozen=True)
class GpuOptions:
    """GPU settings of a runner (from ``server.config.Settings``; defaults are the serving defaults)."""

    device_id: int = 0
    cudnn_conv_algo_search: str = "heuristic"
    gpu_mem_limit_bytes: int = 0  # 0 = no limit set (ONNX Runtime's default: the whole device)
    arena_extend_strategy: str = "same_as_requested"
    tf32: bool = False
    # TensorRT (only used when TensorrtExecutionProvider is listed)
    tensorrt_cache_dir: str = ""
    tensorrt_fp16: bool = False
    tensorrt_profile_lengths: tuple[int, ...] = ()  # samples: the length bucket edges
    tensorrt_max_batch: int = 8

    def __post_init__(self) -> None:
        if self.cudnn_conv_algo_search not in CONV_ALGO_SEARCH:
            raise ValueError(f"cudnn conv algo search must be one of {', '.join(CONV_ALGO_SEARCH)}")
        if self.arena_extend_strategy not in ARENA_EXTEND_STRATEGIES:
            raise ValueError(f"arena extend strategy must be one of {', '.join(ARENA_EXTEND_STRATEGIES)}")


def cuda_provider_options(options: GpuOptions) -> dict[str, str]:
    """The CUDA execution provider's options (ONNX Runtime takes strings)."""
    out = {
        "device_id": str(options.device_id),
        "cudnn_conv_algo_search": CONV_ALGO_SEARCH[options.cudnn_conv_algo_search],
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
        "arena_extend_strategy": ARENA_EXTEND_STRATEGIES[options.arena_extend_strategy],
        "use_tf32": "1" if options.tf32 else "0",
    }
    if options.gpu_mem_limit_bytes > 0:
        out["gpu_mem_limit"] = str(options.gpu_mem_limit_bytes)
    return out


def tensorrt_provider_options(options: GpuOptions) -> dict[str, str]:
    """TensorRT options: profiles over the length grid, caches in the model cache directory, fp16 if asked.

    One optimisation profile per group of bucket lengths (at most four), each from one item at the group's
    shortest length to ``tensorrt_max_batch`` items at its longest; TensorRT picks the profile that covers a
    batch's shape, so no engine is built at serving time once the caches are warm.
    """
    out = {
        "device_id": str(options.device_id),
        "trt_fp16_enable": "1" if options.tensorrt_fp16 else "0",
        "trt_engine_cache_enable": "1",
        "trt_timing_cache_enable": "1",
    }
    if options.tensorrt_cache_dir:
        out["trt_engine_cache_path"] = options.tensorrt_cache_dir
        out["trt_timing_cache_path"] = options.tensorrt_cache_dir
    if options.gpu_mem_limit_bytes > 0:
        out["trt_max_workspace_size"] = str(min(options.gpu_mem_limit_bytes // 4, 4 << 30))
    lengths = sorted(set(options.tensorrt_profile_lengths))
    if lengths:
        groups = _groups(lengths, 4)
        b = max(1, options.tensorrt_max_batch)
        out["trt_profile_min_shapes"] = ",".join(_shape(1, g[0]) for g in groups)
        out["trt_profile_opt_shapes"] = ",".join(_shape(b, g[len(g) // 2]) for g in groups)
        out["trt_profile_max_shapes"] = ",".join(_shape(b, g[-1]) for g in groups)
    return out


def _groups(values: list[int], count: int) -> list[list[int]]:
    size = -(-len(values) // count)
    return [values[i:i + size] for i in range(0, len(values), size)]


def _shape(batch: int, length: int) -> str:
    return f"waveform:{batch}x{length},lengths:{batch}"


def provider_list(providers: Sequence[str], options: GpuOptions) -> list[Any]:
    """``InferenceSession(providers=...)``: GPU providers with their options, others by name."""
    out: list[Any] = []
    for name in providers:
        if name == CUDA_PROVIDER:
            out.append((name, cuda_provider_options(options)))
        elif name == TENSORRT_PROVIDER:
            out.append((name, tensorrt_provider_options(options)))
        else:
            out.append(name)
    return out


def disable_tf32_in_environment(options: GpuOptions) -> None:
    """Set ``NVIDIA_TF32_OVERRIDE=0`` (cuBLAS/cuDNN read it when they start) unless TF32 is wanted.

    An operator's own value wins. Called before the first GPU session is created.
    """
    if not options.tf32:
        os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def device_memory_bytes(device_id: int = 0) -> int | None:
    """Total memory of GPU ``device_id`` through NVML (no CUDA context is created), or None.

    NVML numbers the devices the process can see (in a container: the ones given to it), like CUDA does
    unless ``CUDA_VISIBLE_DEVICES`` reorders them.
    """
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        if nvml.nvmlInit_v2() != 0:
            return None
        try:
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(device_id), ctypes.byref(handle)) != 0:
                return None
            memory = _NvmlMemory()
            if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
                return None
            return int(memory.total)
        finally:
            nvml.nvmlShutdown()
    except AttributeError:  # an NVML without these entry points
        return None


def resolve_gpu_mem_limit(limit_mb: int, fraction: float = 0.9, device_id: int = 0) -> int:
    """``--gpu-mem-limit-mb`` in bytes: > 0 as given; 0 = ``fraction`` of the device (NVML); -1 = no limit."""
    if limit_mb > 0:
        return limit_mb * 1024 * 1024
    if limit_mb < 0:
        return 0
    total = device_memory_bytes(device_id)
    if total is None:
        log.info("GPU memory size unknown (no NVML): the CUDA arena gets no limit")
        return 0
    return int(total * fraction)


def gpu_wanted(engine: str, providers: Sequence[str]) -> bool:
    """True when ONNX Runtime (``engine``) is asked for a GPU provider (the settings' ``providers``)."""
    return engine == "onnxruntime" and any(p in GPU_PROVIDERS for p in providers)
