"""Errors and admission on both Open Inference Protocol front ends, against an in-process server (real tiny
model, real sockets): each bad input gets its status and message on gRPC and on HTTP, counted under its
protocol; shedding gives RESOURCE_EXHAUSTED / 429 + Retry-After, draining UNAVAILABLE / 503 while the
calls already accepted finish; bearer tokens and TLS apply to the HTTP port as to the gRPC port.

The gRPC side uses the server's own generated stubs (``emotion.oip``); tritonclient.grpc is exercised in
test_oip_tritonclient_grpc.py, in a process of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import numpy as np
import pytest
from emotion.oip import grpc_service_pb2 as pb
from emotion.oip import grpc_service_pb2_grpc as pb_grpc

from emotion2vec_serving.server.config import Settings
from tests.support.audio import encoded_signal, make_signal
from tests.support.faults import FaultyFactory
from tests.support.metrics import metric_value
from tests.support.polling import wait_until_async
from tests.support.servers import OIP_SETTINGS, Running, StartServer

Tensor = tuple[str, str, list[int], bytes]  # name, datatype, shape, raw little-endian contents


@pytest.fixture
def server_settings() -> Settings:
    """This module's in-process servers run the Open Inference Protocol test settings."""
    return OIP_SETTINGS


def _wave(seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    return make_signal(seconds, 16000, 1, seed=seed)[:, 0].astype("<f4")


def _waveform(rows: np.ndarray) -> Tensor:
    rows = np.atleast_2d(rows).astype("<f4")
    return ("WAVEFORM", "FP32", list(rows.shape), rows.tobytes())


def _audio(*files: bytes) -> Tensor:
    return ("AUDIO", "BYTES", [len(files)], b"".join(len(f).to_bytes(4, "little") + f for f in files))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def _base(running: Running) -> str:
    return f"http://127.0.0.1:{running.server.http_port}"


async def grpc_infer(running: Running, model: str, inputs: list[Tensor], outputs: Sequence[str] = (),
                     timeout: float = 30) -> pb.ModelInferResponse:
    stub = pb_grpc.GRPCInferenceServiceStub(running.channel)
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    for name in outputs:
        request.outputs.add(name=name)
    return await stub.ModelInfer(request, timeout=timeout)


async def http_infer(session: aiohttp.ClientSession, running: Running, model: str, inputs: list[Tensor],
                     outputs: Sequence[str] = (), headers: dict[str, str] | None = None,
                     ) -> tuple[int, dict[str, str], Any]:
    header = json.dumps({
        "inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
                   for n, d, s, raw in inputs],
        "outputs": [{"name": o} for o in outputs],
    }).encode()
    body = header + b"".join(raw for *_, raw in inputs)
    all_headers = {"Inference-Header-Content-Length": str(len(header)), **(headers or {})}
    async with session.post(f"{_base(running)}/v2/models/{model}/infer", data=body, headers=all_headers) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


# ------------------------------------------------------------------------------------------ bad input

