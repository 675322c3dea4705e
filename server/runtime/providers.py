"""Execution provider names, spelled as ONNX Runtime spells them.

The runner, the engines, the GPU options and the metrics all speak of "the provider that runs the model" in
these names (OpenVINO's CPU plugin reports itself as ``CPUExecutionProvider`` too). Standard library only.
"""

from __future__ import annotations

__all__ = ["CPU_PROVIDER", "CUDA_PROVIDER", "EMULATED_GPU_PROVIDER", "GPU_PROVIDERS", "ROCM_PROVIDER",
           "TENSORRT_PROVIDER"]

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
ROCM_PROVIDER = "ROCMExecutionProvider"
#: ``--engine emulated-gpu`` (benchmarks and tests only, runtime/engines/emulated_gpu.py): no model runs.
EMULATED_GPU_PROVIDER = "EmulatedGpuExecutionProvider"
#: Providers that run on a GPU: length buckets, device-failure probes and the fallback to CPU apply to them.
GPU_PROVIDERS = frozenset({CUDA_PROVIDER, TENSORRT_PROVIDER, ROCM_PROVIDER, EMULATED_GPU_PROVIDER})
