"""Transport security and authentication: TLS / mutual TLS credentials and a bearer-token interceptor.

Standard library and grpc only, so the rest of the server can wire it in without new dependencies.

- :func:`server_credentials` turns PEM file paths into ``grpc.ServerCredentials`` (TLS, or mutual TLS when
  a client CA is given) or ``None`` for plaintext. The credentials re-read the files when they change
  (:class:`CertificateFiles`): a rotated certificate (a cert-manager renewal, a re-mounted Secret) is served
  to new connections without a restart; connections already open keep theirs.
- :class:`TokenAuthInterceptor` is a ``grpc.aio.ServerInterceptor`` that requires
  ``authorization: Bearer <token>`` on every call except the exempt methods (health checks, and
  reflection when asked), for unary and streaming methods alike.
- :func:`load_tokens` reads the accepted tokens from a file (one per line) and/or an environment variable.

Nothing here ever uses a value sent by a client as a path: file paths come from the operator's settings only.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

__all__ = [
    "HEALTH_METHOD_PREFIX",
    "REFLECTION_METHOD_PREFIXES",
    "CertificateFiles",
    "SecurityConfigError",
    "TokenAuthInterceptor",
    "TokenStore",
    "load_tokens",
    "read_pem",
    "server_credentials",
]

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_METHOD_PREFIXES = (
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)
TOKENS_ENV_VAR = "EMOTION_AUTH_TOKENS"
# A token shorter than this is almost certainly a mistake (an empty line, a placeholder), not a secret.
MIN_TOKEN_CHARS = 16
_MAX_PEM_BYTES = 1 << 20

log = logging.getLogger(__name__)


class SecurityConfigError(ValueError):
    """The operator's security settings are unusable (missing file, half a key pair, no tokens)."""


# ---------------------------------------------------------------------------------------------- TLS


def read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    """Reads a PEM file named by the operator; fails with a message that says which setting is wrong."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what} file {str(p)!r}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_PEM_BYTES:
        raise SecurityConfigError(
            f"the {what} file {str(p)!r} is {len(data)} bytes; a PEM file is far smaller"
        )
    if b"-----BEGIN " not in data:
        raise SecurityConfigError(f"the {what} file {str(p)!r} is not PEM (no '-----BEGIN' line)")
    return data


def server_credentials(
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
    client_ca_file: str | os.PathLike[str] | None = None,
) -> grpc.ServerCredentials | None:
    """Server credentials from PEM paths, or ``None`` when no certificate is configured (plaintext).

    - certificate + key: TLS.
    - certificate + key + client CA: mutual TLS; clients must present a certificate signed by that CA
      (``require_client_auth=True``), otherwise the handshake fails before any RPC runs.

    The files are re-read when they change (``grpc.dynamic_ssl_server_credentials``; see
    :class:`CertificateFiles`). Raises :class:`SecurityConfigError` for half a configuration (a certificate
    without its key, a client CA without a server certificate) rather than silently serving plaintext, and
    for a certificate and key that do not belong together.
    """
    if not cert_file and not key_file:
        if client_ca_file:
            raise SecurityConfigError(
                "a client CA (mutual TLS) needs a server certificate and key as well; "
                "set the TLS certificate and key files too"
            )
        return None
    if not cert_file or not key_file:
        missing = "certificate" if not cert_file else "private key"
        raise SecurityConfigError(
            f"TLS needs both a certificate and a private key; the {missing} file is not set"
        )
    files = CertificateFiles(cert_file, key_file, client_ca_file or None)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files.fetch, require_client_authentication=bool(client_ca_file)
    )


class CertificateFiles:
    """The server's certificate, key and client CA files, re-read when they change.

    gRPC calls :meth:`fetch` before each TLS handshake of a new connection; it answers ``None`` (keep the
    current certificates) unless a file's identity changed (inode, size, modification time: a Kubernetes
    Secret update swaps a symlink, cert-manager rewrites the files). A changed set is served only once it is
    complete and consistent: a certificate that does not match its key (the files caught mid-rotation) or a
    file that is not PEM leaves the previous certificates in place, and the next handshake looks again.
    """

    def __init__(self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str],
                 client_ca_file: str | os.PathLike[str] | None = None) -> None:
        self._paths = [Path(cert_file), Path(key_file)] + ([Path(client_ca_file)] if client_ca_file else [])
        self._lock = threading.Lock()
        self.reloads = 0
        stamp = self._stamp()
        loaded = self._load()
        if isinstance(loaded, str):
            raise SecurityConfigError(loaded)
        self._stamp_seen = stamp
        self.initial = loaded

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self._paths:
            try:
                st = path.stat()
            except OSError:
                out.append((-1, -1, -1))
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _load(self) -> Any:
        """A certificate configuration, or a message saying why the files cannot be used (yet)."""
        try:
            pems = [read_pem(p, what) for p, what in
                    zip(self._paths, ("TLS certificate", "TLS private key", "client CA"), strict=False)]
        except SecurityConfigError as exc:
            return str(exc)
        try:
            # The standard library checks that the key belongs to the certificate.
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._paths[0], self._paths[1])
        except (ssl.SSLError, OSError) as exc:
            return (f"the TLS certificate {str(self._paths[0])!r} and key {str(self._paths[1])!r} do not "
                    f"belong together or cannot be loaded: {exc}")
        key, cert = pems[1], pems[0]
        if [read_pem(p, "TLS file") for p in self._paths[:2]] != [cert, key]:
            return "the TLS files changed while they were being read"
        return grpc.ssl_server_certificate_configuration([(key, cert)],
                                                         root_certificates=pems[2] if len(pems) > 2 else None)

    def fetch(self) -> Any:
        """gRPC's certificate configuration fetcher: a new configuration, or None to keep the current one."""
        stamp = self._stamp()
        if stamp == self._stamp_seen:
            return None
        with self._lock:
            if stamp == self._stamp_seen:
                return None
            loaded = self._load()
            if isinstance(loaded, str):
                log.warning("keeping the current TLS certificate: %s", loaded)
                return None
            self._stamp_seen = stamp
            self.reloads += 1
        log.info("TLS certificate reloaded from %s", self._paths[0])
        return loaded


