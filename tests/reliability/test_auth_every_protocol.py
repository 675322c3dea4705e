"""One bearer-token check for every front end (issue 20): a refused token is counted the same way over
emotion.v1 gRPC, OIP gRPC, OIP REST, the v1 web API and its WebSocket, against a real in-process server
(gRPC and HTTP listeners on port 0, real requests, the real /metrics endpoint)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import grpc.aio
import pytest
from emotion.oip import grpc_service_pb2 as oip_pb
from emotion.oip import grpc_service_pb2_grpc as oip_grpc
from emotion.v1 import emotion_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from tests.support.audio import encoded_signal
from tests.support.calls import raw_request, tone
from tests.support.servers import Running, StartServer

TOKEN = "s3cret-token-for-every-protocol-0123"
WRONG = "wrong-token-for-every-protocol-0123"
#: The samples a refusal may change.
COUNTED = ("emotion_requests_total", "emotion_rejections_total", "emotion_request_duration_seconds_count")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in COUNTED:
                out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _delta(before: Samples, after: Samples) -> Samples:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def _expected(rpc: str, protocol: str) -> Samples:
    return {
        ("emotion_rejections_total", (("reason", "unauthenticated"),)): 1.0,
        ("emotion_requests_total", (("code", "UNAUTHENTICATED"), ("protocol", protocol), ("rpc", rpc))): 1.0,
        ("emotion_request_duration_seconds_count", (("protocol", protocol), ("rpc", rpc))): 1.0,
    }


async def test_a_refused_token_is_counted_the_same_way_over_every_protocol(
    start_server: StartServer, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    running: Running = await start_server(auth_token_file=str(tokens))
    base = f"http://127.0.0.1:{running.server.http_port}"
    bad = {"Authorization": f"Bearer {WRONG}"}
    wav = encoded_signal("wav", 1.0, 16000, 1)
    oip_stub = oip_grpc.GRPCInferenceServiceStub(running.channel)

    async def grpc_refused(call: Awaitable[object]) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not accepted" in (info.value.details() or "")

    async with aiohttp.ClientSession() as http:

        async def emotion_v1() -> None:
            await grpc_refused(running.stub.Recognize(raw_request(tone(1.0)), timeout=10,
                                                      metadata=(("authorization", f"Bearer {WRONG}"),)))

        async def oip_over_grpc() -> None:
            await grpc_refused(oip_stub.ServerMetadata(oip_pb.ServerMetadataRequest(), timeout=10,
                                                       metadata=(("authorization", f"Bearer {WRONG}"),)))

        async def oip_over_http() -> None:
            async with http.get(base + "/v2", headers=bad) as r:
                assert r.status == 401 and "not accepted" in (await r.json())["error"]

        async def v1_over_http() -> None:
            async with http.post(base + "/v1/recognize", data=wav, headers=bad) as r:
                assert r.status == 401 and "not accepted" in (await r.json())["error"]

        async def websocket_header() -> None:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(base + "/v1/stream", headers=bad)
            assert info.value.status == 401

        async def websocket_subprotocol() -> None:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(base + "/v1/stream", protocols=("emotion.v1", f"bearer.{WRONG}"))
            assert info.value.status == 401

        async def websocket_config_message() -> None:
            async with http.ws_connect(base + "/v1/stream", protocols=("emotion.v1",)) as ws:
                await ws.send_json({"encoding": "s16le", "sample_rate_hz": 16000, "token": WRONG})
                message = await ws.receive_json(timeout=10)
                assert message["type"] == "error" and message["status"] == 401, message
                assert "not accepted" in message["error"]

        cases: list[tuple[str, str, Callable[[], Awaitable[None]]]] = [
            ("Recognize", "emotion_v1", emotion_v1),
            ("ServerMetadata", "oip_grpc", oip_over_grpc),
            ("ServerMetadata", "oip_http", oip_over_http),
            ("Recognize", "http", v1_over_http),
            ("StreamRecognize", "ws", websocket_header),
            ("StreamRecognize", "ws", websocket_subprotocol),
            ("StreamRecognize", "ws", websocket_config_message),
        ]
        for rpc, protocol, refuse in cases:
            before = _samples(running.scrape())
            await refuse()
            assert _delta(before, _samples(running.scrape())) == _expected(rpc, protocol), refuse.__name__

        # The same token is accepted everywhere (and nothing more is counted as a refusal).
        before = _samples(running.scrape())
        good = {"Authorization": f"Bearer {TOKEN}"}
        response = await running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10,
                                                   metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert response.model.name
        await oip_stub.ServerMetadata(oip_pb.ServerMetadataRequest(), timeout=10,
                                      metadata=(("authorization", f"Bearer {TOKEN}"),))
        async with http.get(base + "/v2", headers=good) as r:
            assert r.status == 200
        async with http.get(base + "/v1/model", headers=good) as r:
            assert r.status == 200
        delta = _delta(before, _samples(running.scrape()))
        assert not any(name == "emotion_rejections_total" or ("code", "UNAUTHENTICATED") in labels
                       for name, labels in delta), delta
