"""TLS, mutual TLS and bearer tokens from the client's side.

A real gRPC server with TLS that requires client certificates sits in front of the real model server
and forwards admitted calls; certificates are made per session with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from emotion.v1 import emotion_pb2_grpc

from emotion2vec_serving.clients import NO_RETRY, AsyncEmotionClient, EmotionClient, TLSConfig, Unavailable
from tests.support.clients import AudioSet, SheddingProxy


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _issue(
    directory: Path,
    name: str,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if name == "localhost":
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return subject, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    ca = _issue(d, "ca", None, ca=True)
    rogue = _issue(d, "rogue-ca", None, ca=True)
    _issue(d, "localhost", ca)
    _issue(d, "client", ca)
    _issue(d, "rogue-client", rogue)
    return Certs(
        ca=d / "ca.crt",
        server_cert=d / "localhost.crt",
        server_key=d / "localhost.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
        rogue_ca=d / "rogue-ca.crt",
        rogue_cert=d / "rogue-client.crt",
        rogue_key=d / "rogue-client.key",
    )


@pytest.fixture(scope="module")
def mtls_proxy(target: str, certs: Certs) -> Iterator[tuple[SheddingProxy, str]]:
    servicer = SheddingProxy(target)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    emotion_pb2_grpc.add_EmotionRecognizerServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
        root_certificates=certs.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield servicer, f"localhost:{port}"
    finally:
        server.stop(grace=None)
        servicer.close()


def test_mutual_tls_with_token_as_call_credentials(
    mtls_proxy: tuple[SheddingProxy, str], certs: Certs, audio: AudioSet
) -> None:
    shed, address = mtls_proxy
    shed.reset(refuse=0)
    tls = TLSConfig(root_cert=certs.ca, client_cert=certs.client_cert, client_key=certs.client_key)
    with EmotionClient(address, tls=tls, token="tls-token") as client:
        result = client.recognize(audio.ogg)
    assert result.label in result.scores
    assert shed.metadata[0].get("authorization") == "Bearer tls-token"


async def test_async_client_over_mutual_tls(
    mtls_proxy: tuple[SheddingProxy, str], certs: Certs, audio: AudioSet
) -> None:
    shed, address = mtls_proxy
    shed.reset(refuse=0)
    tls = TLSConfig(root_cert=certs.ca, client_cert=certs.client_cert, client_key=certs.client_key)
    async with AsyncEmotionClient(address, tls=tls, token="aio-token") as client:
        info = await client.model_info()
    assert info.embedding_dim > 0
    assert shed.metadata[0].get("authorization") == "Bearer aio-token"


@pytest.mark.parametrize("case", ["no client certificate", "client cert from another CA", "wrong root"])
def test_handshake_failures_are_unavailable(
    mtls_proxy: tuple[SheddingProxy, str], certs: Certs, case: str
) -> None:
    shed, address = mtls_proxy
    shed.reset(refuse=0)
    tls = {
        "no client certificate": TLSConfig(root_cert=certs.ca),
        "client cert from another CA": TLSConfig(
            root_cert=certs.ca, client_cert=certs.rogue_cert, client_key=certs.rogue_key
        ),
        "wrong root": TLSConfig(
            root_cert=certs.rogue_ca, client_cert=certs.client_cert, client_key=certs.client_key
        ),
    }[case]
    with EmotionClient(address, tls=tls, retry=NO_RETRY, timeout_s=5) as client, pytest.raises(Unavailable):
        client.model_info()
    assert shed.calls == 0  # refused during the handshake: the servicer never ran


def test_tls_config_requires_cert_and_key_together(certs: Certs) -> None:
    with pytest.raises(ValueError, match="together"):
        TLSConfig(root_cert=certs.ca, client_cert=certs.client_cert)