NOT_AUDIO = b"definitely not an audio file"
BAD_CASES: dict[str, tuple[str | None, list[Tensor], list[str], grpc.StatusCode, int, str]] = {
    # case: (model, or None for the served one; inputs; outputs; gRPC code; HTTP status; message fragment)
    "unknown model": ("nope", [_waveform(_wave())], [], grpc.StatusCode.NOT_FOUND, 404,
                      "unknown model 'nope'"),
    "no audio input": (None, [("SAMPLE_RATE", "INT32", [1], np.int32(16000).tobytes())], [],
                       grpc.StatusCode.INVALID_ARGUMENT, 400, "exactly one of the inputs WAVEFORM"),
    "both inputs": (None, [_waveform(_wave()), _audio(NOT_AUDIO)], [], grpc.StatusCode.INVALID_ARGUMENT,
                    400, "exactly one of the inputs WAVEFORM"),
    "unknown input": (None, [("PIXELS", "FP32", [1, 4], bytes(16))], [], grpc.StatusCode.INVALID_ARGUMENT,
                      400, "unknown input 'PIXELS'"),
    "wrong datatype": (None, [("WAVEFORM", "FP64", [1, 8000], bytes(64000))], [],
                       grpc.StatusCode.INVALID_ARGUMENT, 400, "WAVEFORM must be FP32"),
    "one-dimensional waveform": (None, [("WAVEFORM", "FP32", [8000], _wave().tobytes())], [],
                                 grpc.StatusCode.INVALID_ARGUMENT, 400, "shape [batch, samples]"),
    "data shorter than the shape": (None, [("WAVEFORM", "FP32", [1, 9000], _wave().tobytes())], [],
                                    grpc.StatusCode.INVALID_ARGUMENT, 400, "needs 36000 bytes, got 32000"),
    "unknown output": (None, [_waveform(_wave())], ["LOGITS"], grpc.StatusCode.INVALID_ARGUMENT, 400,
                       "unknown output 'LOGITS'"),
    "not audio": (None, [_audio(NOT_AUDIO)], [], grpc.StatusCode.INVALID_ARGUMENT, 400,
                  "could not decode audio: unrecognised format"),
    "one bad item in a batch": (None, [_audio(encoded_signal("wav", 0.5, 16000, 1), NOT_AUDIO)], [],
                                grpc.StatusCode.INVALID_ARGUMENT, 400, "could not decode audio"),
    "too short": (None, [_waveform(_wave(0.02))], [], grpc.StatusCode.INVALID_ARGUMENT, 400,
                  "audio too short"),
    "non-finite samples": (None, [_waveform(np.full(8000, np.nan, "<f4"))], [],
                           grpc.StatusCode.INVALID_ARGUMENT, 400, "NaN or infinite"),
    "sample rate with files": (None, [_audio(NOT_AUDIO),
                                      ("SAMPLE_RATE", "INT32", [1], np.int32(8000).tobytes())],
                               [], grpc.StatusCode.INVALID_ARGUMENT, 400, "goes with WAVEFORM only"),
}  # fmt: skip