# ------------------------------------------------------------------------------------------- tokens


def _parse_tokens(text: str, source: str) -> list[str]:
    tokens: list[str] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        token = raw.strip()
        if not token or token.startswith("#"):
            continue
        if len(token) < MIN_TOKEN_CHARS:
            raise SecurityConfigError(
                f"{source} line {line_no}: token is {len(token)} characters; use at least {MIN_TOKEN_CHARS}"
            )
        if any(ch.isspace() for ch in token) or not token.isascii() or not token.isprintable():
            raise SecurityConfigError(
                f"{source} line {line_no}: a token must be printable ASCII without spaces"
            )
        tokens.append(token)
    return tokens


def load_tokens(
    token_file: str | os.PathLike[str] | None = None, env_var: str | None = TOKENS_ENV_VAR
) -> list[str]:
    """Accepted bearer tokens: one per line in ``token_file`` (``#`` comments allowed) plus the
    comma-separated ``env_var``. Several tokens allow rotation without downtime."""
    tokens: list[str] = []
    if token_file:
        p = Path(token_file)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityConfigError(f"cannot read the auth token file {str(p)!r}: {exc}") from exc
        tokens += _parse_tokens(text, f"auth token file {str(p)!r}")
    if env_var:
        value = os.environ.get(env_var, "")
        tokens += _parse_tokens(value.replace(",", "\n"), f"environment variable {env_var}")
    return tokens


class TokenStore:
    """The set of accepted tokens; re-reads its file when the file changes (e.g. a rotated Kubernetes secret).

    Thread-safe. The file is stat-ed at most once per ``reload_interval_s``; a file that became unreadable
    or invalid keeps the previous tokens (dropping to *no* tokens would lock every client out; accepting
    *any* token is never an option).
    """

    def __init__(
        self,
        tokens: Iterable[str] = (),
        *,
        token_file: str | os.PathLike[str] | None = None,
        env_var: str | None = None,
        reload_interval_s: float = 5.0,
    ) -> None:
        self._lock = threading.Lock()
        self._static = [t for t in tokens]
        self._file = Path(token_file) if token_file else None
        self._env_var = env_var
        self._reload_interval_s = reload_interval_s
        self._next_check = 0.0
        self._mtime_ns: int | None = None
        self._tokens: list[bytes] = []
        self._load(initial=True)

    @classmethod
    def from_settings(
        cls, token_file: str | None, *, env_var: str | None = TOKENS_ENV_VAR
    ) -> TokenStore | None:
        """A store when any token is configured (file or environment), otherwise ``None`` (no auth)."""
        if not token_file and not (env_var and os.environ.get(env_var, "").strip()):
            return None
        return cls(token_file=token_file, env_var=env_var)

    def _load(self, *, initial: bool = False) -> None:
        mtime: int | None = None
        if self._file is not None:
            try:
                mtime = self._file.stat().st_mtime_ns
            except OSError as exc:
                if initial:
                    raise SecurityConfigError(
                        f"cannot read the auth token file {str(self._file)!r}: {exc}"
                    ) from exc
                return
            if not initial and mtime == self._mtime_ns:
                return
        try:
            tokens = self._static + load_tokens(self._file, self._env_var)
        except SecurityConfigError:
            if initial:
                raise
            return
        if not tokens:
            if initial:
                raise SecurityConfigError("authentication is enabled but no token is configured")
            return
        self._tokens = [t.encode("ascii") for t in tokens]
        self._mtime_ns = mtime

    def _maybe_reload(self) -> None:
        if self._file is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._reload_interval_s
        self._load()

    def __len__(self) -> int:
        return len(self._tokens)

    def check(self, presented: str) -> bool:
        """True when ``presented`` equals an accepted token. Compares against every token in constant time,
        so the timing says nothing about how much of which token matched."""
        with self._lock:
            self._maybe_reload()
            tokens = self._tokens
        try:
            candidate = presented.encode("ascii")
        except UnicodeEncodeError:
            return False
        ok = False
        for token in tokens:
            ok |= hmac.compare_digest(candidate, token)
        return ok


