"""Server settings: one frozen dataclass; every field is a command-line flag and an environment variable.

``--max-batch-size`` is also ``EMOTION_MAX_BATCH_SIZE``. Precedence: flag > environment > default.
Defaults are what measured best on a 2-core CPU machine (see ``benchmarks/``): one runner instance using
every core for intra-op parallelism, with the adaptive batcher deciding whether batching pays.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotion2vec_serving.batching.policy import BatchPolicy
from emotion2vec_serving.batching.registry import DECISIONS, DEFAULT_DECISION
from emotion2vec_serving.server import defaults
from emotion2vec_serving.server.runtime.buckets import LengthBuckets, parse_length_buckets
from emotion2vec_serving.server.runtime.engines import ENGINES
from emotion2vec_serving.server.runtime.engines.emulated_gpu import parse_emulated_gpu
from emotion2vec_serving.server.runtime.gpu import (
    GpuOptions,
    cuda_provider_options,
    gpu_wanted,
    resolve_gpu_mem_limit,
)
from emotion2vec_serving.server.runtime.providers import TENSORRT_PROVIDER
from emotion2vec_serving.server.runtime.widths import runner_concurrency

__all__ = ["BATCH_POLICIES", "ENV_PREFIX", "Settings", "SettingsError", "build_parser", "parse_settings"]

log = logging.getLogger(__name__)

ENV_PREFIX = "EMOTION_"
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
#: ``--batch-policy`` values: the names of the one registry of batch decision functions.
BATCH_POLICIES = tuple(DECISIONS)


#: The batching defaults, stated once in ``BatchPolicy`` (costs in samples at 16 kHz, the delay in seconds):
#: the batching settings below are these values in the settings' units (see ``Settings.to_batch_policy``).
_BATCH: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(BatchPolicy)}


class SettingsError(ValueError):
    """A setting has a value the server cannot use."""


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "emotion2vec-serving")


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told.

    Field ``foo_bar`` is flag ``--foo-bar`` and environment variable ``EMOTION_FOO_BAR``.
    """

    # --- network
    host: str = _opt("[::]", "address to listen on for gRPC")
    port: int = _opt(50051, "gRPC port (0 picks a free port)")
    metrics_port: int = _opt(9090, "Prometheus /metrics HTTP port (0 picks a free port, -1 disables)")
    metrics_host: str = _opt(
        "", "address of the /metrics listener (default: --host's). It has no TLS or tokens and exposes "
        "per-emotion prediction counts and the model's name and version: keep it on a trusted network"
    )
    http_port: int = _opt(
        8000, "HTTP port: Open Inference Protocol REST (/v2) and the web page (0 picks a free port, "
        "-1 disables); same TLS and tokens as the gRPC port"
    )
    max_message_bytes: int = _opt(defaults.MAX_MESSAGE_BYTES, "largest gRPC message accepted, in bytes")
    max_connection_age_s: float = _opt(
        10.0, "send GOAWAY on client connections after this many seconds (+-10 %%): clients open their next "
        "calls on a new connection (they rebalance; each reconnects about this often), while streams on an "
        "aged connection still finish. This is also what makes a drain safe: it closes the gRPC listener and "
        "waits up to 1.1 x this + 1 s for every connection's age GOAWAY, so no call is caught by the "
        "shutdown. 0 = never: a drain's GOAWAY is then gRPC's shutdown's, which cancels calls that cross it"
    )
    max_concurrent_streams: int = _opt(
        defaults.MAX_CONCURRENT_STREAMS, "StreamRecognize calls open at once; more are refused"
    )
    max_concurrent_rpcs: int = _opt(
        256, "gRPC calls in progress at once, health checks not counted (bounds memory under overload); "
        "more get RESOURCE_EXHAUSTED before their request is read (0 = unlimited)"
    )
    max_grpc_connections: int = _opt(
        0, "open gRPC connections at once (0 = a quarter of the file-descriptor limit, at most 1024); past "
        "it gRPC closes new connections at once (clients see UNAVAILABLE and may try another server; the "
        "HTTP port keeps its own cap and a reserve for liveness probes)"
    )
    # --- slow clients on the HTTP port (see server/http/connections.py)
    http_header_timeout_s: float = _opt(
        10.0, "an HTTP request line and headers must arrive within this many seconds of the connection "
        "opening (or of a keep-alive request's first byte), the TLS handshake too; else 408 and close"
    )
    http_body_timeout_s: float = _opt(
        60.0, "an HTTP request body must arrive whole within this many seconds of its headers (the "
        "largest body, --max-message-bytes, at 60 s needs ~4.5 Mbit/s); else 408 and close"
    )
    max_http_connections: int = _opt(
        0, "open HTTP connections at once (0 = a quarter of the file-descriptor limit, at most 1024); past "
        "it 8 more are kept for health probes (/v2/health/*, /v2/models/*/ready), beyond those a raw 503 "
        "with Retry-After and the connection closed"
    )
    # --- security (see server/auth.py)
    tls_cert_file: str = _opt("", "PEM server certificate; with --tls-key-file enables TLS")
    tls_key_file: str = _opt("", "PEM private key of the server certificate")
    tls_client_ca_file: str = _opt("", "PEM CA for client certificates: enables mutual TLS")
    auth_token_file: str = _opt(
        "", "file of accepted bearer tokens, one per line (re-read when it changes); tokens may also come "
        "from EMOTION_AUTH_TOKENS (comma-separated). With any token, calls need 'authorization: Bearer <t>'"
    )
    auth_exempt_reflection: bool = _opt(False, "allow server reflection without a token")
    cors_allow_origins: tuple[str, ...] = _opt(
        (), "web page and HTTP API: origins allowed to call from other sites' pages (CORS), comma-separated, "
        "e.g. https://app.example.com ('*' = any origin); default none (same-origin only)"
    )
    # --- model
    model: str = _opt(
        "demo",
        "'demo' (tiny untrained model, built once), a model repository directory (has manifest.json), "
        "a checkpoint directory or a model id (exported first; needs the 'export' extra)",
    )
    model_cache_dir: str = field(
        default_factory=_default_cache_dir,
        metadata={"help": "where built and exported model repositories are cached"},
    )
    require_labels: int = _opt(
        0, "refuse to start (exit 2) when the model enables fewer labels than this (the deploy Job sets 9: "
        "early emotion2vec+ snapshots enable only 5 of the 9 emotions); 0 = no requirement, an emotion2vec+ "
        "model with fewer than 9 is served with a warning"
    )
    providers: tuple[str, ...] = _opt(
        defaults.PROVIDERS,
        "ONNX Runtime execution providers in order of preference, comma-separated",
    )
    intra_op_threads: int = _opt(
        defaults.INTRA_OP_THREADS, "ONNX Runtime intra-op threads per runner instance (0 = CPU cores); "
        "with --runner-instances 0 the adaptive runner's whole thread budget"
    )
    runner_instances: int = _opt(
        defaults.RUNNER_INSTANCES, "model sessions run concurrently, each in its own thread: N >= 1 fixed "
        "instances of --intra-op-threads each (one copy of the weights each on ONNX Runtime). 0 = adaptive "
        "(ONNX Runtime on the CPU; elsewhere one instance): one pre-packed copy of the weights run as one "
        "wide session (every intra-op thread) when one batch is ready and as two narrow ones (half each) "
        "when several are; it needs about twice the model's size free in TMPDIR"
    )
    side_by_side_audio_s: float = _opt(
        defaults.SIDE_BY_SIDE_AUDIO_S, "adaptive runner: a batch runs beside another only while the padded "
        "audio running stays within this many seconds, else it waits for the running one (0 = no bound); "
        "batches side by side hold their activations at once: for the large model about 4 MB per audio "
        "second of 10 s clips exported with the front end and attention in chunks (the exporter's default), "
        "about 17 MB for an older export. The default, the default --max-batch-audio-s, keeps two batches "
        "from holding more than one full batch would"
    )
    graph_optimization_level: str = _opt(
        defaults.GRAPH_OPTIMIZATION_LEVEL, "ONNX Runtime graph optimisation: disable|basic|extended|all"
    )
    gpu_failures_before_fallback: int = _opt(
        defaults.GPU_FAILURES_BEFORE_FALLBACK,
        "consecutive GPU run failures after which the runner moves to a CPU session"
    )
    ort_allow_spinning: bool = _opt(
        defaults.ORT_ALLOW_SPINNING,
        "let ONNX Runtime's intra-op threads spin-wait for work after each run: on a few cores the "
        "spinning takes CPU the event loop needs (measured in benchmarks/README.md)"
    )
    ort_cpu_arena: bool = _opt(
        defaults.ORT_CPU_ARENA,
        "ONNX Runtime's CPU memory arena (allocations reused across runs; without it every tensor is "
        "malloc'ed and freed)"
    )
    ort_arena_shrinkage: bool = _opt(
        defaults.ORT_ARENA_SHRINKAGE,
        "give the CPU arena's free memory back after every run, so RSS does not stay at the peak of "
        "the longest batch ever run (ignored without --ort-cpu-arena)"
    )
    heap_mmap_threshold_kb: int = _opt(
        defaults.HEAP_MMAP_THRESHOLD_KB,
        "C heap blocks of at least this many KiB are mapped on their own and given back when freed "
        "(glibc M_MMAP_THRESHOLD; 0 = glibc's sliding threshold; MALLOC_MMAP_THRESHOLD_ in the "
        "environment wins): the batch buffers of one run do not stay in the heap for the next "
        "(server/runtime/heap.py)"
    )
    heap_trim_interval_s: float = _opt(
        defaults.HEAP_TRIM_INTERVAL_S,
        "give the C heap's free memory back to the system (glibc malloc_trim, off the event loop) this "
        "often while batches run, so RSS follows the load instead of drifting up after large requests "
        "(0 = never; server/runtime/heap.py)"
    )
    run_timeout_s: float = _opt(
        defaults.RUN_TIMEOUT_S,
        "watchdog: a model run (one batch) taking longer is terminated and its requests retried "
        "alone, so only the one that hangs fails (0 = no watchdog)"
    )
    # --- engine (issue 16)
    engine: str = _opt(
        defaults.ENGINE, "inference engine: onnxruntime, or openvino (CPU; needs the 'openvino' extra, "
        "pip install '.[openvino]'); both run the same model repository. emulated-gpu: FOR BENCHMARKS AND "
        "TESTS ONLY, runs no model and answers with fake outputs: an emulated GPU that sleeps per batch by "
        "a cost curve (see --emulated-gpu), with the GPU path's length buckets, warm-up, out-of-memory "
        "splits and fallback to real ONNX Runtime CPU sessions"
    )
    emulated_gpu: str = _opt(
        "", "--engine emulated-gpu only (benchmarks and tests): the emulated card's cost curve and memory, "
        "key=value pairs, e.g. launch_ms=2,ms_per_s=0.35,half_batch=4,first_shape_ms=20,weights_mb=1300,"
        "act_mb_per_s=16,attn_mb_per_s2=0.5,fail_after=0,fail_for_s=0 (those are the defaults; "
        "server/runtime/engines/emulated_gpu.py says what each means); its memory limit is "
        "--gpu-mem-limit-mb (0: 90 %% of an emulated 80 GiB card)"
    )
    inference_precision: str = _opt(
        defaults.INFERENCE_PRECISION,
        "OpenVINO inference precision: auto (bf16 only where the CPU has native bf16, else f32), "
        "f32 or bf16 (ignored by onnxruntime, whose precision is the model repository's)"
    )
    # --- GPU (issue 15; see server/runtime/gpu.py and server/runtime/buckets.py)
    gpu_device_id: int = _opt(0, "CUDA device the GPU providers run on")
    cudnn_conv_algo_search: str = _opt(
        "heuristic", "cuDNN convolution algorithm choice: heuristic (no per-shape benchmark), exhaustive "
        "(benchmarks every algorithm for every new input shape) or default"
    )
    gpu_mem_limit_mb: int = _opt(
        0, "most GPU memory the CUDA arena may take, in MiB (0 = 90 %% of the device, read through NVML at "
        "start; no limit when NVML is unavailable; -1 = no limit): a batch beyond it is split"
    )
    gpu_arena_extend_strategy: str = _opt(
        "same_as_requested", "how the CUDA arena grows: same_as_requested or next_power_of_two"
    )
    gpu_tf32: bool = _opt(
        False, "allow TF32 for fp32 MatMul/Conv on Ampere and later GPUs (faster, no longer the exact "
        "fp32 model: off by default)"
    )
    gpu_cooldown_s: float = _opt(
        defaults.GPU_COOLDOWN_S,
        "after moving from the GPU to CPU on device failures, load the GPU again after this long and "
        "return to it when a probe run passes (0 = stay on CPU)"
    )
    length_buckets: str = _opt(
        "auto", "pad inputs to a grid of lengths on GPUs (bounded set of shapes for cuDNN/TensorRT; results "
        "unchanged): auto (4 per octave up to --max-duration-s, GPU only), off, or edges in seconds (1,2,4,8)"
    )
    tensorrt_fp16: bool = _opt(
        False, "TensorRT only (when TensorrtExecutionProvider is listed): build fp16 engines"
    )
    # --- batching
    batch_policy: str = _opt(
        DEFAULT_DECISION, "how batches are formed: length_aware (this server's policy), fifo (pad to the "
        "longest, arrival order) or equal_shape (identical lengths only); the last two are baselines"
    )
    max_batch_size: int = _opt(_BATCH["max_batch_size"], "most requests in one batch")
    preferred_batch_sizes: tuple[int, ...] = _opt(
        _BATCH["preferred_batch_sizes"], "batch sizes to prefer, comma-separated (e.g. 4,8)"
    )
    max_batch_audio_s: float = _opt(
        _BATCH["max_batch_cost"] / defaults.SAMPLE_RATE_HZ,
        "padded audio per batch (items x longest), in seconds",
    )
    max_queue_delay_ms: float = _opt(
        _BATCH["max_queue_delay_s"] * 1000.0, "longest a request waits for a batch to fill"
    )
    max_queue_requests: int = _opt(_BATCH["max_queue_requests"], "queued requests before RESOURCE_EXHAUSTED")
    max_queue_audio_s: float = _opt(
        _BATCH["max_queue_cost"] / defaults.SAMPLE_RATE_HZ,
        "queued audio before RESOURCE_EXHAUSTED, in seconds",
    )
    adaptive_batching: bool = _opt(_BATCH["adaptive"], "fit a latency model and batch only when it pays")
    default_timeout_s: float = _opt(defaults.DEFAULT_TIMEOUT_S, "deadline applied to calls that carry none")
    # --- audio limits
    max_duration_s: float = _opt(
        defaults.MAX_DURATION_S,
        "longest single model pass, in seconds (same as --max-segment-s, its newer name): audio up to "
        "this long is one pass; longer Recognize/Embed audio is cut into segments of at most this "
        "(attention memory grows with the square of the length: one 60 s item needs ~2 GB more than the "
        "weights with the large model); also the longest StreamRecognize segment",
        aliases=("max_segment_s",),
    )
    max_audio_s: float = _opt(
        defaults.MAX_AUDIO_S,
        "longest Recognize/Embed audio accepted, in seconds (longer than --max-segment-s is segmented; "
        "0 = no limit but --max-message-bytes)",
    )
    min_duration_s: float = _opt(defaults.MIN_DURATION_S, "shortest audio accepted per request, in seconds")
    max_stream_duration_s: float = _opt(
        defaults.MAX_STREAM_DURATION_S, "longest StreamRecognize audio, in seconds"
    )
    stream_idle_timeout_s: float = _opt(
        defaults.STREAM_IDLE_TIMEOUT_S,
        "end a stream (gRPC StreamRecognize or the WebSocket /v1/stream) that receives no audio for this "
        "many seconds, with DEADLINE_EXCEEDED (WebSocket close 4504 'idle_timeout'); a WebSocket's config "
        "message must also arrive within this time of the connect, which pings do not extend"
    )
    stream_max_open_s: float = _opt(
        defaults.STREAM_MAX_OPEN_S,
        "wall-clock limit of one stream, in seconds from its start, however much audio it carries: "
        "DEADLINE_EXCEEDED (WebSocket close 4504 'duration_limit') beyond it. The default is "
        "--max-stream-duration-s sent in real time plus 25 %%; raise both together"
    )
    # --- lifecycle
    warmup: bool = _opt(True, "run the model across the batch length ranges before reporting SERVING")
    warmup_max_s: float = _opt(
        10.0, "longest warm-up input, in seconds (capped by --max-duration-s); bounds start-up time and the "
        "memory warm-up alone would take (longer inputs still run, just not before SERVING)"
    )
    drain_grace_s: float = _opt(
        25.0, "on SIGTERM, time allowed to finish accepted work before exiting (counted from the end of the "
        "connection-age GOAWAYs, up to 1.1 x --max-connection-age-s + 1 s after the readiness delay)"
    )
    drain_readiness_delay_s: float = _opt(
        1.0, "on SIGTERM, how long to keep serving after readiness turns NOT_SERVING before closing the "
        "listeners (GOAWAY), so load balancers and resolvers move new calls elsewhere first"
    )
    log_level: str = _opt("INFO", "logging level")

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.max_audio_s < 0:
            problems.append("max_audio_s must not be negative (0 = no limit)")
        elif 0 < self.max_audio_s < self.max_segment_s:
            problems.append("max_audio_s is shorter than max_segment_s")
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} out of range")
        if not -1 <= self.metrics_port <= 65535:
            problems.append(f"metrics port {self.metrics_port} out of range")
        if not -1 <= self.http_port <= 65535:
            problems.append(f"http port {self.http_port} out of range")
        if not self.providers:
            problems.append("providers must name at least one execution provider")
        if self.batch_policy not in BATCH_POLICIES:
            problems.append(f"batch policy {self.batch_policy!r} is not one of {', '.join(BATCH_POLICIES)}")
        if self.engine not in ENGINES:
            problems.append(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        try:
            parse_emulated_gpu(self.emulated_gpu)
        except ValueError as exc:
            problems.append(str(exc))
        if self.inference_precision not in ("auto", "f32", "bf16"):
            problems.append(f"inference precision {self.inference_precision!r} is not one of auto, f32, bf16")
        if self.cudnn_conv_algo_search not in ("heuristic", "exhaustive", "default"):
            problems.append(f"cudnn conv algo search {self.cudnn_conv_algo_search!r} is not one of "
                            "heuristic, exhaustive, default")
        if self.gpu_arena_extend_strategy not in ("same_as_requested", "next_power_of_two"):
            problems.append(f"gpu arena extend strategy {self.gpu_arena_extend_strategy!r} is not one of "
                            "same_as_requested, next_power_of_two")
        if self.gpu_mem_limit_mb < -1 or self.gpu_device_id < 0 or self.gpu_cooldown_s < 0:
            problems.append("gpu_mem_limit_mb must be >= -1, gpu_device_id and gpu_cooldown_s >= 0")
        try:
            parse_length_buckets(self.length_buckets, gpu=True, min_s=0.1, max_s=1.0)
        except ValueError as exc:
            problems.append(str(exc))
        if self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            problems.append(
                f"graph optimisation level {self.graph_optimization_level!r} is not one of "
                f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        if self.runner_instances < 0:
            problems.append("runner_instances must be >= 0 (0 = adaptive)")
        for name in ("max_batch_size", "max_queue_requests", "max_concurrent_streams",
                     "max_message_bytes", "gpu_failures_before_fallback"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.intra_op_threads < 0:
            problems.append("intra_op_threads must be >= 0")
        if self.require_labels < 0:
            problems.append("require_labels must be >= 0 (0 = no requirement)")
        for name in ("max_batch_audio_s", "max_queue_audio_s", "max_duration_s", "min_duration_s",
                     "max_stream_duration_s", "stream_idle_timeout_s", "stream_max_open_s",
                     "default_timeout_s", "warmup_max_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        for name in ("http_header_timeout_s", "http_body_timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        for name in ("max_http_connections", "max_grpc_connections"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative (0 = from the descriptor limit)")
        for name in ("max_queue_delay_ms", "drain_grace_s", "drain_readiness_delay_s", "max_connection_age_s",
                     "run_timeout_s", "heap_trim_interval_s", "heap_mmap_threshold_kb",
                     "side_by_side_audio_s",
                     "max_concurrent_rpcs"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if self.min_duration_s > self.max_duration_s:
            problems.append("min_duration_s exceeds max_duration_s")
        if problems:
            raise SettingsError("invalid settings: " + "; ".join(problems))

    def to_batch_policy(self, sample_rate_hz: int) -> BatchPolicy:
        """The batch policy of a server run with these settings; costs are samples at ``sample_rate_hz``."""
        return BatchPolicy(
            max_batch_size=self.max_batch_size,
            preferred_batch_sizes=self.preferred_batch_sizes,
            max_batch_cost=int(self.max_batch_audio_s * sample_rate_hz),
            max_queue_delay_s=self.max_queue_delay_ms / 1000.0,
            max_queue_requests=self.max_queue_requests,
            max_queue_cost=int(self.max_queue_audio_s * sample_rate_hz),
            adaptive=self.adaptive_batching,
        )

    @property
    def max_segment_s(self) -> float:
        """The longest single model pass (``--max-segment-s``, the same setting as ``--max-duration-s``)."""
        return self.max_duration_s

    @property
    def runner_concurrency(self) -> int:
        """The most batches the runner may run at once (adaptive: its narrow sessions)."""
        return runner_concurrency(self.runner_instances)

    @property
    def effective_intra_op_threads(self) -> int:
        """Threads per session: the configured number, or the usable CPU cores."""
        if self.intra_op_threads:
            return self.intra_op_threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)

    def gpu_options(self, model_tag: str) -> tuple[GpuOptions, LengthBuckets | None]:
        """The runner's GPU options and length buckets (``model_tag`` names the TensorRT caches).

        Nothing GPU-specific happens (no NVML query) unless a GPU provider is asked for.
        """
        emulated = self.engine == "emulated-gpu"
        wanted = gpu_wanted(self.engine, self.providers) or emulated
        buckets = parse_length_buckets(self.length_buckets, gpu=wanted,
                                       min_s=max(self.min_duration_s, 0.25), max_s=self.max_duration_s)
        if not wanted:
            return GpuOptions(), buckets
        if emulated:  # the emulated card's limit: the flag, or its own default (no NVML query)
            return GpuOptions(gpu_mem_limit_bytes=max(0, self.gpu_mem_limit_mb) * 1024 * 1024), buckets
        limit = resolve_gpu_mem_limit(self.gpu_mem_limit_mb, device_id=self.gpu_device_id)
        options = GpuOptions(
            device_id=self.gpu_device_id,
            cudnn_conv_algo_search=self.cudnn_conv_algo_search,
            gpu_mem_limit_bytes=limit,
            arena_extend_strategy=self.gpu_arena_extend_strategy,
            tf32=self.gpu_tf32,
            tensorrt_cache_dir=str(Path(self.model_cache_dir) / "tensorrt" / model_tag),
            tensorrt_fp16=self.tensorrt_fp16,
            tensorrt_profile_lengths=buckets.edges if buckets is not None else (),
            tensorrt_max_batch=self.max_batch_size,
        )
        if TENSORRT_PROVIDER in self.providers:
            try:  # TensorRT writes its engine and timing caches there
                Path(options.tensorrt_cache_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("cannot create the TensorRT cache directory %s: %s", options.tensorrt_cache_dir,
                            exc)
        log.info("GPU options: %s; length buckets: %s", cuda_provider_options(options), buckets)
        return options, buckets


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _convert(kind: str, text: str) -> Any:
    if kind == "bool":
        return _parse_bool(text)
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "tuple[str, ...]":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if kind == "tuple[int, ...]":
        return tuple(int(part) for part in text.split(",") if part.strip())
    return text


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    """The ``emotion-server`` argument parser; every option names its environment variable."""
    parser = argparse.ArgumentParser(
        prog="emotion-server",
        description="gRPC speech emotion recognition server (emotion2vec+ on ONNX Runtime). "
        f"Every option can also be set with an environment variable {ENV_PREFIX}<OPTION_IN_UPPER_SNAKE>; "
        "a flag wins over the environment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(Settings):
        kind = str(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        aliases = f.metadata.get("aliases", ())
        names = [_flag_name(f.name), *(_flag_name(a) for a in aliases)]
        help_text = f"{f.metadata['help']} [env {' or '.join(_env_name(n) for n in (f.name, *aliases))}]"
        if kind == "bool":
            parser.add_argument(
                _flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                help=help_text + f" (default: {_show(default)})",
            )
        else:
            parser.add_argument(
                *names, dest=f.name, default=None, metavar=f.name.upper(),
                help=help_text + f" (default: {_show(default)})",
            )
    parser.formatter_class = argparse.HelpFormatter  # defaults are already in the help text
    return parser


def metrics_address(settings: Settings) -> str:
    """Where /metrics listens: ``--metrics-host``, else ``--host``; a wildcard (``[::]``, ``0.0.0.0``, empty)
    listens on every IPv4 address as before (an IPv6 wildcard fails in pods without IPv6)."""
    host = (settings.metrics_host or settings.host).strip().strip("[]")
    return "0.0.0.0" if host in ("", "::", "0.0.0.0") else host


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from flags (``argv``) and the environment (``env``, default ``os.environ``).

    Raises SettingsError naming the offending flag or variable.
    """
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        kind = str(f.type)
        raw = getattr(args, f.name)
        source = _flag_name(f.name)
        for name in (f.name, *f.metadata.get("aliases", ())):
            if raw is None and _env_name(name) in env:
                raw, source = env[_env_name(name)], _env_name(name)
        if raw is None:
            continue
        if isinstance(raw, bool):
            values[f.name] = raw
            continue
        try:
            values[f.name] = _convert(kind, raw)
        except ValueError as exc:
            raise SettingsError(f"{source}={raw!r}: {exc}") from exc
    return Settings(**values)
