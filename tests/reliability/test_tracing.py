"""Traces for the services that call us (issue 22): a real server process exporting OTLP/HTTP to a real
receiver on 127.0.0.1 (tests/support/otlp_receiver.py, decoding ``ExportTraceServiceRequest``).

- A caller's W3C ``traceparent`` sent over emotion.v1 gRPC, ``/v1`` REST, OIP REST ``/v2`` and the WebSocket
  upgrade request is the parent of the call's span; the phases (``decode``, ``queue``, ``inference`` with
  the batch id and size) are children of the call span; the ``batch`` span links to the call span of each
  call it served, and its ``emotion.batch.id`` is the inference span's.
- A long recording's ``segment`` spans are children of the call span, each holding its ``queue`` and
  ``inference``.
- With ``OTEL_TRACES_EXPORTER=none`` nothing is exported. The negative assertion is made after the server
  exited from a clean drain, which is when a tracing server exports what it still buffers: the first test
  checks its spans the same way, right after the exit, without waiting.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import urllib.request
from pathlib import Path

import aiohttp
import grpc
import grpc.aio
import numpy as np
import pytest
from emotion.v1 import emotion_pb2_grpc

from emotion2vec_serving.server import tracing
from emotion2vec_serving.server.process import ServerProcess
from tests.support.calls import raw_request, tone
from tests.support.longform import wav_bytes
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.servers import server_process

#: One pass is at most 2 s; longer audio (up to 30 s) is cut into segments.
FLAGS = ("--max-duration-s", "2", "--max-audio-s", "30", "--min-duration-s", "0.1")
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER


def _traceparent() -> tuple[str, str, str]:
    """A caller's (traceparent, trace id, span id), sampled."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _env(endpoint: str, exporter: str | None = None) -> dict[str, str]:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "emotion-under-test",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    if exporter is not None:
        env["OTEL_TRACES_EXPORTER"] = exporter
    return env


def _start(model: Path, env: dict[str, str], procs: list[ServerProcess]) -> ServerProcess:
    proc = server_process(model, *FLAGS, env=env, isolated_env=True, http=True, startup_timeout_s=60.0)
    procs.append(proc)
    return proc.start()


