"""OpenTelemetry traces for the services that call us (issue 22): off by default, no cost when off.

**What switches it on** (:func:`from_env`, read once at start): the standard ``OTEL_*`` variables.
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep it off; otherwise it is on when
``OTEL_TRACES_EXPORTER`` names exporters (``otlp``, ``console``) or an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``: then ``otlp``). With none of
them the server exports nothing and never imports OpenTelemetry. ``otlp`` is OTLP over HTTP/protobuf
(``opentelemetry-exporter-otlp-proto-http``, in the ``server`` extra); the SDK reads the rest itself
(endpoint, headers, timeout, compression, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the
sampler ``OTEL_TRACES_SAMPLER``, the batch processor's ``OTEL_BSP_*``). A request for tracing that cannot
be met (no SDK installed, an unknown exporter, OTLP over gRPC) stops the start with
:class:`TracingConfigError`.

**What is traced.** A caller's W3C ``traceparent``/``tracestate`` (gRPC metadata, HTTP headers, the
WebSocket upgrade request) is the parent of the call's span (kind SERVER, named ``<protocol> <rpc>``),
which ends when the core counts the call (``calls/admission.py``), with its code. Under it: ``decode``,
``queue`` (submission to the batch's start) and ``inference`` (the batch's run, with the batch id, size and
provider) for every batcher item, and for long recordings and streams one ``segment`` span per segment
holding that segment's ``queue`` and ``inference``. Each batch the runner runs is a ``batch`` span (its own
trace) with one link per call span it served (``emotion.batch.id`` ties it to the ``inference`` spans).

**The cost when off.** A front end calls :func:`incoming`, which returns None at once while no
:class:`Tracing` is installed; the core checks ``call.trace is not None`` before anything else, and the
runner's batch hook is not set (``benchmarks/tracing_overhead.py`` measures it).

This module imports the standard library only at the top; OpenTelemetry is imported by :func:`from_env`
when tracing is on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "CallTrace",
    "Tracing",
    "TracingConfigError",
    "active",
    "from_env",
    "incoming",
    "install",
    "wanted",
]

log = logging.getLogger(__name__)

#: ``service.name`` when neither ``OTEL_SERVICE_NAME`` nor ``OTEL_RESOURCE_ATTRIBUTES`` names one.
DEFAULT_SERVICE_NAME = "emotion2vec-serving"
_EXPORTERS = ("otlp", "console")
_HTTP_PROTOBUF = "http/protobuf"
_INSTRUMENTATION = "emotion2vec_serving.server"

_active: Tracing | None = None


class TracingConfigError(ValueError):
    """The environment asks for traces this install cannot produce."""


# ---------------------------------------------------------------------------------------- switching on


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def wanted(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The exporters the ``OTEL_*`` variables ask for; empty: tracing stays off (see the module notes)."""
    if _truthy(environ.get("OTEL_SDK_DISABLED")):
        return ()
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        exporters = tuple(dict.fromkeys(e.strip() for e in named.split(",") if e.strip()))
        return () if "none" in exporters else exporters
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip() or \
            environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return ("otlp",)
    return ()


def from_env(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """A :class:`Tracing` exporting as the ``OTEL_*`` variables say, or None when they do not ask for it."""
    env = os.environ if environ is None else environ
    exporters = wanted(env)
    if not exporters:
        return None
    unknown = [e for e in exporters if e not in _EXPORTERS]
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: this server exports traces with "
            f"{' or '.join(_EXPORTERS)} (or none)")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or _HTTP_PROTOBUF).strip().lower()
    if "otlp" in exporters and protocol != _HTTP_PROTOBUF:
        raise TracingConfigError(
            f"OTLP protocol {protocol!r}: this server exports OTLP over {_HTTP_PROTOBUF} only "
            "(unset OTEL_EXPORTER_OTLP_PROTOCOL or set it to http/protobuf; the default port is 4318)")
    try:  # optional: the server extra's OpenTelemetry SDK, loaded only when tracing is on
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError as exc:
        raise TracingConfigError(
            f"the OTEL_* variables ask for traces but the OpenTelemetry SDK is not installed ({exc}); "
            "install the server with: pip install 'emotion2vec-serving[server]'") from exc
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            try:  # optional: the OTLP/HTTP exporter of the server extra
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise TracingConfigError(
                    f"OTLP traces need opentelemetry-exporter-otlp-proto-http ({exc}); install the server "
                    "with: pip install 'emotion2vec-serving[server]'") from exc
            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: exporting spans with %s", ", ".join(exporters))
    return Tracing(provider)


def install(tracing: Tracing | None) -> None:
    """Make ``tracing`` the process's (None: off). The server installs it at start and removes it at stop."""
    global _active
    _active = tracing


def active() -> Tracing | None:
    return _active


def incoming(headers: Callable[[], Any]) -> CallTrace | None:
    """A new call's trace, or None when tracing is off (``headers`` is then never called).

    ``headers()`` returns the request's headers or gRPC metadata: a mapping or (key, value) pairs, as
    ``request.headers`` or ``context.invocation_metadata()`` do.
    """
    tracing = _active
    if tracing is None:
        return None
    return tracing.call(headers())


# ---------------------------------------------------------------------------------------- the tracer


def _wall_ns(monotonic_s: float, now_ns: int, now_mono: float) -> int:
    """``time.monotonic()`` reading -> epoch nanoseconds, against one pair of clock readings."""
    return now_ns - int((now_mono - monotonic_s) * 1e9)


