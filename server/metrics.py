"""Prometheus metrics with exactly the names of docs/DESIGN.md "Metrics", on a separate HTTP port.

``ServerMetrics`` owns a dedicated ``CollectorRegistry`` (several servers can live in one process, as in
tests) and implements the batcher's observer protocol. Observer methods run on the event loop and only
update in-memory counters, so they never block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from emotion2vec_serving.clients.wire import PROTOCOL_EMOTION_V1

__all__ = ["STREAM_ENDINGS", "GatedObserver", "ServerMetrics"]

#: The ``reason`` label of ``emotion_stream_endings_total``: how a stream (gRPC StreamRecognize or the
#: WebSocket /v1/stream) ended. completed: the client ended its audio and got the summary; client_closed:
#: the client cancelled or went away (or a shutdown cancelled the stream); idle_timeout: no audio for
#: --stream-idle-timeout-s; duration_limit: open longer than --stream-max-open-s; config_timeout: a
#: WebSocket sent no config within --stream-idle-timeout-s of its connect; error: any other failure (bad
#: config or audio, the audio limit, inference). A refused stream (no valid token, too many streams,
#: draining) never started: emotion_rejections_total counts it.
STREAM_ENDINGS = ("completed", "client_closed", "idle_timeout", "duration_limit", "config_timeout", "error")


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_WIDTH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_AUDIO_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600)
_SEGMENT_BUCKETS = (2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class ServerMetrics:
    """All server metrics; also the batcher observer. Costs are in samples at ``sample_rate_hz``."""

    def __init__(self, sample_rate_hz: int = 16000) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("emotion_requests", "calls finished, by method, status code and protocol",
                                ["rpc", "code", "protocol"], registry=r)
        self.request_duration = Histogram("emotion_request_duration_seconds",
                                          "server-side end-to-end call time", ["rpc", "protocol"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("emotion_queue_wait_seconds", "time requests wait in the batcher",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_duration = Histogram("emotion_inference_duration_seconds", "model run time per batch",
                                            buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("emotion_batch_size", "requests per batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.runner_widths = Histogram("emotion_runner_width",
                                      "intra-op threads of the session that ran each batch (adaptive runner: "
                                      "wide when it ran alone, narrow when batches ran side by side)",
                                      buckets=_WIDTH_BUCKETS, registry=r)
        self.runner_bound_waits = Counter(
            "emotion_runner_bound_waits",
            "batches that waited for the running ones to end: their padded audio beside them would pass "
            "--side-by-side-audio-s (adaptive runner; they then run wide)", registry=r)
        self.batch_padded_audio = Histogram("emotion_batch_padded_audio_seconds",
                                            "padded audio per batch (items x longest item)",
                                            buckets=_AUDIO_BUCKETS, registry=r)
        self.padded_audio = Counter("emotion_padded_audio_seconds",
                                    "audio run through the model including padding", registry=r)
        self.useful_audio = Counter("emotion_useful_audio_seconds",
                                    "audio run through the model excluding padding", registry=r)
        self.queue_requests = Gauge("emotion_queue_requests", "requests waiting in the batcher", registry=r)
        self.queue_audio = Gauge("emotion_queue_audio_seconds", "audio waiting in the batcher", registry=r)
        self.queue_drain = Gauge("emotion_queue_drain_seconds",
                                 "estimated time to drain the queue at the fitted throughput", registry=r)
        self.audio_seconds = Counter("emotion_audio_seconds", "audio processed, by method and protocol",
                                     ["rpc", "protocol"], registry=r)
        self.request_segments = Histogram("emotion_request_segments",
                                          "segments (model passes) per long-recording Recognize/Embed call "
                                          "(audio longer than --max-segment-s)", ["rpc", "protocol"],
                                          buckets=_SEGMENT_BUCKETS, registry=r)
        self.predictions = Counter("emotion_predictions", "utterance and segment predictions by top label",
                                   ["label"], registry=r)
        self.confidence = Histogram("emotion_prediction_confidence", "probability of the top label",
                                    buckets=_CONFIDENCE_BUCKETS, registry=r)
        self.execution_provider = Gauge("emotion_execution_provider",
                                        "1 for the ONNX Runtime execution provider in use", ["provider"],
                                        registry=r)
        self.provider_fallbacks = Counter("emotion_provider_fallbacks", "moves to another execution provider",
                                          ["from_provider", "to_provider", "reason"], registry=r)
        self.rejections = Counter("emotion_rejections", "requests refused before running", ["reason"],
                                  registry=r)
        self.batcher_dropped = Counter("emotion_batcher_dropped", "queued requests dropped before running",
                                       ["reason"], registry=r)
        self.run_timeouts = Counter("emotion_run_timeouts", "model runs terminated by the run watchdog",
                                    registry=r)
        self.batch_failures = Counter("emotion_batch_failures", "failed batch runs", ["retried"], registry=r)
        self.active_streams = Gauge("emotion_active_streams", "open StreamRecognize calls", registry=r)
        self.stream_endings = Counter("emotion_stream_endings",
                                      "streams ended, by protocol and how (STREAM_ENDINGS)",
                                      ["protocol", "reason"], registry=r)
        # The HTTP port's slow-client guard (server/http/connections.py).
        self.http_connections = Gauge("emotion_http_connections", "open HTTP connections", registry=r)
        self.http_connections_cut = Counter(
            "emotion_http_connections_cut", "HTTP connections closed or refused by the server's guards",
            ["reason"], registry=r)  # header_timeout, body_timeout, connection_limit
        self.accept_errors = Counter("emotion_accept_errors",
                                     "failed accept() on the HTTP port (out of file descriptors)", registry=r)
        self.model_info = Gauge("emotion_model_info", "the served model",
                                ["model", "version", "precision", "untrained"], registry=r)
        self._lock = threading.Lock()
        self._providers_seen: set[str] = set()
        self._http: Any = None
        self._http_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ server side

    def set_model(self, model: str, version: str, precision: str, untrained: bool) -> None:
        self.model_info.labels(model, version, precision, str(untrained).lower()).set(1)

    def set_provider(self, old: str | None, new: str, reason: str) -> None:
        """Record the active provider; thread-safe (the runner calls it from a worker thread)."""
        with self._lock:
            for provider in self._providers_seen:
                self.execution_provider.labels(provider).set(0)
            self._providers_seen.add(new)
            self.execution_provider.labels(new).set(1)
        if old is not None and old != new:
            self.provider_fallbacks.labels(old, new, reason).inc()

    def bind_drain_estimate(self, estimate: Callable[[], float]) -> None:
        self.queue_drain.set_function(estimate)

    def _child(self, metric: Any, *labels: str) -> Any:
        # ``labels()`` validates and hashes on every call (~5 us); requests reuse a handful of children.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, rpc: str, code: str, duration_s: float,
                        protocol: str = PROTOCOL_EMOTION_V1) -> None:
        self._child(self.requests, rpc, code, protocol).inc()
        self._child(self.request_duration, rpc, protocol).observe(duration_s)

    def observe_prediction(self, label: str, confidence: float) -> None:
        self._child(self.predictions, label).inc()
        self.confidence.observe(confidence)

    def observe_audio(self, rpc: str, seconds: float, protocol: str = PROTOCOL_EMOTION_V1) -> None:
        self._child(self.audio_seconds, rpc, protocol).inc(seconds)

    def observe_segments(self, rpc: str, segments: int, protocol: str = PROTOCOL_EMOTION_V1) -> None:
        """A long recording was cut into ``segments`` model passes."""
        self._child(self.request_segments, rpc, protocol).observe(segments)

    def observe_stream_end(self, protocol: str, reason: str) -> None:
        """One stream ended; ``reason`` is one of ``STREAM_ENDINGS``."""
        if reason not in STREAM_ENDINGS:
            raise ValueError(f"unknown stream ending {reason!r}")
        self._child(self.stream_endings, protocol, reason).inc()

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def http_connection_cut(self, reason: str) -> None:
        """An HTTP connection closed by a deadline or refused by the connection cap."""
        self._child(self.http_connections_cut, reason).inc()

    def accept_error(self) -> None:
        self.accept_errors.inc()

    def runner_width(self, threads: int) -> None:
        """The runner ran a batch on a session of ``threads`` intra-op threads (any thread may call)."""
        self.runner_widths.observe(threads)

    def runner_bound_wait(self) -> None:
        """A batch waited for the side-by-side bound (any thread may call)."""
        self.runner_bound_waits.inc()

    def run_timeout(self) -> None:
        """The runner's watchdog terminated a run; thread-safe (called from a batcher worker thread)."""
        self.run_timeouts.inc()

    # ------------------------------------------------------------------ batcher observer protocol

    def on_batch(self, size: int, padded_cost: int, useful_cost: int, run_s: float,
                 queue_waits_s: Sequence[float]) -> None:
        self.batch_size.observe(size)
        self.batch_padded_audio.observe(padded_cost / self.sample_rate_hz)
        self.padded_audio.inc(padded_cost / self.sample_rate_hz)
        self.useful_audio.inc(useful_cost / self.sample_rate_hz)
        self.inference_duration.observe(run_s)
        for wait in queue_waits_s:
            self.queue_wait.observe(wait)

    def on_reject(self, reason: str) -> None:
        """Not counted here: a refused submission fails its call, and the core counts that call's
        rejection reason once (``errors.classify`` owns the reasons), whichever protocol it came from."""

    def on_expire(self, n: int) -> None:
        self.batcher_dropped.labels("expired").inc(n)

    def on_cancel(self, n: int) -> None:
        self.batcher_dropped.labels("cancelled").inc(n)

    def on_batch_error(self, size: int, exc: BaseException, will_retry: bool) -> None:
        self.batch_failures.labels(str(will_retry).lower()).inc()

    def on_queue(self, requests: int, cost: int) -> None:
        self.queue_requests.set(requests)
        self.queue_audio.set(cost / self.sample_rate_hz)

    # ------------------------------------------------------------------ HTTP endpoint

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP server in a daemon thread; return the bound port (for ``port=0``)."""
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http, self._http_thread = httpd, thread
        return int(httpd.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint (in the background: the server notices within its 0.5 s poll)."""
        httpd, self._http, self._http_thread = self._http, None, None
        if httpd is not None:

            def shut_down() -> None:
                httpd.shutdown()
                httpd.server_close()

            threading.Thread(target=shut_down, name="metrics-shutdown", daemon=True).start()


