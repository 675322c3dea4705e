"""TLS certificates rotated under a running server, on the gRPC port and the HTTP port (REST, page; with
mutual TLS too): new connections get the new certificate, connections already open keep working, and files
caught mid-rotation (a certificate without its new key) never break the server.

The real in-process server on port 0 with the real tiny model; the certificate files are swapped the way a
Kubernetes Secret update does it (new files, then an atomic rename over the old paths).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emotion2vec_serving.server.tls import CertificateFiles, SecurityConfigError
from tests.support.certs import CertSet, Pem, make_cert_set
from tests.support.polling import wait_until_async
from tests.support.servers import Running, StartServer


def _install(live: Path, pem: Pem, *, key: bool = True) -> None:
    """Write the server's PEMs as a Secret update does: next to the live files, then rename over them."""
    parts = [("server.pem", pem.cert)] + ([("server.key", pem.key)] if key else [])
    for name, data in parts:
        tmp = live / f".{name}.new"
        tmp.write_bytes(data)
        os.replace(tmp, live / name)


def _served_certificate(port: int) -> x509.Certificate:
    """The certificate a brand-new TLS connection to the server is shown (no verification: we only look)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _cert(pem: Pem) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.cert)


async def _health(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _new_connection_trusting(port: int, ca: Pem) -> grpc.StatusCode:
    async with grpc.aio.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca.cert)) as channel:
        return await _health(channel)


@pytest.fixture
def two_cas(tmp_path: Path) -> tuple[CertSet, CertSet, Path]:
    """Two unrelated certificate sets and a live directory holding the first one's server files."""
    old, new = make_cert_set(tmp_path / "old"), make_cert_set(tmp_path / "new")
    live = tmp_path / "live"
    live.mkdir()
    _install(live, old.server)
    return old, new, live


async def test_a_rotated_certificate_reaches_new_connections_without_a_restart(
        start_server: StartServer, two_cas: tuple[CertSet, CertSet, Path]) -> None:
    old, new, live = two_cas
    running: Running = await start_server(tls_cert_file=str(live / "server.pem"),
                                          tls_key_file=str(live / "server.key"))
    port = running.server.port
    assert _served_certificate(port) == _cert(old.server)
    assert await _new_connection_trusting(port, old.ca) == grpc.StatusCode.OK
    assert await _new_connection_trusting(port, new.ca) == grpc.StatusCode.UNAVAILABLE

    # A connection opened before the rotation.
    kept = grpc.aio.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(old.ca.cert))
    try:
        assert await _health(kept) == grpc.StatusCode.OK

        # Mid-rotation: the new certificate is in place but its key is not yet. New connections still get
        # the complete old pair; nothing fails.
        _install(live, new.server, key=False)
        assert _served_certificate(port) == _cert(old.server)
        assert await _new_connection_trusting(port, old.ca) == grpc.StatusCode.OK

        _install(live, new.server)
        # The first handshake after the swap reloads.
        await wait_until_async(lambda: _served_certificate(port) == _cert(new.server), 10, 0.05,
                               "the server still shows the old certificate")
        assert await _new_connection_trusting(port, new.ca) == grpc.StatusCode.OK
        assert await _new_connection_trusting(port, old.ca) == grpc.StatusCode.UNAVAILABLE
        # The connection opened before the rotation is not cut.
        assert await _health(kept) == grpc.StatusCode.OK
    finally:
        await kept.close()


def test_files_that_do_not_belong_together_are_refused_at_start_and_kept_out_later(
        two_cas: tuple[CertSet, CertSet, Path]) -> None:
    old, new, live = two_cas
    mixed = live.parent / "mixed"
    mixed.mkdir()
    (mixed / "server.pem").write_bytes(old.server.cert)
    (mixed / "server.key").write_bytes(new.server.key)
    with pytest.raises(SecurityConfigError, match="do not belong together"):
        CertificateFiles(mixed / "server.pem", mixed / "server.key")

    files = CertificateFiles(live / "server.pem", live / "server.key")
    assert files.fetch() is None  # unchanged
    (live / "server.key").write_bytes(b"not a key")
    assert files.fetch() is None and files.reloads == 0  # unusable: keep the current pair
    _install(live, new.server)
    assert files.fetch() is not None and files.reloads == 1
    assert files.fetch() is None


