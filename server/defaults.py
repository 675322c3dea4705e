"""Default values, stated once: ``config.Settings`` (flags and environment) and the dataclasses the server
builds from it (``audio.AudioLimits``, ``runner.RunnerOptions``) take their defaults from here, so a
component built without Settings (tests, benchmarks, embedding code) behaves like the default server.
Standard library only; tests/server/test_defaults.py compares every pair.
"""

from __future__ import annotations

# --- audio limits (AudioLimits)
MAX_DURATION_S = 30.0  # longest single model pass / stream segment, in seconds
MIN_DURATION_S = 0.1  # shortest audio accepted per request, in seconds
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # largest request message, hence largest encoded file
SAMPLE_RATE_HZ = 16000  # what the model eats (the manifest states it for a given model)
# --- runner (RunnerOptions)
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
INTRA_OP_THREADS = 0  # 0 = every usable core (Settings.effective_intra_op_threads)
RUNNER_INSTANCES = 1
GRAPH_OPTIMIZATION_LEVEL = "all"
GPU_FAILURES_BEFORE_FALLBACK = 3
RUN_TIMEOUT_S = 120.0  # watchdog on one model run (0 = none)
ORT_ALLOW_SPINNING = False
ORT_CPU_ARENA = True
ORT_ARENA_SHRINKAGE = True
GPU_COOLDOWN_S = 300.0
ENGINE = "onnxruntime"
INFERENCE_PRECISION = "auto"
# --- per call (core.CoreLimits)
DEFAULT_TIMEOUT_S = 30.0
MAX_CONCURRENT_STREAMS = 64
MAX_STREAM_DURATION_S = 3600.0
