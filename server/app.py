"""Wiring and lifecycle: runner -> batcher -> servicer -> grpc.aio server, with metrics and health.

Start-up: load the model (reporting the provider really active), start the batcher, bind the port with
health NOT_SERVING, warm the model up across the batch length ranges, then report SERVING.

Shutdown (SIGTERM), in this order (issue 14): readiness NOT_SERVING on every protocol while the server keeps
serving for ``drain_readiness_delay_s`` (load balancers and resolvers move new work elsewhere) -> no new
gRPC connections (the listener closes; server/grpc/listeners.py), and each open connection gets its
connection-age GOAWAY while the server still serves, so its client opens the next calls elsewhere and a call
that crosses the GOAWAY is served, not lost (up to 1.1 x ``max_connection_age_s`` + 1 s, sooner when no
connection is left) -> ``server.stop(grace)``: GOAWAY to what is left (connections carrying streams) and the
HTTP listener closes -> every call already accepted (counted by ``RpcAdmission``) and the batcher finish
within ``drain_grace_s`` -> what is left are health ``Watch`` streams, which never end by themselves: they
are cancelled -> close the runner. No accepted call is refused or lost; calls still running when the grace
is spent are cancelled. This is the default (the age defaults to 10 s: a GOAWAY cannot be sent at drain time
only, server/grpc/listeners.py says why). With ``max_connection_age_s`` 0 the drain skips the age phase:
its GOAWAY is ``server.stop``'s own, and gRPC core cancels the calls that cross it (CANCELLED for a call the
server never saw; grpc/grpc#41785).

Connection age: connections are closed after ``max_connection_age_s`` (GOAWAY, so clients rebalance) with a
grace of ``stream_max_open_s`` (a stream's wall-clock bound) + ``drain_grace_s``: a stream accepted on an
old connection always finishes. The trade-off: a connection carrying a long stream lives on (for that stream
only; new calls go to a new connection) up to the longest stream allowed.
A second SIGTERM (or SIGINT), a second or more after the first, exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from emotion.v1 import emotion_pb2, emotion_pb2_grpc
from grpc_reflection.v1alpha import reflection

from emotion2vec_serving.batching import DECISIONS, DecideFn, DynamicBatcher
from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server import tracing
from emotion2vec_serving.server.auth import OIP_PROBES, BearerAuth, TokenStore
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.limits import CoreLimits
from emotion2vec_serving.server.config import Settings, metrics_address
from emotion2vec_serving.server.defaults import connection_cap
from emotion2vec_serving.server.grpc import listeners
from emotion2vec_serving.server.grpc import oip as oip_grpc
from emotion2vec_serving.server.grpc.admission import RpcAdmission
from emotion2vec_serving.server.grpc.auth import TokenAuthInterceptor
from emotion2vec_serving.server.grpc.credentials import server_credentials
from emotion2vec_serving.server.grpc.emotion_v1 import EmotionService
from emotion2vec_serving.server.grpc.health import SERVICE_NAME, Health
from emotion2vec_serving.server.http.app import HttpFrontEnd
from emotion2vec_serving.server.metrics import GatedObserver, ServerMetrics
from emotion2vec_serving.server.runtime.contract import (
    RunnerOptions,
    SessionFactory,
    is_out_of_memory,
    split_on_error,
)
from emotion2vec_serving.server.runtime.engines import (
    engine_providers,
    equal_length_batches,
    session_factory_for,
)
from emotion2vec_serving.server.runtime.heap import HeapTrimmer, set_mmap_threshold
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER
from emotion2vec_serving.server.runtime.runner import Runner

__all__ = ["BATCH_DECISIONS", "EmotionServer", "run_server", "warmup_durations"]

log = logging.getLogger(__name__)

#: ``--batch-policy`` -> the batcher's decision function: the one registry, ``batching.DECISIONS``.
BATCH_DECISIONS: dict[str, DecideFn] = DECISIONS
#: A second SIGTERM/SIGINT at least this long after the first forces an immediate exit.
_DOUBLE_SIGNAL_S = 1.0
#: After GOAWAY, the time for calls gRPC accepted just before it to reach the admission count.
_ACCEPT_SETTLE_S = 0.05
# How often a drain looks (channelz) for connections still open while their age GOAWAYs come.
_CONNECTION_POLL_S = 0.1


def warmup_durations(min_s: float, max_s: float) -> list[float]:
    """Durations that cover the length range geometrically: min, 1, 2, 4, ... up to max (inclusive)."""
    out = [min_s]
    d = 1.0
    while d < max_s:
        if d > min_s:
            out.append(d)
        d *= 2
    out.append(max_s)
    return sorted(set(out))


def batching_caveat(precision: str, max_batch_size: int, *, batch_exact: bool | None = None) -> str | None:
    """Why batching may change answers with this model, or None when batched results are exact.

    The legacy int8 (``int8_dynamic``: per-tensor dynamic quantisation) picks its activation scale per batch,
    so an item's scores depend on its batch mates (measured up to ~1e-2 on probabilities); fp32, fp16 and the
    row-wise int8 the exporter now builds (manifest ``batch_exact: true``) are batch-exact.
    """
    if batch_exact:
        return None
    if precision == "int8" and max_batch_size > 1:
        return (
            f"int8 model with --max-batch-size {max_batch_size}: int8 activation scales are chosen per "
            "batch, so a request's scores can differ slightly (~1e-2) with its batch mates; use "
            "--max-batch-size 1 where per-request reproducibility matters (on CPUs batching rarely pays)"
        )
    return None


class EmotionServer:
    """One running server. ``await start()``, then ``await stop()`` (or ``run_server`` for signals)."""

    def __init__(self, settings: Settings, manifest: ModelManifest, *,
                 session_factory: SessionFactory | None = None) -> None:
        self.settings = settings
        self.manifest = manifest
        self.metrics = ServerMetrics(manifest.sample_rate_hz)
        # Batches are counted only from SERVING on: warm-up batches are not traffic.
        self._observer = GatedObserver(self.metrics)
        self.health = Health()
        self._session_factory = session_factory
        self._decode_executor = ThreadPoolExecutor(
            max_workers=max(2, settings.effective_intra_op_threads), thread_name_prefix="decode"
        )
        self.runner: Runner | None = None
        self.batcher: DynamicBatcher[Any, Any] | None = None
        self._heap_trimmer: HeapTrimmer | None = None
        self.core: EmotionCore | None = None
        self.service: EmotionService | None = None
        self.server: grpc.aio.Server | None = None
        self.admission: RpcAdmission | None = None  # the gRPC calls in progress (health exempt) and their cap
        self.port = 0
        self.metrics_port: int | None = None
        self.http: HttpFrontEnd | None = None  # the HTTP listener (OIP REST, web page); None: disabled
        self.http_port: int | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self.tracing: tracing.Tracing | None = None  # OpenTelemetry traces, when the OTEL_* variables ask

    async def start(self) -> None:
        s = self.settings
        m = self.manifest
        if s.metrics_port >= 0:
            host = metrics_address(s)
            self.metrics_port = self.metrics.serve(s.metrics_port, host)
            log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host,
                     self.metrics_port)
        self.tracing = tracing.from_env()  # None unless the OTEL_* variables ask (server/tracing.py)
        tracing.install(self.tracing)
        gpu_options, buckets = s.gpu_options(f"{m.model_name}-{m.model_version}-{m.precision}")
        options = RunnerOptions(
            # OpenVINO runs on the CPU, the emulated GPU first; --providers is for ONNX Runtime.
            providers=engine_providers(s.engine, s.providers),
            engine=s.engine, inference_precision=s.inference_precision,
            intra_op_threads=s.effective_intra_op_threads,
            instances=s.runner_instances, side_by_side_audio_s=s.side_by_side_audio_s,
            graph_optimization_level=s.graph_optimization_level,
            gpu_failures_before_fallback=s.gpu_failures_before_fallback,
            run_timeout_s=s.run_timeout_s,
            allow_spinning=s.ort_allow_spinning,
            cpu_arena=s.ort_cpu_arena,
            arena_shrinkage=s.ort_arena_shrinkage,
            gpu=gpu_options, length_buckets=buckets, gpu_cooldown_s=s.gpu_cooldown_s,
        )
        if set_mmap_threshold(s.heap_mmap_threshold_kb):  # before the model's buffers exist
            log.info("C heap: blocks of %d KiB or more are mapped and given back when freed",
                     s.heap_mmap_threshold_kb)
        loop = asyncio.get_running_loop()
        # Loading a large model takes seconds: keep the event loop free meanwhile.
        self.runner = await loop.run_in_executor(None, lambda: Runner(
            m, options,
            session_factory=self._session_factory or session_factory_for(s.engine, s.emulated_gpu),
            on_provider_change=self.metrics.set_provider,
            on_run_timeout=self.metrics.run_timeout,
            on_batch=None if self.tracing is None else self.tracing.on_batch,
            on_width=self.metrics.runner_width,
            on_bound_wait=self.metrics.runner_bound_wait,
        ))
        # The precision really used: OpenVINO may compute an fp32 repository in bf16.
        self.metrics.set_model(m.model_name, m.model_version, self.runner.precision, m.untrained)
        caveat = batching_caveat(m.precision, s.max_batch_size,
                                 batch_exact=m.batch_exact or m.batch_exact_equal_length)
        if caveat is not None:
            log.warning(caveat)
        rate = m.sample_rate_hz
        policy = s.to_batch_policy(rate)
        run_batch: Any = self.runner.run
        if not m.batch_exact and m.batch_exact_equal_length:
            # int8: exact only without padding between items; batch equal lengths only (DESIGN.md, engines).
            run_batch = equal_length_batches(run_batch)
            log.info("%s model: batches hold one length each (padding would change its answers)", m.precision)
        # Adaptive widths: as many workers as narrow sessions; the runner runs wide only on an empty queue.
        self.batcher = DynamicBatcher(run_batch, policy, instances=self.runner.concurrency,
                                      observer=self._observer, split_on_error=split_on_error,
                                      out_of_memory=is_out_of_memory,
                                      decide=BATCH_DECISIONS[s.batch_policy])
        await self.batcher.start()
        batcher = self.batcher
        self.runner.set_queue_probe(lambda: batcher.queued_requests)
        # The core's estimate also counts segments of long recordings not yet handed to the batcher.
        self.metrics.bind_drain_estimate(
            lambda: self.core.estimated_drain_s() if self.core is not None
            else float(batcher.estimated_drain_s)
        )
        runner = self.runner
        batched = s.max_batch_size > 1

        def batch_bound() -> float | None:
            # The exporter measured on ONNX Runtime's CPU provider: elsewhere the bound is not known.
            if runner.engine != "onnxruntime" or runner.provider != CPU_PROVIDER:
                return 0.0 if not batched else None
            return m.batch_bound(runner.thread_counts, batched=batched)

        # The protocol-free core; every front end below is an adapter over it.
        self.core = EmotionCore(
            m, self.batcher, self.metrics, CoreLimits.from_settings(s, rate), self._decode_executor,
            provider=lambda: runner.provider, engine=runner.engine,
            cost_of=runner.cost,  # the padded length the runner really runs (length buckets on GPUs)
            precision=runner.precision,  # what the engine really runs, not only what the file holds
            batch_bound=batch_bound,  # how far batch mates can move an answer, as served (GetModelInfo)
        )
        self.service = EmotionService(self.core)
        grpc_options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", s.max_message_bytes + 64 * 1024),  # room for the envelope
            ("grpc.max_send_message_length", s.max_message_bytes + 64 * 1024),
            ("grpc.so_reuseport", 0),
            # Bounded connections keep descriptors for the rest of the process (the HTTP port has its own
            # cap); past it gRPC closes new connections at once, which clients see as UNAVAILABLE.
            ("grpc.max_allowed_incoming_connections", s.max_grpc_connections or connection_cap()),
        ]
        if s.max_connection_age_s > 0:
            # On by default: the drain's safe GOAWAY is this one (server/grpc/listeners.py). The grace
            # outlasts the longest stream allowed: an aged connection gets GOAWAY (new calls go to a new
            # connection) but the streams it carries finish: a stream lives at most stream_max_open_s of
            # wall-clock time (its audio, max_stream_duration_s, arrives within that).
            grace_s = s.stream_max_open_s + s.drain_grace_s
            grpc_options += [("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
                             ("grpc.max_connection_age_grace_ms", int(grace_s * 1000))]
        tokens = TokenStore.from_settings(s.auth_token_file or None)
        interceptors: list[Any] = []
        auth = None
        if tokens is not None:
            # Health, the OIP live/ready probes (gRPC and REST) and, when asked, reflection need no token.
            auth = BearerAuth(tokens, self.metrics, exempt_reflection=s.auth_exempt_reflection)
            interceptors.append(TokenAuthInterceptor(auth))
            log.info("bearer-token authentication enabled (health checks exempt)")
        credentials = server_credentials(s.tls_cert_file or None, s.tls_key_file or None,
                                         s.tls_client_ca_file or None)
        # Past --max-concurrent-rpcs calls in progress, RESOURCE_EXHAUSTED before any handler runs or any
        # request is read, so a flood cannot grow memory without bound (the batcher queue bounds only queued
        # work). Health checks and the OIP probes are outside the cap: probes answer whatever the load.
        core = self.core
        self.admission = RpcAdmission(
            s.max_concurrent_rpcs, exempt=OIP_PROBES,
            retry_after_ms=lambda: int(1000 * max(0.05, core.estimated_drain_s())),
            on_reject=self._count_cap_refusal,
            safe_deserializers=True,  # bytes that do not parse -> INVALID_ARGUMENT (grpc/malformed.py)
        )
        # Outermost: it counts (and releases) whatever handler the others return, token refusals included.
        interceptors.insert(0, self.admission)
        self.server = grpc.aio.server(options=grpc_options, interceptors=interceptors)
        emotion_pb2_grpc.add_EmotionRecognizerServicer_to_server(self.service, self.server)
        # The Open Inference Protocol (KServe v2 / Triton) on the same port, over the same core.
        oip_grpc.add_to_server(oip_grpc.OipGrpcService(self.core), self.server)
        await self.health.start()
        self.health.add_to_server(self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, oip_grpc.SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME),
            self.server,
        )
        address = f"{s.host}:{s.port}"
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
            mutual = " with client certificates (mutual TLS)" if s.tls_client_ca_file else ""
            log.info("TLS enabled%s", mutual)
        if self.port == 0:
            raise OSError(f"cannot listen on {s.host}:{s.port}")
        await self.server.start()
        log.info("listening on %s:%d (model %s %s, provider %s)", s.host, self.port, m.model_name,
                 m.model_version, self.runner.provider)
        if s.http_port >= 0:
            self.http = HttpFrontEnd(self.core, s, auth=auth)
            self.http_port = await self.http.start()
        if s.warmup:
            await self.warmup()
        self._observer.enabled = True
        self._heap_trimmer = HeapTrimmer(s.heap_trim_interval_s, self._decode_executor,
                                         lambda: self._observer.batches)
        self._heap_trimmer.start()
        self.core.mark_ready()
        await self.health.set_serving()
        log.info("ready: health SERVING on %s:%d", s.host, self.port)

    async def warmup(self) -> None:
        """Run the model on each length of ``warmup_durations`` (and one full batch) before SERVING."""
        assert self.batcher is not None and self.runner is not None
        s = self.settings
        rate = self.manifest.sample_rate_hz
        rng = np.random.default_rng(0)
        started = time.monotonic()
        longest = min(s.max_duration_s, s.warmup_max_s)
        durations = warmup_durations(min(max(s.min_duration_s, 0.5), longest), longest)
        buckets = self.runner.active_length_buckets
        if buckets is not None:  # on a GPU: every padded shape up to the warm-up length, none first seen live
            durations = sorted({e / rate for e in buckets.edges if e <= longest * rate} | set(durations))
        for duration in durations:
            wave = (0.01 * rng.standard_normal(int(duration * rate))).astype(np.float32)
            await self.batcher.submit(wave, cost=self.runner.cost(wave.shape[0]), deadline=None)
        # A burst of short items so batched shapes are compiled too.
        burst = [(0.01 * rng.standard_normal(rate)).astype(np.float32) for _ in range(s.max_batch_size)]
        await asyncio.gather(*(self.batcher.submit(w, cost=self.runner.cost(w.shape[0]), deadline=None)
                               for w in burst))
        log.info("warm-up done in %.2f s", time.monotonic() - started)

    def _count_cap_refusal(self, rpc: str, protocol: str) -> None:
        self.metrics.reject("rpc_limit")
        if protocol:
            self.metrics.observe_request(rpc, "RESOURCE_EXHAUSTED", 0.0, protocol)

    async def stop(self) -> None:
        """Ordered shutdown (module docstring); idempotent. Accepted work finishes within the grace."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        s = self.settings
        log.info("draining (readiness delay %.1f s, grace %.1f s)",
                 s.drain_readiness_delay_s, s.drain_grace_s)
        # 1. Not ready on every protocol, still serving.
        await self.health.enter_drain()
        if self.core is not None:
            self.core.withdraw_readiness()
        if self.http is not None:
            self.http.begin_drain()  # responses close their keep-alive connections from now on
        if self.server is not None or self.http is not None:
            await asyncio.sleep(s.drain_readiness_delay_s)
        # 2. GOAWAY while still serving: no new connections, and each connection's age GOAWAY moves its client
        # elsewhere (server/grpc/listeners.py: gRPC core's own shutdown GOAWAY cancels calls that cross it).
        if self.server is not None and self.port > 0:
            if s.max_connection_age_s > 0:
                await self._goaway_by_connection_age()
            else:
                log.warning("gRPC port %d: --max-connection-age-s 0, so the drain's GOAWAY is the "
                            "shutdown's: gRPC cancels calls that cross it (server/grpc/listeners.py)",
                            self.port)
        grace_end = time.monotonic() + s.drain_grace_s  # the grace is for finishing work, counted from here

        def left() -> float:
            return max(0.0, grace_end - time.monotonic())

        # 3. GOAWAY to what is left (connections carrying streams, already told by their age GOAWAY when the
        # age is set) and no new calls; the HTTP listener closes (requests in progress finish).
        grpc_stop = asyncio.ensure_future(self.server.stop(grace=left())) if self.server is not None else None
        http_stop = asyncio.ensure_future(self.http.stop()) if self.http is not None else None
        # 4. Every call accepted so far finishes. Calls gRPC accepted just before the GOAWAY reach the
        # admission count within a loop iteration or two.
        await asyncio.sleep(_ACCEPT_SETTLE_S)
        if self.admission is not None:
            await self.admission.wait_idle(left())
        if self.core is not None:
            self.core.begin_drain()  # anything that still reaches the core now is refused
            await self.core.wait_idle(left())
        if self.batcher is not None:
            await self.batcher.close(drain=True, timeout_s=left())
        if self.server is not None and grpc_stop is not None:
            # 5. Idle (or out of grace): only health Watch streams are left; cancel them.
            await self.server.stop(grace=None)
            await grpc_stop
        if http_stop is not None:
            await http_stop
        if self._heap_trimmer is not None:
            await self._heap_trimmer.stop()
        if self.runner is not None:
            self.runner.close()
        self.metrics.close()
        self._decode_executor.shutdown(wait=False, cancel_futures=True)
        if self.tracing is not None:
            # Export the spans still buffered (bounded by the exporter's timeout), off the event loop.
            tracing.install(None)
            await asyncio.get_running_loop().run_in_executor(None, self.tracing.shutdown)
        if self.core is not None:
            # One line a test or an operator can hold against the clients' view: every call that reached
            # the core, by outcome. A call a client saw fail that is not counted here never reached it.
            answered = ", ".join(f"{p}/{r}/{c}={n}" for (p, r, c), n in sorted(self.core.outcomes.items()))
            log.info("calls answered since start: %s", answered or "none")
        log.info("stopped")
        self._stopped.set()

    async def _goaway_by_connection_age(self) -> None:
        """Stop accepting gRPC connections and wait for every open one's connection-age GOAWAY, serving
        throughout; ends early once no connection is left (server/grpc/listeners.py)."""
        s = self.settings
        closed = listeners.stop_accepting(self.port)
        bound_s = listeners.age_goaway_wait_s(s.max_connection_age_s)
        if closed:
            log.info("gRPC port %d: no new connections; each open one gets GOAWAY at its age (%.0f s), "
                     "waiting up to %.1f s", self.port, s.max_connection_age_s, bound_s)
        else:
            log.warning("gRPC port %d: listener left open (not on Linux?); waiting up to %.1f s for the "
                        "connections' age GOAWAY", self.port, bound_s)
        deadline = time.monotonic() + bound_s
        while (remaining := deadline - time.monotonic()) > 0:
            if listeners.connections_open(self.port) is False:
                log.info("gRPC port %d: no connection left", self.port)
                return
            await asyncio.sleep(min(_CONNECTION_POLL_S, remaining))
        log.info("gRPC port %d: every connection has had its age GOAWAY", self.port)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def run_server(settings: Settings, manifest: ModelManifest) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns the exit code (0 after a clean drain)."""
    server = EmotionServer(settings, manifest)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    first_signal_at: float | None = None

    def on_signal(signum: int) -> None:
        nonlocal first_signal_at
        name = signal.Signals(signum).name
        now = time.monotonic()
        if first_signal_at is None:
            first_signal_at = now
            log.info("%s received", name)
            stop_requested.set()
        elif now - first_signal_at >= _DOUBLE_SIGNAL_S:
            log.error("second %s: exiting now without draining", name)
            os._exit(1)
        else:
            # Process supervisors (timeout(1), a shell killing the process group) often deliver the
            # same signal twice at once; only a deliberate second signal forces the exit.
            log.info("%s repeated within %.0f s; still draining", name, _DOUBLE_SIGNAL_S)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        start = asyncio.ensure_future(server.start())
        stop_wait = asyncio.ensure_future(stop_requested.wait())
        done, _ = await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if start in done:
            if start.exception() is not None:
                stop_wait.cancel()
                await server.stop()  # release what was started (metrics port, batcher, sessions)
                start.result()  # raise the start-up error
            await stop_wait
        else:
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
        await server.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


_ = emotion_pb2  # the generated module must be imported before reflection reads its descriptor
