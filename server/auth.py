"""Bearer tokens and the one check every front end makes: protocol-free (no grpc, no aiohttp).

- :func:`load_tokens` reads the accepted tokens from a file (one per line) and/or an environment variable;
  :class:`TokenStore` holds them and re-reads the file when it changes (a rotated Kubernetes Secret).
- :class:`BearerAuth` is the check: it reads ``Bearer <token>`` from an ``authorization`` header or metadata
  entry (or the WebSocket subprotocol ``bearer.<token>``, or a token sent in a stream's first message), lets
  the exempt routes through (gRPC health, reflection when asked, the Open Inference Protocol's live/ready
  probes), decides, and counts each refusal once, the same way for every protocol:
  ``emotion_rejections_total{reason="unauthenticated"}`` and
  ``emotion_requests_total{rpc, code="UNAUTHENTICATED", protocol}``. The front ends only adapt it: the
  gRPC interceptor (``server/grpc/auth.py``) and the HTTP helper (``server/http/auth.py``).

Nothing here ever uses a value sent by a client as a path: file paths come from the operator's settings only.
TLS is in ``server/tls.py``.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from emotion2vec_serving.server.metrics import ServerMetrics
from emotion2vec_serving.server.tls import SecurityConfigError

__all__ = [
    "HEALTH_METHOD_PREFIX",
    "OIP_PROBES",
    "REFLECTION_METHOD_PREFIXES",
    "REJECTION_REASON",
    "WS_BEARER_PREFIX",
    "BearerAuth",
    "Credentials",
    "TokenStore",
    "load_tokens",
]

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_METHOD_PREFIXES = (
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)
#: The Open Inference Protocol's probes (gRPC method names, REST ``GET .../live`` and ``GET .../ready``): they
#: need no token, like the gRPC health service, so load balancers and Kubernetes need no secret.
OIP_PROBES = ("/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady",
              "/inference.GRPCInferenceService/ModelReady")
_OIP_REST_PREFIX = "/v2"
_OIP_REST_PROBE_SUFFIXES = ("/ready", "/live")
#: A browser cannot set headers on a WebSocket: it offers the token as this subprotocol (``bearer.<token>``).
WS_BEARER_PREFIX = "bearer."
#: ``emotion_rejections_total`` reason and ``emotion_requests_total`` code of a refused call.
REJECTION_REASON = "unauthenticated"
_CODE = "UNAUTHENTICATED"
TOKENS_ENV_VAR = "EMOTION_AUTH_TOKENS"
# A token shorter than this is almost certainly a mistake (an empty line, a placeholder), not a secret.
MIN_TOKEN_CHARS = 16


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


# ------------------------------------------------------------------------------------------- check


@dataclass(frozen=True)
class Credentials:
    """What one call presented: every ``authorization`` header/metadata value, the WebSocket subprotocols
    offered, and a token sent inside the protocol (a stream's config message), each possibly absent.

    ``kind`` and ``name`` say where the token belongs, for messages (gRPC: metadata ``authorization``; HTTP:
    header ``Authorization``); ``how`` replaces the advice when nothing was presented.
    """

    authorization: Sequence[str] = ()
    subprotocols: Sequence[str] = ()
    token: str | None = None
    kind: str = "header"
    name: str = "Authorization"
    how: str | None = None

    @property
    def presented(self) -> bool:
        """Whether the call carries anything that claims to be a credential."""
        return bool(self.authorization) or self.token is not None or any(
            p.startswith(WS_BEARER_PREFIX) for p in self.subprotocols)


class BearerAuth:
    """The one bearer-token check of every front end (gRPC emotion.v1 and OIP, OIP REST, the ``/v1`` web API
    and its WebSocket).

    Args:
        tokens: the accepted tokens.
        metrics: where refusals are counted (``None``: not counted, e.g. in unit tests).
        exempt_health: let ``/grpc.health.v1.Health/*`` through without a token.
        exempt_reflection: let gRPC server reflection through (it reveals the API, not data).
        exempt_probes: let the Open Inference Protocol's live/ready probes through (gRPC and REST).
        exempt_methods: further full gRPC method names (``/package.Service/Method``) to let through.
    """

    def __init__(
        self,
        tokens: TokenStore,
        metrics: ServerMetrics | None = None,
        *,
        exempt_health: bool = True,
        exempt_reflection: bool = False,
        exempt_probes: bool = True,
        exempt_methods: Iterable[str] = (),
    ) -> None:
        self.tokens = tokens
        self._metrics = metrics
        prefixes: list[str] = []
        if exempt_health:
            prefixes.append(HEALTH_METHOD_PREFIX)
        if exempt_reflection:
            prefixes.extend(REFLECTION_METHOD_PREFIXES)
        self._exempt_prefixes = tuple(prefixes)
        self._exempt_probes = exempt_probes
        self._exempt_methods = frozenset(exempt_methods) | (frozenset(OIP_PROBES) if exempt_probes
                                                             else frozenset())
        #: Refusals counted since start (every protocol).
        self.refused = 0

    def is_exempt(self, route: str, method: str = "POST") -> bool:
        """Whether ``route`` (a gRPC method name, or an HTTP path with its ``method``) needs no token."""
        if route in self._exempt_methods or route.startswith(self._exempt_prefixes):
            return True
        return (self._exempt_probes and method == "GET" and route.startswith(_OIP_REST_PREFIX + "/")
                and route.endswith(_OIP_REST_PROBE_SUFFIXES))

    def decide(self, creds: Credentials) -> str | None:
        """``None`` when ``creds`` carry an accepted token, else why not (pure apart from token reloads).

        A token may come as ``Bearer <token>`` (exactly one authorization value), as the subprotocol
        ``bearer.<token>``, or inside the protocol; when several are presented, every one must be accepted.
        """
        if len(creds.authorization) > 1:
            return f"invalid credentials: more than one '{creds.name}' {creds.kind} entry"
        presented: list[str] = []
        if creds.authorization:
            scheme, _, token = creds.authorization[0].strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return f"invalid credentials: the '{creds.name}' {creds.kind} must be 'Bearer <token>'"
            presented.append(token.strip())
        presented += [p[len(WS_BEARER_PREFIX):] for p in creds.subprotocols if p.startswith(WS_BEARER_PREFIX)]
        if creds.token is not None:
            presented.append(creds.token)
        if not presented:
            advice = creds.how or f"send the {creds.kind} '{creds.name}: Bearer <token>'"
            return f"missing credentials: {advice}"
        if not all(self.tokens.check(t) for t in presented):
            return "invalid credentials: the bearer token is not accepted"
        return None

    def check(self, creds: Credentials, *, protocol: str, rpc: str | None) -> str | None:
        """:meth:`decide`, and a refusal counted once (:meth:`count`); ``None`` when the call may go on."""
        refusal = self.decide(creds)
        if refusal is not None:
            self.count(protocol, rpc)
        return refusal

    def count(self, protocol: str, rpc: str | None) -> None:
        """Count one refused call: ``emotion_rejections_total{reason="unauthenticated"}``, and
        ``emotion_requests_total{rpc, code="UNAUTHENTICATED", protocol}`` (with its duration, 0) when the
        call names a method the server has (``rpc`` None: an unknown method, which must not add a label)."""
        self.refused += 1
        if self._metrics is None:
            return
        self._metrics.reject(REJECTION_REASON)
        if rpc is not None and protocol:
            self._metrics.observe_request(rpc, _CODE, 0.0, protocol)