# -------------------------------------------------------------------------------------- interceptor


@dataclass(frozen=True)
class AuthDecision:
    """Why a call was refused (``None`` message means allowed)."""

    message: str | None


def _metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> list[str]:
    values: list[str] = []
    for item in metadata or ():
        k, v = item[0], item[1]
        if k.lower() == key:
            values.append(v.decode("latin-1") if isinstance(v, bytes) else v)
    return values


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Requires ``authorization: Bearer <token>`` metadata on every call except the exempt methods.

    Refused calls end with UNAUTHENTICATED before the service handler runs and before the request body is
    parsed (the rejection handler takes raw bytes). ``on_reject`` (e.g. a metrics counter increment) is
    called once per refused call; it must not block.

    Args:
        tokens: the accepted tokens.
        exempt_health: let ``/grpc.health.v1.Health/*`` through without a token, so load balancers and
            Kubernetes probes need no secret.
        exempt_reflection: let server reflection through without a token (it reveals the API, not data).
        exempt_methods: further full method names (``/package.Service/Method``) to let through.
    """

    def __init__(
        self,
        tokens: TokenStore,
        *,
        exempt_health: bool = True,
        exempt_reflection: bool = False,
        exempt_methods: Iterable[str] = (),
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self._tokens = tokens
        prefixes: list[str] = []
        if exempt_health:
            prefixes.append(HEALTH_METHOD_PREFIX)
        if exempt_reflection:
            prefixes.extend(REFLECTION_METHOD_PREFIXES)
        self._exempt_prefixes = tuple(prefixes)
        self._exempt_methods = frozenset(exempt_methods)
        self._on_reject = on_reject

    def is_exempt(self, method: str) -> bool:
        """Whether ``method`` may be called without a token."""
        return method in self._exempt_methods or method.startswith(self._exempt_prefixes)

    def decide(self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> AuthDecision:
        """Allows or refuses one call from its method name and metadata (pure apart from token reloads)."""
        if self.is_exempt(method):
            return AuthDecision(None)
        values = _metadata_value(metadata, "authorization")
        if not values:
            return AuthDecision("missing credentials: send the metadata 'authorization: Bearer <token>'")
        if len(values) > 1:
            return AuthDecision("invalid credentials: more than one 'authorization' metadata entry")
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return AuthDecision("invalid credentials: the 'authorization' metadata must be 'Bearer <token>'")
        if not self._tokens.check(token.strip()):
            return AuthDecision("invalid credentials: the bearer token is not accepted")
        return AuthDecision(None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        decision = self.decide(handler_call_details.method, handler_call_details.invocation_metadata)
        if decision.message is None:
            return await continuation(handler_call_details)
        if self._on_reject is not None:
            self._on_reject("unauthenticated")
        # The refusal must have the same cardinality as the real method, or the server would read the
        # stream wrongly; unknown methods are refused too, so the API cannot be probed without a token.
        handler = await continuation(handler_call_details)
        return _reject_handler(handler, decision.message)


def _reject_handler(real: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_streaming(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - unreachable; makes this an async generator for response streaming

    request_streaming = bool(real is not None and real.request_streaming)
    response_streaming = bool(real is not None and real.response_streaming)
    # No request deserializer: the body of a refused call is never parsed.
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_streaming)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_streaming)
    return grpc.unary_unary_rpc_method_handler(abort)