class GatedObserver:
    """The batcher observer of a server: forwards to ``ServerMetrics`` only once ``enabled``.

    Warm-up batches run before the server reports SERVING; counting them would put synthetic requests
    into the batch, latency and audio histograms that dashboards read as traffic. The queue gauges are
    always forwarded (they describe the present, not a history).
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.enabled = False
        self.batches = 0  # every batch run, warm-up included (the heap trimmer's sign of activity)

    def on_batch(self, size: int, padded_cost: int, useful_cost: int, run_s: float,
                 queue_waits_s: Sequence[float]) -> None:
        self.batches += 1
        if self.enabled:
            self.metrics.on_batch(size, padded_cost, useful_cost, run_s, queue_waits_s)

    def on_reject(self, reason: str) -> None:
        if self.enabled:
            self.metrics.on_reject(reason)

    def on_expire(self, n: int) -> None:
        if self.enabled:
            self.metrics.on_expire(n)

    def on_cancel(self, n: int) -> None:
        if self.enabled:
            self.metrics.on_cancel(n)

    def on_batch_error(self, size: int, exc: BaseException, will_retry: bool) -> None:
        if self.enabled:
            self.metrics.on_batch_error(size, exc, will_retry)

    def on_queue(self, requests: int, cost: int) -> None:
        self.metrics.on_queue(requests, cost)