# --------------------------------------------------------------------------- the HTTP port (issue 22, item 7)

def _https_get(port: int, server_ca: Pem | None, client: tuple[Path, Path] | None = None,
               path: str = "/v2/health/live") -> x509.Certificate | str:
    """A brand-new HTTPS connection's GET: the certificate it was shown when answered 200, else why not.

    ``server_ca``: verify the server against it (``None``: only look). ``client``: (certificate, key) files
    to present (mutual TLS).
    """
    import socket

    context = ssl.create_default_context()
    context.check_hostname = False
    if server_ca is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=server_ca.cert.decode())
    if client is not None:
        context.load_cert_chain(*client)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    except (ssl.SSLError, OSError) as exc:  # a refused client certificate (TLS 1.3: seen on the first read)
        return f"refused: {exc}"
    if not answer.startswith(b"HTTP/1.1 200"):
        return f"answered {answer[:40]!r}"
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_a_rotated_certificate_reaches_new_https_connections_without_a_restart(
        start_server: StartServer, two_cas: tuple[CertSet, CertSet, Path]) -> None:
    old, new, live = two_cas
    running: Running = await start_server(tls_cert_file=str(live / "server.pem"),
                                          tls_key_file=str(live / "server.key"))
    port = running.server.http_port
    assert port is not None

    def shown() -> x509.Certificate | str:  # off the event loop: the in-process server answers on it
        return _https_get(port, None)

    assert await asyncio.to_thread(shown) == _cert(old.server)
    assert await asyncio.to_thread(_https_get, port, old.ca) == _cert(old.server)

    # Mid-rotation (the new certificate without its key): the complete old pair is still served.
    _install(live, new.server, key=False)
    assert await asyncio.to_thread(shown) == _cert(old.server)

    _install(live, new.server)

    async def new_one_shown() -> bool:
        return await asyncio.to_thread(shown) == _cert(new.server)

    await wait_until_async(new_one_shown, 10, 0.05, "the HTTPS port still shows the old certificate")
    assert _cert(new.server).serial_number != _cert(old.server).serial_number
    assert await asyncio.to_thread(_https_get, port, new.ca) == _cert(new.server)
    assert isinstance(await asyncio.to_thread(_https_get, port, old.ca), str)  # old CA: not trusted now


async def test_mutual_tls_over_https_follows_a_rotated_client_ca(
        start_server: StartServer, two_cas: tuple[CertSet, CertSet, Path]) -> None:
    old, new, live = two_cas
    (live / "client_ca.pem").write_bytes(old.ca.cert)
    running: Running = await start_server(tls_cert_file=str(live / "server.pem"),
                                          tls_key_file=str(live / "server.key"),
                                          tls_client_ca_file=str(live / "client_ca.pem"))
    port = running.server.http_port
    assert port is not None
    old_client = (old.path("client.pem"), old.path("client.key"))
    new_client = (new.path("client.pem"), new.path("client.key"))
    # A client certificate is required, and it must come from the configured client CA.
    assert isinstance(await asyncio.to_thread(_https_get, port, old.ca), str)
    assert await asyncio.to_thread(_https_get, port, old.ca, old_client) == _cert(old.server)
    assert isinstance(await asyncio.to_thread(_https_get, port, old.ca, new_client), str)

    # Rotate everything: the server certificate and the client CA.
    _install(live, new.server)
    tmp = live / ".client_ca.pem.new"
    tmp.write_bytes(new.ca.cert)
    os.replace(tmp, live / "client_ca.pem")

    async def new_client_accepted() -> bool:
        return await asyncio.to_thread(_https_get, port, new.ca, new_client) == _cert(new.server)

    await wait_until_async(new_client_accepted, 10, 0.05, "a client of the new CA is still refused")
    # A client of the old CA is refused now (a TLS alert, or the connection closed without an answer).
    refused = await asyncio.to_thread(_https_get, port, None, old_client)
    assert refused in ("answered b''",) or str(refused).startswith("refused"), refused
