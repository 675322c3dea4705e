"""Default values, stated once: ``config.Settings`` (flags and environment) and the dataclasses the server
builds from it (``audio.AudioLimits``, ``runner.RunnerOptions``, ``calls.limits.LongformSettings``) take
their defaults from here, so a component built without Settings (tests, benchmarks, embedding code)
behaves like the default server; so do the segmenters (``audio.segmenter``) and the segmentation a
stream gets when it leaves a setting at 0 (``calls.streams``). The batching defaults are stated once in
``batching.BatchPolicy`` (standard library only, it cannot import the server); ``Settings`` takes them
from there. Standard library only; tests/server/test_defaults.py compares every pair.
"""

from __future__ import annotations

import resource

# --- audio limits (AudioLimits)
MAX_DURATION_S = 30.0  # longest single model pass / stream segment, in seconds
MIN_DURATION_S = 0.1  # shortest audio accepted per request, in seconds
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # largest request message, hence largest encoded file
SAMPLE_RATE_HZ = 16000  # what the model eats (the manifest states it for a given model)
# --- runner (RunnerOptions)
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
INTRA_OP_THREADS = 0  # 0 = every usable core (Settings.effective_intra_op_threads)
# Adaptive widths (runtime/widths.py): on ONNX Runtime's CPU provider one pre-packed copy of the weights run
# wide or narrow per batch (0.97-1.02 x the best fixed configuration at 1, 2 and 4 clients, fp32 and int8,
# benchmarks/results/adaptive_cpu); one instance on a GPU, OpenVINO and the emulated GPU.
RUNNER_INSTANCES = 0
# The adaptive runner runs a batch beside others only while their padded audio stays within this (seconds;
# 0 = no bound): batches side by side hold their activations at once (runtime/widths.py). The default is the
# default batch's own bound (BatchPolicy.max_batch_cost, 60 s): batches side by side never hold more than one
# full batch would alone, so peak memory is the model's plus one full batch whatever the width (with the
# exporter's chunked front end and attention, ~3.5 MiB per padded audio second, large fp32).
SIDE_BY_SIDE_AUDIO_S = 60.0
GRAPH_OPTIMIZATION_LEVEL = "all"
GPU_FAILURES_BEFORE_FALLBACK = 3
RUN_TIMEOUT_S = 120.0  # watchdog on one model run (0 = none)
ORT_ALLOW_SPINNING = False
ORT_CPU_ARENA = True
ORT_ARENA_SHRINKAGE = True
HEAP_TRIM_INTERVAL_S = 10.0  # give glibc's free heap back this often while batches run (0 = never)
# Allocations of at least this many KiB are mmap'ed and unmapped when freed (glibc M_MMAP_THRESHOLD; 0 =
# glibc's sliding threshold, which climbs to 32 MiB after the first large free, so later batch-sized blocks
# stay in the heap): -73 to -95 MiB of peak PSS for the large fp32 model at 4 clients (runtime/heap.py).
HEAP_MMAP_THRESHOLD_KB = 1024
GPU_COOLDOWN_S = 300.0
ENGINE = "onnxruntime"
INFERENCE_PRECISION = "auto"
# --- long recordings (calls.limits.LongformSettings)
MAX_AUDIO_S = 7200.0  # longest Recognize/Embed recording (0 = no limit but the message size)
# --- segmentation (audio.segmenter, calls.streams, long recordings' energy end-pointing)
SEGMENT_MIN_S = 1.0  # energy end-pointing: shortest segment (a shorter voiced stretch joins the next)
SEGMENT_MIN_SILENCE_S = 0.3  # energy end-pointing: pause that ends a segment
SEGMENT_ENERGY_THRESHOLD_DB = -40.0  # energy end-pointing: frames below this are silence (dBFS)
STREAM_MAX_SEGMENT_S = 10.0  # longest stream segment (capped at MAX_DURATION_S); long recordings use that
FIXED_WINDOW_S = 2.0  # fixed segmentation: window length (the hop defaults to the window)
# --- per call (calls.limits.CoreLimits)
DEFAULT_TIMEOUT_S = 30.0
MAX_CONCURRENT_STREAMS = 64
MAX_STREAM_DURATION_S = 3600.0
#: A stream that receives no audio this long is ended (DEADLINE_EXCEEDED; WebSocket close 4504); a WebSocket's
#: config must arrive this soon after the connect.
STREAM_IDLE_TIMEOUT_S = 30.0
#: Wall-clock limit of one stream from its start: MAX_STREAM_DURATION_S of audio sent in real time, plus 25 %
#: for pauses (each shorter than the idle timeout) and network jitter.
STREAM_MAX_OPEN_S = MAX_STREAM_DURATION_S * 1.25
# --- connections (HTTP and gRPC ports): each port's default cap is a quarter of the descriptor limit
CONNECTIONS_FLOOR = 16
CONNECTIONS_CEILING = 1024


def connection_cap(soft_limit: int | None = None) -> int:
    """A port's default connection cap (``--max-http-connections 0``, ``--max-grpc-connections 0``): a
    quarter of the file-descriptor limit, at least 16 and at most 1024. The two ports take half; the rest is
    for the model files, threads, the metrics port and the decoders."""
    if soft_limit is None:
        try:
            soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (OSError, ValueError):
            return CONNECTIONS_CEILING
    if soft_limit < 0:  # RLIM_INFINITY
        return CONNECTIONS_CEILING
    return max(CONNECTIONS_FLOOR, min(CONNECTIONS_CEILING, soft_limit // 4))
