"""Wiring and lifecycle: runner -> batcher -> servicer -> grpc.aio server, with metrics and health.

Start-up: load the model (reporting the provider really active), start the batcher, bind the port with
health NOT_SERVING, warm the model up across the batch length ranges, then report SERVING.

Shutdown (SIGTERM), in this order: health NOT_SERVING -> refuse new calls (UNAVAILABLE) -> let accepted
calls finish and drain the batcher within ``drain_grace_s`` -> ``server.stop(grace)`` -> close the runner.
The service keeps refusing with UNAVAILABLE for the whole drain; ``server.stop`` comes only once it is idle
(or the grace is spent) and then gets a short grace (``_FINAL_GRACE_S``): what is left then is health
``Watch`` streams, which never end by themselves and would otherwise hold the exit for the whole grace.
Calls that reach the server during that last second are cancelled by gRPC itself (CANCELLED, or
UNAVAILABLE once the listener is closed); that window is what remains of the drain's refusals.
A second SIGTERM (or SIGINT), a second or more after the first, exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from emotion.v1 import emotion_pb2, emotion_pb2_grpc
from grpc_reflection.v1alpha import reflection

from emotion2vec_serving.batching import DECISIONS, BatchPolicy, DecideFn, DynamicBatcher
from emotion2vec_serving.server import oip_grpc
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.core import CoreLimits, EmotionCore
from emotion2vec_serving.server.health import SERVICE_NAME, Health
from emotion2vec_serving.server.manifest import ModelManifest
from emotion2vec_serving.server.metrics import GatedObserver, ServerMetrics
from emotion2vec_serving.server.runner import (
    Runner,
    RunnerOptions,
    SessionFactory,
    ort_session_factory,
    split_on_error,
)
from emotion2vec_serving.server.security import TokenAuthInterceptor, TokenStore, server_credentials
from emotion2vec_serving.server.service import EmotionService

if TYPE_CHECKING:
    from emotion2vec_serving.server.http_app import HttpFrontEnd

__all__ = ["BATCH_DECISIONS", "EmotionServer", "run_server", "warmup_durations"]

log = logging.getLogger(__name__)

#: ``--batch-policy`` -> the batcher's decision function: the one registry, ``batching.DECISIONS``.
BATCH_DECISIONS: dict[str, DecideFn] = DECISIONS
#: A second SIGTERM/SIGINT at least this long after the first forces an immediate exit.
_DOUBLE_SIGNAL_S = 1.0
#: Grace given to ``server.stop`` once the service is idle and the batcher drained (health streams only).
_FINAL_GRACE_S = 1.0


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


def batching_caveat(precision: str, max_batch_size: int) -> str | None:
    """Why batching may change answers with this model, or None when batched results are exact.

    int8 dynamic quantisation picks its activation scale per batch, so an item's int8 scores depend on its
    batch mates (measured up to ~1e-2 on probabilities); fp32 and fp16 are batch-exact.
    """
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
                 session_factory: SessionFactory = ort_session_factory) -> None:
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
        self.core: EmotionCore | None = None
        self.service: EmotionService | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self.http: HttpFrontEnd | None = None  # the HTTP listener (OIP REST, web page); None: disabled
        self.http_port: int | None = None
        self._stopped = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        s = self.settings
        m = self.manifest
        self.metrics.set_model(m.model_name, m.model_version, m.precision, m.untrained)
        if s.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(s.metrics_port)
            log.info("metrics on http://0.0.0.0:%d/metrics", self.metrics_port)
        options = RunnerOptions(
            providers=s.providers, intra_op_threads=s.effective_intra_op_threads,
            instances=s.runner_instances,
            graph_optimization_level=s.graph_optimization_level,
            gpu_failures_before_fallback=s.gpu_failures_before_fallback,
            run_timeout_s=s.run_timeout_s,
            allow_spinning=s.ort_allow_spinning,
            cpu_arena=s.ort_cpu_arena,
            arena_shrinkage=s.ort_arena_shrinkage,
        )
        loop = asyncio.get_running_loop()
        # Loading a large model takes seconds: keep the event loop free meanwhile.
        self.runner = await loop.run_in_executor(None, lambda: Runner(
            m, options, session_factory=self._session_factory, on_provider_change=self.metrics.set_provider,
            on_run_timeout=self.metrics.run_timeout,
        ))
        caveat = batching_caveat(m.precision, s.max_batch_size)
        if caveat is not None:
            log.warning(caveat)
        rate = m.sample_rate_hz
        policy = BatchPolicy(
            max_batch_size=s.max_batch_size,
            preferred_batch_sizes=s.preferred_batch_sizes,
            max_batch_cost=int(s.max_batch_audio_s * rate),
            max_queue_delay_s=s.max_queue_delay_ms / 1000.0,
            max_queue_requests=s.max_queue_requests,
            max_queue_cost=int(s.max_queue_audio_s * rate),
            adaptive=s.adaptive_batching,
        )
        self.batcher = DynamicBatcher(self.runner.run, policy, instances=s.runner_instances,
                                      observer=self._observer, split_on_error=split_on_error,
                                      decide=BATCH_DECISIONS[s.batch_policy])
        await self.batcher.start()
        batcher = self.batcher
        # The core's estimate also counts segments of long recordings not yet handed to the batcher.
        self.metrics.bind_drain_estimate(
            lambda: self.core.estimated_drain_s() if self.core is not None
            else float(batcher.estimated_drain_s)
        )
        runner = self.runner
        # The protocol-free core; every front end below is an adapter over it.
        self.core = EmotionCore(
            m, self.batcher, self.metrics, CoreLimits.from_settings(s, rate), self._decode_executor,
            provider=lambda: runner.provider,
        )
        self.service = EmotionService(self.core)
        grpc_options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", s.max_message_bytes + 64 * 1024),  # room for the envelope
            ("grpc.max_send_message_length", s.max_message_bytes + 64 * 1024),
            ("grpc.so_reuseport", 0),
        ]
        if s.max_connection_age_s > 0:
            grpc_options += [("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
                             ("grpc.max_connection_age_grace_ms", int(s.drain_grace_s * 1000))]
        tokens = TokenStore.from_settings(s.auth_token_file or None)
        interceptors: list[Any] = []
        if tokens is not None:
            interceptors.append(TokenAuthInterceptor(tokens, exempt_reflection=s.auth_exempt_reflection,
                                                     exempt_methods=oip_grpc.PUBLIC_METHODS,
                                                     on_reject=self.metrics.reject))
            log.info("bearer-token authentication enabled (health checks exempt)")
        credentials = server_credentials(s.tls_cert_file or None, s.tls_key_file or None,
                                         s.tls_client_ca_file or None)
        self.server = grpc.aio.server(
            options=grpc_options, interceptors=interceptors,
            # Past this many RPCs in progress gRPC answers RESOURCE_EXHAUSTED before any handler runs, so
            # a flood of calls cannot grow memory without bound (the batcher queue bounds only queued work).
            maximum_concurrent_rpcs=s.max_concurrent_rpcs or None,
        )
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
            from emotion2vec_serving.server.http_app import HttpFrontEnd

            self.http = HttpFrontEnd(self.core, s, tokens=tokens)
            self.http_port = await self.http.start()
        if s.warmup:
            await self.warmup()
        self._observer.enabled = True
        self.core.mark_ready()
        await self.health.set_serving()
        log.info("ready: health SERVING on %s:%d", s.host, self.port)

    async def warmup(self) -> None:
        """Run the model on each length of ``warmup_durations`` (and one full batch) before SERVING."""
        assert self.batcher is not None
        s = self.settings
        rate = self.manifest.sample_rate_hz
        rng = np.random.default_rng(0)
        started = time.monotonic()
        longest = min(s.max_duration_s, s.warmup_max_s)
        for duration in warmup_durations(min(max(s.min_duration_s, 0.5), longest), longest):
            wave = (0.01 * rng.standard_normal(int(duration * rate))).astype(np.float32)
            await self.batcher.submit(wave, cost=wave.shape[0], deadline=None)
        # A burst of short items so batched shapes are compiled too.
        burst = [(0.01 * rng.standard_normal(rate)).astype(np.float32) for _ in range(s.max_batch_size)]
        await asyncio.gather(*(self.batcher.submit(w, cost=w.shape[0], deadline=None) for w in burst))
        log.info("warm-up done in %.2f s", time.monotonic() - started)

    async def stop(self) -> None:
        """Ordered shutdown; idempotent. Accepted work finishes within ``drain_grace_s``."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace_end = time.monotonic() + self.settings.drain_grace_s
        log.info("draining (grace %.1f s)", self.settings.drain_grace_s)
        await self.health.enter_drain()
        if self.core is not None:
            self.core.begin_drain()
            await self.core.wait_idle(max(0.0, grace_end - time.monotonic()))
        if self.batcher is not None:
            await self.batcher.close(drain=True, timeout_s=max(0.0, grace_end - time.monotonic()))
        if self.http is not None:
            # Open through the drain (readiness 503, new calls 503); closed once accepted calls are done.
            await self.http.stop()
        if self.server is not None:
            # Idle (or out of grace): only health Watch streams and stray calls remain, so a short grace.
            await self.server.stop(grace=min(_FINAL_GRACE_S, max(0.0, grace_end - time.monotonic())))
        if self.runner is not None:
            self.runner.close()
        self.metrics.close()
        self._decode_executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
        self._stopped.set()

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