async def test_each_bad_input_has_its_status_and_message_on_both_front_ends(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running: Running = await start_server()
    served = running.server.manifest.model_name
    for case, (model, inputs, outputs, code, status, fragment) in BAD_CASES.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await grpc_infer(running, model or served, inputs, outputs)
        assert err.value.code() == code, (case, err.value.details())
        assert fragment in (err.value.details() or ""), (case, err.value.details())
        got_status, _, body = await http_infer(http, running, model or served, inputs, outputs)
        assert got_status == status, (case, body)
        assert set(body) == {"error"} and fragment in body["error"], (case, body)
    # Still serving, and the refusals were counted under each protocol.
    ok = await grpc_infer(running, served, [_waveform(_wave())])
    assert [o.name for o in ok.outputs] == ["PROBS", "LABEL"]
    text = running.scrape()
    for protocol in ("oip_grpc", "oip_http"):
        bad = metric_value(text, "emotion_requests_total", rpc="ModelInfer", code="INVALID_ARGUMENT",
                           protocol=protocol)
        assert bad == sum(1 for c in BAD_CASES.values() if c[3] == grpc.StatusCode.INVALID_ARGUMENT), protocol


async def test_malformed_http_bodies(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    running: Running = await start_server()
    url = f"{_base(running)}/v2/models/{running.server.manifest.model_name}/infer"
    cases = [
        (b"{not json", {}, "not valid JSON"),
        (b"[1, 2]", {}, "must be a JSON object"),
        (b'{"inputs": []}', {}, "non-empty \"inputs\""),
        (b'{"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": [1, 2], "data": [0.1]}]}', {},
         "holds 2 element(s), the data 1"),
        (b'{"inputs": [{"name": "AUDIO", "datatype": "BYTES", "shape": [1], "data": ["%%"],'
         b' "parameters": {"content_type": "base64"}}]}', {}, "not valid base64"),
        (b'{"inputs": []}xx', {"Inference-Header-Content-Length": "99"},
         "Inference-Header-Content-Length is 99"),
    ]
    for body, headers, fragment in cases:
        async with http.post(url, data=body, headers=headers) as r:
            doc = await r.json(content_type=None)
            assert r.status == 400 and fragment in doc["error"], (body, doc)
    async with http.delete(url) as r:  # a method the protocol does not have: JSON error, not a crash
        assert r.status == 405 and "error" in await r.json(content_type=None)


# ------------------------------------------------------------------------------------------ admission


async def test_shedding_gives_resource_exhausted_and_429(start_server: StartServer,
                                                          http: aiohttp.ClientSession) -> None:
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running: Running = await start_server(session_factory=factory, max_batch_size=1, max_queue_requests=1)
    model = running.server.manifest.model_name
    batcher = running.server.batcher
    assert batcher is not None
    try:
        running_call = asyncio.ensure_future(grpc_infer(running, model, [_waveform(_wave(seed=1))]))
        await wait_until_async(lambda: len(factory.entered) == 1, message="the first call in the model")
        queued_call = asyncio.ensure_future(http_infer(http, running, model, [_waveform(_wave(seed=2))]))
        await wait_until_async(lambda: batcher.queued_requests == 1, message="the queue full")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await grpc_infer(running, model, [_waveform(_wave(seed=3))])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "overloaded" in (err.value.details() or "")
        assert int(dict(err.value.trailing_metadata() or ())["retry-after-ms"]) > 0
        status, headers, body = await http_infer(http, running, model, [_waveform(_wave(seed=4))])
        assert status == 429 and "overloaded" in body["error"]
        assert int(headers["Retry-After"]) >= 1 and int(headers["retry-after-ms"]) > 0
    finally:
        gate.set()
    # What was accepted is answered in full.
    first = await running_call
    assert [o.name for o in first.outputs] == ["PROBS", "LABEL"]
    status, _, body = await queued_call
    assert status == 200 and [o["name"] for o in body["outputs"]] == ["PROBS", "LABEL"]


async def test_a_draining_core_refuses_on_both_front_ends(start_server: StartServer,
                                                          http: aiohttp.ClientSession) -> None:
    """Once the core drains, what still reaches it (an open keep-alive connection, a call accepted at the
    GOAWAY) is refused: UNAVAILABLE and 503 with a retry hint, and readiness is false on both."""
    running: Running = await start_server()
    model = running.server.manifest.model_name
    core = running.server.core
    assert core is not None
    stub = pb_grpc.GRPCInferenceServiceStub(running.channel)
    assert (await stub.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready
    core.begin_drain()
    base = _base(running)
    for path in ("/v2/health/ready", f"/v2/models/{model}/ready"):
        async with http.get(base + path) as r:
            assert r.status == 503 and (await r.json())["ready"] is False, path
    async with http.get(base + "/v2/health/live") as r:
        assert r.status == 200
    assert not (await stub.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=5)).ready
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_infer(running, model, [_waveform(_wave(seed=5))])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (err.value.details() or "")
    assert int(dict(err.value.trailing_metadata() or ())["retry-after-ms"]) > 0
    status, headers, body = await http_infer(http, running, model, [_waveform(_wave(seed=6))])
    assert status == 503 and "shutting down" in body["error"] and int(headers["Retry-After"]) >= 1


async def test_stopping_withdraws_readiness_then_closes_while_accepted_calls_finish(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """SIGTERM's drain on both front ends: readiness false at once (still serving through the readiness
    delay), then no new connections, and the calls accepted before are answered in full."""
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running: Running = await start_server(session_factory=factory, drain_readiness_delay_s=3.0)
    model = running.server.manifest.model_name
    core = running.server.core
    assert core is not None
    accepted_http = asyncio.ensure_future(http_infer(http, running, model, [_waveform(_wave(seed=1))]))
    accepted_grpc = asyncio.ensure_future(grpc_infer(running, model, [_waveform(_wave(seed=2))]))
    await wait_until_async(lambda: len(factory.entered) >= 1, message="the accepted calls reach the model")
    base = _base(running)
    async with http.get(base + "/v2/health/live") as r:  # a keep-alive connection, before the drain
        assert r.status == 200 and r.headers.get("Connection", "").lower() != "close"
    stopping = asyncio.ensure_future(running.server.stop())
    try:
        await wait_until_async(lambda: not core.ready, message="readiness withdrawn")
        # A new connection: the listener is still open during the readiness delay. Responses now close
        # their connections (HTTP/1.1's GOAWAY), so keep-alive clients reconnect, elsewhere.
        async with aiohttp.ClientSession() as fresh, fresh.get(base + "/v2/health/ready") as r:
            assert r.status == 503 and (await r.json())["ready"] is False
            assert r.headers["Connection"].lower() == "close"
        stub = pb_grpc.GRPCInferenceServiceStub(running.channel)
        assert not (await stub.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready

        async def refused() -> bool:
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(base + "/v2/health/live") as r:
                    await r.read()
            except aiohttp.ClientConnectionError:
                return True
            return False

        await wait_until_async(refused, timeout_s=10, message="the HTTP listener closes after the delay")
    finally:
        gate.set()
    status, _, body = await accepted_http  # accepted before the drain: answered in full
    assert status == 200 and body["outputs"][0]["name"] == "PROBS"
    assert [o.name for o in (await accepted_grpc).outputs] == ["PROBS", "LABEL"]
    await stopping


async def test_tokens_guard_the_http_port_except_probes(
    start_server: StartServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-token-0123456789\n")
    running: Running = await start_server(auth_token_file=str(tokens))
    model = running.server.manifest.model_name
    base = _base(running)
    async with http.get(base + "/v2/health/ready") as r:  # probes need no secret
        assert r.status == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
        async with http.get(f"{base}/v2/models/{model}", headers=headers) as r:
            doc = await r.json()
            assert r.status == 401 and "credentials" in doc["error"], headers
            assert r.headers["WWW-Authenticate"] == "Bearer"
        status, _, body = await http_infer(http, running, model, [_waveform(_wave())], headers=headers)
        assert status == 401, body
    good = {"Authorization": "Bearer s3cret-token-0123456789"}
    async with http.get(f"{base}/v2/models/{model}", headers=good) as r:
        assert r.status == 200
    status, _, body = await http_infer(http, running, model, [_waveform(_wave())], headers=good)
    assert status == 200, body
    # gRPC: the same store; readiness probes exempt, the rest needs the token.
    stub = pb_grpc.GRPCInferenceServiceStub(running.channel)
    assert (await stub.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=5,
                                    metadata=(("authorization", "Bearer s3cret-token-0123456789"),))
    assert meta.name == model


async def test_tls_applies_to_the_http_port(start_server: StartServer, tmp_path: Path) -> None:
    from tests.support.certs import make_cert_set

    certs = make_cert_set(tmp_path / "certs")
    running: Running = await start_server(tls_cert_file=str(certs.path("server.pem")),
                                          tls_key_file=str(certs.path("server.key")))
    port = running.server.http_port
    context = ssl.create_default_context(cafile=str(certs.path("ca.pem")))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://localhost:{port}/v2/health/ready", ssl=context) as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        with pytest.raises(aiohttp.ClientError):  # plaintext is refused
            async with session.get(f"http://localhost:{port}/v2/health/ready") as r:
                await r.read()


def test_settings_validate_the_http_port() -> None:
    from emotion2vec_serving.server.config import SettingsError, parse_settings

    assert parse_settings(["--http-port", "-1"], {}).http_port == -1
    assert parse_settings([], {"EMOTION_HTTP_PORT": "8123"}).http_port == 8123
    assert parse_settings([], {}).http_port == 8000
    with pytest.raises(SettingsError, match="http port"):
        dataclasses.replace(OIP_SETTINGS, http_port=70000)


async def test_typed_contents_equal_raw_contents(start_server: StartServer) -> None:
    """The protocol's typed ``contents`` (what hand-written gRPC clients send) and ``raw_input_contents``
    (what tritonclient sends) give the same answer."""
    running: Running = await start_server()
    model = running.server.manifest.model_name
    stub = pb_grpc.GRPCInferenceServiceStub(running.channel)
    wave = _wave(0.6, seed=7)
    wav_file = encoded_signal("wav", 0.7, 16000, 1)
    raw_wave = await grpc_infer(running, model, [_waveform(wave)])
    raw_audio = await grpc_infer(running, model, [_audio(wav_file)])
    typed_wave = pb.ModelInferRequest(model_name=model)
    tensor = typed_wave.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, len(wave)])
    tensor.contents.fp32_contents.extend(wave.tolist())
    typed_audio = pb.ModelInferRequest(model_name=model)
    typed_audio.inputs.add(name="AUDIO", datatype="BYTES", shape=[1]).contents.bytes_contents.append(wav_file)
    for typed, raw in ((typed_wave, raw_wave), (typed_audio, raw_audio)):
        answer = await stub.ModelInfer(typed, timeout=30)
        assert answer.raw_output_contents[0] == raw.raw_output_contents[0]  # PROBS, bit for bit
        assert answer.raw_output_contents[1] == raw.raw_output_contents[1]  # LABEL


async def test_a_body_over_the_message_limit_is_413_json(start_server: StartServer,
                                                         http: aiohttp.ClientSession) -> None:
    running: Running = await start_server(max_message_bytes=100_000)
    model = running.server.manifest.model_name
    status, _, body = await http_infer(http, running, model, [_waveform(_wave(4.0))])  # 256 KB of samples
    assert status == 413 and "larger than the server accepts" in body["error"]
    status, _, body = await http_infer(http, running, model, [_waveform(_wave())])
    assert status == 200, body  # the connection and the server are fine afterwards
