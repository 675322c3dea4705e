"""TLS, mutual TLS and bearer tokens on the real emotion server, configured only through its settings."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from emotion.v1 import emotion_pb2 as pb
from emotion.v1 import emotion_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.app import EmotionServer
from emotion2vec_serving.server.grpc.health import SERVICE_NAME
from tests.support.calls import raw_request, tone
from tests.support.certs import CertSet, make_cert_set
from tests.support.metrics import metric_value
from tests.support.servers import RELIABILITY_SETTINGS

TOKEN = "reliability-token-0123456789abcdef"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return make_cert_set(tmp_path_factory.mktemp("server-certs"))


@pytest.fixture
async def secure_server(
    manifest: ModelManifest, certs: CertSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[EmotionServer]:
    monkeypatch.delenv("EMOTION_AUTH_TOKENS", raising=False)
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# test\n{TOKEN}\n", encoding="utf-8")
    settings = dataclasses.replace(
        RELIABILITY_SETTINGS,
        tls_cert_file=str(certs.path("server.pem")),
        tls_key_file=str(certs.path("server.key")),
        tls_client_ca_file=str(certs.path("ca.pem")),
        auth_token_file=str(token_file),
    )
    server = EmotionServer(settings, manifest)
    await server.start()
    yield server
    await server.stop()


def _creds(certs: CertSet, *, client_cert: bool = True, token: str | None = TOKEN) -> Any:
    tls = (
        grpc.ssl_channel_credentials(certs.ca.cert, certs.client.key, certs.client.cert)
        if client_cert
        else grpc.ssl_channel_credentials(certs.ca.cert)
    )
    return (
        tls
        if token is None
        else grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
    )


async def _recognize(server: EmotionServer, creds: Any) -> tuple[str, str]:
    async with grpc.aio.secure_channel(f"localhost:{server.port}", creds) as channel:
        try:
            resp = await emotion_pb2_grpc.EmotionRecognizerStub(channel).Recognize(
                raw_request(tone(0.5)), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details() or ""
        return "OK", resp.utterance.label


async def test_mutual_tls_and_token_on_the_real_server(secure_server: EmotionServer, certs: CertSet) -> None:
    code, label = await _recognize(secure_server, _creds(certs))
    assert code == "OK" and label
    code, details = await _recognize(secure_server, _creds(certs, token=None))
    assert code == "UNAUTHENTICATED" and "Bearer" in details
    code, _ = await _recognize(secure_server, _creds(certs, token="not-the-token-0123456789abcdef"))
    assert code == "UNAUTHENTICATED"
    code, _ = await _recognize(secure_server, _creds(certs, client_cert=False))
    assert code == "UNAVAILABLE"  # the TLS handshake fails without a client certificate
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secure_server.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await emotion_pb2_grpc.EmotionRecognizerStub(plain).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # Health needs the client certificate (transport) but no token (probes hold no secret).
    async with grpc.aio.secure_channel(f"localhost:{secure_server.port}", _creds(certs, token=None)) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    text = await asyncio.to_thread(_scrape, secure_server.metrics_port)
    assert metric_value(text, "emotion_rejections_total", reason="unauthenticated") == 2


def _scrape(port: int | None) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())