class Tracing:
    """The server's tracer provider: call traces for the core, batch spans for the runner."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace  # optional: loaded with the SDK (from_env)
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._api = trace
        self._provider = provider
        self._tracer = provider.get_tracer(_INSTRUMENTATION)
        self._propagator = TraceContextTextMapPropagator()
        #: id(waveform) -> the span context of the call that submitted it, while it is queued or running:
        #: the runner's batch span links to them (read from the runner's threads; dict reads are atomic).
        self._items: dict[int, Any] = {}

    @property
    def tracer(self) -> Any:
        return self._tracer

    def call(self, headers: Any) -> CallTrace:
        carrier: dict[str, str] = {}
        pairs = headers.items() if hasattr(headers, "items") else (headers or ())
        for key, value in pairs:
            name = str(key).lower()
            if name in ("traceparent", "tracestate") and isinstance(value, str):
                carrier[name] = value
        parent = self._propagator.extract(carrier) if carrier else None
        return CallTrace(self, parent)

    # ---- batch items (the pipeline registers what it submits; the runner's hook reads it)

    def register(self, waveform: object, span_context: Any) -> None:
        self._items[id(waveform)] = span_context

    def unregister(self, waveform: object) -> None:
        self._items.pop(id(waveform), None)

    def on_batch(self, batch: Sequence[object], batch_id: int, started: float, run_s: float, provider: str,
                 error: BaseException | None) -> None:
        """The runner's hook, after every run (in its thread): one ``batch`` span linking the calls served.

        A batch none of whose items belongs to a sampled call (warm-up, unsampled callers) makes no span.
        """
        try:
            found = (self._items.get(id(w)) for w in batch)
            links = [self._api.Link(ctx) for ctx in found if ctx is not None]
            if not links:
                return
            now_ns, now_mono = time.time_ns(), time.monotonic()
            span = self._tracer.start_span(
                "batch", kind=self._api.SpanKind.INTERNAL, links=links,
                start_time=_wall_ns(started, now_ns, now_mono),
                attributes={"emotion.batch.id": batch_id, "emotion.batch.size": len(batch),
                            "emotion.provider": provider},
            )
            if error is not None:
                span.set_status(self._api.Status(self._api.StatusCode.ERROR, str(error)[:200]))
            span.end(end_time=_wall_ns(started + run_s, now_ns, now_mono))
        except Exception:  # tracing never fails a batch
            log.debug("batch span failed", exc_info=True)

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocking: up to the exporter's timeout)."""
        self._provider.shutdown()


class CallTrace:
    """One call's trace: its parent (the caller's ``traceparent``, if any) and, once begun, its span.

    The protocol-free core receives it opaquely in ``CallContext.trace``.
    """

    __slots__ = ("_parent", "_span", "_span_ctx", "_tracing")

    def __init__(self, tracing: Tracing, parent: Any) -> None:
        self._tracing = tracing
        self._parent = parent
        self._span: Any = None
        self._span_ctx: Any = None  # the call span as a parent context, for the phases

    @property
    def span(self) -> Any:
        return self._span

    def begin(self, protocol: str, rpc: str) -> None:
        """Start the call span (the core's admission does, once per call)."""
        if self._span is not None:
            return
        api = self._tracing._api
        self._span = self._tracing.tracer.start_span(
            f"{protocol} {rpc}", context=self._parent, kind=api.SpanKind.SERVER,
            attributes={"emotion.protocol": protocol, "rpc.method": rpc},
        )
        self._span_ctx = api.set_span_in_context(self._span)

    def finish(self, protocol: str, rpc: str, code: str) -> None:
        """End the call span with the call's code (a call refused before the core gets a span here)."""
        if self._span is None:
            self.begin(protocol, rpc)
        span, api = self._span, self._tracing._api
        span.set_attribute("emotion.code", code)
        if code != "OK":
            span.set_status(api.Status(api.StatusCode.ERROR, code))
        span.end()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A child span of the call around the block (``decode``); an exception marks it failed."""
        api = self._tracing._api
        span = self._tracing.tracer.start_span(name, context=self._span_ctx)
        try:
            yield
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(api.Status(api.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
            raise
        finally:
            span.end()

    # ---- batcher items

    def register(self, waveform: object) -> None:
        """The batch that runs ``waveform`` links to this call (until :meth:`unregister`)."""
        span = self._span
        if span is not None and span.is_recording():
            self._tracing.register(waveform, span.get_span_context())

    def unregister(self, waveform: object) -> None:
        self._tracing.unregister(waveform)

    def item(self, submitted: float, started: float, run_s: float, batch_id: int, batch_size: int,
             provider: str, segment: Mapping[str, Any] | None = None) -> None:
        """After a batcher item ran: its ``queue`` and ``inference`` spans (times from ``time.monotonic``),
        under a ``segment`` span (ending now, with ``segment``'s attributes) when one is given."""
        span = self._span
        if span is None or not span.is_recording():
            return
        api, tracer = self._tracing._api, self._tracing.tracer
        now_ns, now_mono = time.time_ns(), time.monotonic()
        parent = self._span_ctx
        seg = None
        if segment is not None:
            seg = tracer.start_span("segment", context=parent,
                                    start_time=_wall_ns(submitted, now_ns, now_mono),
                                    attributes={f"emotion.segment.{k}": v for k, v in segment.items()})
            parent = api.set_span_in_context(seg)
        started_ns = _wall_ns(started, now_ns, now_mono)
        tracer.start_span("queue", context=parent, start_time=_wall_ns(submitted, now_ns, now_mono)
                          ).end(end_time=started_ns)
        tracer.start_span(
            "inference", context=parent, start_time=started_ns,
            attributes={"emotion.batch.id": batch_id, "emotion.batch.size": batch_size,
                        "emotion.provider": provider},
        ).end(end_time=_wall_ns(started + run_s, now_ns, now_mono))
        if seg is not None:
            seg.end(end_time=now_ns)
