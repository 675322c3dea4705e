"""server/auth.py and server/tls.py (through their gRPC adapters, server/grpc/auth.py and credentials.py)
against a real grpc.aio server on port 0: TLS, mutual TLS and bearer tokens.

The server here is a small echo service (all four call cardinalities) plus the real grpc health and
reflection services, so these tests depend on nothing but the auth and TLS modules and a real ServerMetrics
(where refusals are counted); the tests against the real emotion server live in test_server_security.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from emotion2vec_serving.server.auth import BearerAuth, TokenStore, load_tokens
from emotion2vec_serving.server.grpc.auth import TokenAuthInterceptor
from emotion2vec_serving.server.grpc.credentials import server_credentials
from emotion2vec_serving.server.metrics import ServerMetrics
from emotion2vec_serving.server.tls import SecurityConfigError
from tests.support.certs import CertSet, make_cert_set

TOKEN = "s3cret-token-0123456789abcdef"
OTHER_TOKEN = "another-token-abcdef0123456789"
SERVICE = "test.Echo"


@dataclass
class Calls:
    """How often each echo handler actually ran: a refused call must never reach its handler."""

    counts: dict[str, int] = field(default_factory=dict)

    def hit(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _echo_handler(calls: Calls) -> grpc.GenericRpcHandler:
    async def unary_unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        calls.hit("UnaryUnary")
        return b"uu:" + request

    async def unary_stream(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        calls.hit("UnaryStream")
        for i in range(3):
            yield b"us%d:" % i + request

    async def stream_unary(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        calls.hit("StreamUnary")
        parts = [r async for r in requests]
        return b"su:" + b"".join(parts)

    async def stream_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        calls.hit("StreamStream")
        async for r in requests:
            yield b"ss:" + r

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
        },
    )


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    calls: Calls
    metrics: ServerMetrics

    def rejections(self) -> float:
        """``emotion_rejections_total{reason="unauthenticated"}`` of this server."""
        registry = self.metrics.registry
        value = registry.get_sample_value("emotion_rejections_total", {"reason": "unauthenticated"})
        return value or 0.0


async def _start(
    *,
    credentials: grpc.ServerCredentials | None = None,
    interceptor_kwargs: dict[str, Any] | None = None,
    tokens: TokenStore | None = None,
) -> Running:
    calls = Calls()
    metrics = ServerMetrics()
    interceptors = []
    if tokens is not None:
        interceptors.append(TokenAuthInterceptor(BearerAuth(tokens, metrics, **(interceptor_kwargs or {}))))
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((_echo_handler(calls),))
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    addr = "127.0.0.1:0"
    port = server.add_secure_port(addr, credentials) if credentials else server.add_insecure_port(addr)
    await server.start()
    return Running(server, port, calls, metrics)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return make_cert_set(tmp_path_factory.mktemp("certs"))


def _methods(channel: grpc.aio.Channel) -> dict[str, Any]:
    ident = lambda b: b  # noqa: E731 - raw bytes in and out
    kw = {"request_serializer": ident, "response_deserializer": ident}
    return {
        "uu": channel.unary_unary(f"/{SERVICE}/UnaryUnary", **kw),
        "us": channel.unary_stream(f"/{SERVICE}/UnaryStream", **kw),
        "su": channel.stream_unary(f"/{SERVICE}/StreamUnary", **kw),
        "ss": channel.stream_stream(f"/{SERVICE}/StreamStream", **kw),
    }


async def _call_all(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] | None) -> list[bytes]:
    """Calls every cardinality once; returns every response message in order."""
    m = _methods(channel)

    def two() -> Iterator[bytes]:
        yield b"a"
        yield b"b"

    out: list[bytes] = [await m["uu"](b"x", metadata=metadata, timeout=10)]
    out += [r async for r in m["us"](b"y", metadata=metadata, timeout=10)]
    out.append(await m["su"](two(), metadata=metadata, timeout=10))
    out += [r async for r in m["ss"](two(), metadata=metadata, timeout=10)]
    return out


EXPECTED_ECHO = [b"uu:x", b"us0:y", b"us1:y", b"us2:y", b"su:ab", b"ss:a", b"ss:b"]


async def _health(channel: grpc.aio.Channel, metadata: Any = None) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), metadata=metadata, timeout=10)
    return int(resp.status)


# ---------------------------------------------------------------------------------- credentials


def test_no_tls_settings_means_plaintext() -> None:
    assert server_credentials(None, None, None) is None
    assert server_credentials("", "", "") is None


def test_half_a_tls_configuration_is_refused(certs: CertSet) -> None:
    with pytest.raises(SecurityConfigError, match="private key"):
        server_credentials(certs.path("server.pem"), None)
    with pytest.raises(SecurityConfigError, match="certificate"):
        server_credentials(None, certs.path("server.key"))
    with pytest.raises(SecurityConfigError, match="client CA"):
        server_credentials(None, None, certs.path("ca.pem"))


def test_unreadable_or_non_pem_files_are_refused_with_the_path(certs: CertSet, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(SecurityConfigError, match=r"nope\.pem"):
        server_credentials(missing, certs.path("server.key"))
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate")
    with pytest.raises(SecurityConfigError, match="not PEM"):
        server_credentials(certs.path("server.pem"), junk)


# ------------------------------------------------------------------------------------------ TLS


async def test_tls_serves_trusting_clients_and_refuses_plaintext_and_untrusting_ones(certs: CertSet) -> None:
    creds = server_credentials(certs.path("server.pem"), certs.path("server.key"))
    assert creds is not None
    run = await _start(credentials=creds)
    target = f"localhost:{run.port}"
    try:
        good = grpc.ssl_channel_credentials(root_certificates=certs.ca.cert)
        async with grpc.aio.secure_channel(target, good) as ch:
            assert await _health(ch) == health_pb2.HealthCheckResponse.SERVING
            assert await _call_all(ch, None) == EXPECTED_ECHO

        async with grpc.aio.insecure_channel(target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _health(ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        wrong_root = grpc.ssl_channel_credentials(root_certificates=certs.rogue_ca.cert)
        async with grpc.aio.secure_channel(target, wrong_root) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _health(ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert run.calls.counts == {"UnaryUnary": 1, "UnaryStream": 1, "StreamUnary": 1, "StreamStream": 1}
    finally:
        await run.server.stop(None)


async def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(certs: CertSet) -> None:
    creds = server_credentials(certs.path("server.pem"), certs.path("server.key"), certs.path("ca.pem"))
    assert creds is not None
    run = await _start(credentials=creds)
    target = f"localhost:{run.port}"
    try:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=certs.ca.cert, private_key=certs.client.key, certificate_chain=certs.client.cert
        )
        async with grpc.aio.secure_channel(target, with_cert) as ch:
            assert await _call_all(ch, None) == EXPECTED_ECHO

        refused = {
            "no client certificate": grpc.ssl_channel_credentials(root_certificates=certs.ca.cert),
            "certificate from another CA": grpc.ssl_channel_credentials(
                root_certificates=certs.ca.cert,
                private_key=certs.rogue_client.key,
                certificate_chain=certs.rogue_client.cert,
            ),
        }
        for why, creds_ in refused.items():
            async with grpc.aio.secure_channel(target, creds_) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _methods(ch)["uu"](b"x", timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, why
        # Only the authorised client's calls reached a handler.
        assert run.calls.total == 4
    finally:
        await run.server.stop(None)


# --------------------------------------------------------------------------------------- tokens


def _store(*tokens: str) -> TokenStore:
    return TokenStore(tokens)


async def test_a_valid_token_reaches_every_kind_of_method() -> None:
    run = await _start(tokens=_store(TOKEN, OTHER_TOKEN))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{run.port}") as ch:
            for token in (TOKEN, OTHER_TOKEN):
                assert await _call_all(ch, (("authorization", f"Bearer {token}"),)) == EXPECTED_ECHO
            # The scheme is case-insensitive (RFC 7235).
            assert await _methods(ch)["uu"](b"x", metadata=(("authorization", f"bearer {TOKEN}"),)) == b"uu:x"
        assert run.rejections() == 0
    finally:
        await run.server.stop(None)


BAD_METADATA: dict[str, tuple[tuple[str, str], ...] | None] = {
    "missing": None,
    "wrong token": (("authorization", "Bearer wrong-token-0123456789abcdef"),),
    "token prefix": (("authorization", f"Bearer {TOKEN[:-1]}"),),
    "token plus suffix": (("authorization", f"Bearer {TOKEN}x"),),
    "no scheme": (("authorization", TOKEN),),
    "basic scheme": (("authorization", f"Basic {TOKEN}"),),
    "empty bearer": (("authorization", "Bearer "),),
    "token with a space": (("authorization", f"Bearer {TOKEN[:8]} {TOKEN[8:]}"),),
    "two headers": (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
    "token in another header": (("x-api-key", TOKEN),),
}


async def test_missing_or_wrong_tokens_get_unauthenticated_on_every_kind_of_method() -> None:
    run = await _start(tokens=_store(TOKEN))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{run.port}") as ch:
            m = _methods(ch)
            for why, metadata in BAD_METADATA.items():
                calls = {
                    "uu": lambda md=metadata: m["uu"](b"x", metadata=md, timeout=10),
                    "us": lambda md=metadata: _drain(m["us"](b"x", metadata=md, timeout=10)),
                    # Request-streaming calls send nothing before the status arrives: a grpc.aio client
                    # whose write races the server's early status reports INTERNAL instead of the server's
                    # status (grpc/grpc#36066, a client bug), which would make this test flaky.
                    "su": lambda md=metadata: _status_of(m["su"](metadata=md, timeout=10)),
                    "ss": lambda md=metadata: _status_of(m["ss"](metadata=md, timeout=10)),
                }
                for kind, call in calls.items():
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call()
                    err = info.value
                    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (why, kind, err)
                    assert "credentials" in (err.details() or ""), (why, kind, err.details())
            missing = await _expect_error(m["uu"](b"x", timeout=10))
            assert "authorization: Bearer <token>" in (missing.details() or "")
        assert run.calls.total == 0, "a refused call reached its handler"
        assert run.rejections() == len(BAD_METADATA) * 4 + 1
    finally:
        await run.server.stop(None)


async def _status_of(call: Any) -> None:
    """Waits for a streaming call's status without writing; raises it as AioRpcError unless OK."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise grpc.aio.AioRpcError(
            code, await call.initial_metadata(), await call.trailing_metadata(), details=await call.details()
        )