def _post(url: str, body: bytes, headers: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def _model_name(proc: ServerProcess) -> str:
    with urllib.request.urlopen(proc.http_url + "/v1/model", timeout=10) as response:
        return str(json.loads(response.read())["model"]["name"])


async def _grpc_recognize(proc: ServerProcess, samples: np.ndarray, traceparent: str) -> None:
    async with grpc.aio.insecure_channel(proc.target) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        await stub.Recognize(raw_request(samples), timeout=60,
                             metadata=(("traceparent", traceparent), ("tracestate", "caller=1")))


async def _ws_stream(proc: ServerProcess, samples: np.ndarray, traceparent: str) -> None:
    url = proc.http_url.replace("http://", "ws://") + "/v1/stream"
    pcm = (samples * 8000).astype("<i2").tobytes()
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(url, headers={"traceparent": traceparent}) as ws:
        await ws.send_json({"encoding": "s16le", "sample_rate_hz": 16000})
        await ws.send_bytes(pcm)
        await ws.send_json({"end": True})
        while True:
            message = await ws.receive_json(timeout=60)
            assert message["type"] != "error", message
            if message["type"] == "summary":
                return


def _one(spans: list[ReceivedSpan], what: str) -> ReceivedSpan:
    assert len(spans) == 1, f"{what}: expected one span, got {[(s.name, s.parent_span_id) for s in spans]}"
    return spans[0]


def _check_call(rx: OtlpReceiver, trace_id: str, caller_span: str, name: str,
                phases: tuple[str, ...] = ("decode", "queue", "inference")) -> ReceivedSpan:
    """The call's span is the caller's child and holds the phases; each inference's batch links back."""
    spans = rx.trace(trace_id)
    call = _one([s for s in spans if s.parent_span_id == caller_span], f"{name}: the call span")
    assert call.name == name and call.kind == SERVER_KIND, call
    assert call.attributes.get("emotion.code") == "OK" and call.service_name == "emotion-under-test", call
    children = [s for s in spans if s.parent_span_id == call.span_id]
    for phase in phases:
        assert [s for s in children if s.name == phase], f"{name}: no {phase} span under the call span"
    inferences = [s for s in spans if s.name == "inference"]
    assert inferences, f"{name}: no inference span"
    batches = {s.attributes["emotion.batch.id"]: s for s in rx.spans if s.name == "batch"}
    for inference in inferences:
        assert inference.attributes["emotion.batch.size"] >= 1, inference
        batch = batches.get(inference.attributes["emotion.batch.id"])
        assert batch is not None, f"{name}: no batch span for {inference.attributes}"
        assert (trace_id, call.span_id) in batch.links, \
            f"{name}: batch {batch.attributes} links {batch.links}"
        assert batch.trace_id != trace_id and batch.parent_span_id == "", batch
        assert batch.start_ns <= inference.end_ns and inference.start_ns <= batch.end_ns
    return call


async def test_a_callers_trace_reaches_the_exported_spans_on_every_protocol(
    tiny_repo: Path, server_procs: list[ServerProcess]
) -> None:
    with OtlpReceiver() as rx:
        proc = _start(tiny_repo, _env(rx.endpoint), server_procs)
        model = _model_name(proc)
        grpc_tp, grpc_trace, grpc_span = _traceparent()
        v1_tp, v1_trace, v1_span = _traceparent()
        v2_tp, v2_trace, v2_span = _traceparent()
        ws_tp, ws_trace, ws_span = _traceparent()
        long_tp, long_trace, long_span = _traceparent()
        clip = tone(1.0)
        await asyncio.gather(
            _grpc_recognize(proc, clip, grpc_tp),
            asyncio.to_thread(_post, proc.http_url + "/v1/recognize",
                              wav_bytes((clip * 8000).astype(np.int16)),
                              {"traceparent": v1_tp, "Content-Type": "audio/wav"}),
            asyncio.to_thread(_post, proc.http_url + f"/v2/models/{model}/infer", json.dumps({"inputs": [
                {"name": "WAVEFORM", "datatype": "FP32", "shape": [1, clip.size], "data": clip.tolist()}
            ]}).encode(), {"traceparent": v2_tp, "Content-Type": "application/json"}),
            _ws_stream(proc, tone(1.5, seed=3), ws_tp),
            _grpc_recognize(proc, tone(7.0, seed=1), long_tp),
        )
        assert proc.terminate() == 0, proc.log_tail()
        # The server exported what it buffered before it exited: no waiting here.
        _check_call(rx, grpc_trace, grpc_span, "emotion_v1 Recognize")
        _check_call(rx, v1_trace, v1_span, "http Recognize")
        _check_call(rx, v2_trace, v2_span, "oip_http ModelInfer")
        ws_call = _check_call(rx, ws_trace, ws_span, "ws StreamRecognize", phases=("segment",))
        long_call = _check_call(rx, long_trace, long_span, "emotion_v1 Recognize",
                                phases=("decode", "plan_segments", "segment"))
        for call, trace_id in ((ws_call, ws_trace), (long_call, long_trace)):
            spans = rx.trace(trace_id)
            segments = [s for s in spans if s.name == "segment" and s.parent_span_id == call.span_id]
            assert segments, call
            for segment in segments:
                below = sorted(s.name for s in spans if s.parent_span_id == segment.span_id)
                assert below == ["inference", "queue"], (segment.attributes, below)
        long_segments = [s for s in rx.trace(long_trace) if s.name == "segment"]
        assert len(long_segments) >= 4, "7 s in passes of at most 2 s"
        assert sorted(s.attributes["emotion.segment.id"] for s in long_segments) == \
            list(range(len(long_segments)))


async def test_with_the_exporter_none_nothing_is_exported(
    tiny_repo: Path, server_procs: list[ServerProcess]
) -> None:
    with OtlpReceiver() as rx:
        proc = _start(tiny_repo, _env(rx.endpoint, exporter="none"), server_procs)
        traceparent, _, _ = _traceparent()
        await _grpc_recognize(proc, tone(1.0), traceparent)
        await asyncio.to_thread(_post, proc.http_url + "/v1/recognize",
                                wav_bytes((tone(1.0) * 8000).astype(np.int16)),
                                {"traceparent": traceparent, "Content-Type": "audio/wav"})
        assert proc.terminate() == 0, proc.log_tail()
        # A tracing server exports its buffer before it exits (the test above): this one sent nothing.
        assert rx.requests == 0 and rx.spans == []


@pytest.mark.parametrize(("env", "exporters"), [
    ({}, ()),
    ({"OTEL_SERVICE_NAME": "x"}, ()),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ("otlp",)),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ("otlp",)),
    ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ("otlp", "console")),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, ()),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, ()),
])
def test_what_switches_tracing_on(env: dict[str, str], exporters: tuple[str, ...]) -> None:
    assert tracing.wanted(env) == exporters


@pytest.mark.parametrize(("env", "says"), [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "jaeger"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "http/protobuf"),
])
def test_a_request_for_traces_that_cannot_be_met_stops_the_start(env: dict[str, str], says: str) -> None:
    with pytest.raises(tracing.TracingConfigError, match=says):
        tracing.from_env(env)


def test_the_server_refuses_to_start_on_an_unknown_exporter(tiny_repo: Path) -> None:
    proc = server_process(tiny_repo, *FLAGS, metrics=False, http=False)
    out = subprocess.run(proc.command, env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"}, cwd=proc.cwd,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "OTEL_TRACES_EXPORTER names zipkin" in out.stderr, out.stderr[-2000:]