async def _drain(call: Any) -> list[bytes]:
    return [r async for r in call]


async def _expect_error(awaitable: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


async def test_health_is_reachable_without_a_token_only_when_exempt() -> None:
    exempt = await _start(tokens=_store(TOKEN))
    strict = await _start(tokens=_store(TOKEN), interceptor_kwargs={"exempt_health": False})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{exempt.port}") as ch:
            assert await _health(ch) == health_pb2.HealthCheckResponse.SERVING
            # The exemption covers health only, not the service.
            err = await _expect_error(_methods(ch)["uu"](b"x", timeout=10))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{strict.port}") as ch:
            err = await _expect_error(_health(ch))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await _health(ch, (("authorization", f"Bearer {TOKEN}"),)) == 1
    finally:
        await exempt.server.stop(None)
        await strict.server.stop(None)


async def _list_services(channel: grpc.aio.Channel, metadata: Any = None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata, timeout=10
    )
    names: list[str] = []
    async for resp in call:
        names += [s.name for s in resp.list_services_response.service]
    return names


async def test_reflection_needs_a_token_unless_exempted() -> None:
    default = await _start(tokens=_store(TOKEN))
    open_reflection = await _start(tokens=_store(TOKEN), interceptor_kwargs={"exempt_reflection": True})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{default.port}") as ch:
            err = await _expect_error(
                _status_of(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo())
            )
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert SERVICE in await _list_services(ch, (("authorization", f"Bearer {TOKEN}"),))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{open_reflection.port}") as ch:
            assert SERVICE in await _list_services(ch)
    finally:
        await default.server.stop(None)
        await open_reflection.server.stop(None)


async def test_unknown_methods_are_refused_before_revealing_that_they_do_not_exist() -> None:
    run = await _start(tokens=_store(TOKEN))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{run.port}") as ch:
            probe = ch.unary_unary("/test.Echo/DoesNotExist")
            err = await _expect_error(probe(b"x", timeout=10))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            err = await _expect_error(
                probe(b"x", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
            )
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await run.server.stop(None)


async def test_token_over_mutual_tls(certs: CertSet) -> None:
    creds = server_credentials(certs.path("server.pem"), certs.path("server.key"), certs.path("ca.pem"))
    run = await _start(credentials=creds, tokens=_store(TOKEN))
    try:
        client = grpc.ssl_channel_credentials(
            root_certificates=certs.ca.cert, private_key=certs.client.key, certificate_chain=certs.client.cert
        )
        both = grpc.composite_channel_credentials(client, grpc.access_token_call_credentials(TOKEN))
        async with grpc.aio.secure_channel(f"localhost:{run.port}", both) as ch:
            assert await _call_all(ch, None) == EXPECTED_ECHO
        async with grpc.aio.secure_channel(f"localhost:{run.port}", client) as ch:
            err = await _expect_error(_methods(ch)["uu"](b"x", timeout=10))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await run.server.stop(None)


# ---------------------------------------------------------------------------------- token store


def test_token_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# rotated 2026-01-01\n{TOKEN}\n\n  {OTHER_TOKEN}  \n", encoding="utf-8")
    monkeypatch.setenv("EMOTION_AUTH_TOKENS", "env-token-0123456789abcdef, env-token-2-0123456789abcdef")
    assert load_tokens(path) == [
        TOKEN,
        OTHER_TOKEN,
        "env-token-0123456789abcdef",
        "env-token-2-0123456789abcdef",
    ]
    store = TokenStore.from_settings(str(path))
    assert store is not None and len(store) == 4
    assert store.check("env-token-0123456789abcdef") and store.check(TOKEN)
    assert not store.check("env-token-0123456789abcde")
    # grpc refuses non-ASCII header values on the client, but the store must not crash on them either.
    assert not store.check("tökén-0123456789abcdef")


def test_no_token_configured_means_no_auth_and_an_empty_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMOTION_AUTH_TOKENS", raising=False)
    assert TokenStore.from_settings(None) is None
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(SecurityConfigError, match="no token"):
        TokenStore.from_settings(str(empty))
    short = tmp_path / "short"
    short.write_text("abc\n", encoding="utf-8")
    with pytest.raises(SecurityConfigError, match="at least"):
        TokenStore.from_settings(str(short))
    with pytest.raises(SecurityConfigError, match="cannot read"):
        TokenStore.from_settings(str(tmp_path / "missing"))


async def test_rotating_the_token_file_takes_effect_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    store = TokenStore(token_file=path, reload_interval_s=0.0)
    run = await _start(tokens=store)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{run.port}") as ch:
            uu = _methods(ch)["uu"]
            assert await uu(b"x", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10) == b"uu:x"
            path.write_text(OTHER_TOKEN + "\n", encoding="utf-8")
            # mtime resolution can be coarse: make the change visible for certain.
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
            err = await _expect_error(uu(b"x", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert (
                await uu(b"x", metadata=(("authorization", f"Bearer {OTHER_TOKEN}"),), timeout=10) == b"uu:x"
            )
            # A broken file keeps the last good tokens: neither lock everyone out nor let anyone in.
            path.write_text("x\n", encoding="utf-8")
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 20_000_000))
            assert (
                await uu(b"x", metadata=(("authorization", f"Bearer {OTHER_TOKEN}"),), timeout=10) == b"uu:x"
            )
    finally:
        await run.server.stop(None)


async def test_many_concurrent_mixed_calls_are_each_judged_on_their_own_token() -> None:
    run = await _start(tokens=_store(TOKEN))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{run.port}") as ch:
            uu = _methods(ch)["uu"]

            async def one(i: int) -> tuple[int, bool]:
                md = (("authorization", f"Bearer {TOKEN if i % 3 else 'bad-token-0123456789abcdef'}"),)
                try:
                    return i, await uu(b"%d" % i, metadata=md, timeout=10) == b"uu:%d" % i
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    return i, False

            results = await asyncio.gather(*(one(i) for i in range(150)))
        assert all(ok == bool(i % 3) for i, ok in results)
        assert run.calls.total == 100
    finally:
        await run.server.stop(None)
