"""Channels that work behind Kubernetes: DNS targets with round_robin, keepalive, TLS/mTLS, tokens.

A headless Service (``dns:///emotion-server-headless.ns.svc:50051``) resolves to every pod; the round_robin
policy keeps a subchannel to each and spreads calls across them, which a ClusterIP Service cannot do for
long-lived HTTP/2 connections. Keepalive pings notice pods that vanished without closing the connection.

Retries: the channel carries gRPC's standard service config with a ``retryPolicy`` (:func:`service_config`),
so gRPC itself retries calls the server shed (RESOURCE_EXHAUSTED) or refused while draining (UNAVAILABLE),
waiting the server's ``grpc-retry-pushback-ms`` when it sends one, with client-side retry throttling so a
crowd of clients cannot amplify an overload. The same configuration is published for every other gRPC client
in ``deploy/grpc/service_config.json`` (written by :func:`published_service_config`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .retry import RetryPolicy

__all__ = [
    "DEFAULT_GRPC_RETRY",
    "RETRY_SERVICES",
    "ChannelSettings",
    "TLSConfig",
    "channel_options",
    "create_aio_channel",
    "create_channel",
    "published_service_config",
    "service_config",
]

#: The services the retry policy covers: emotion.v1 and the Open Inference Protocol served on the same port.
RETRY_SERVICES = ("emotion.v1.EmotionRecognizer", "inference.GRPCInferenceService")
#: gRPC caps maxAttempts at 5 (gRFC A6); larger values are silently lowered.
_GRPC_MAX_ATTEMPTS = 5
#: Client-side retry throttling (gRFC A6): each failure costs a token, each success returns 0.1; retries stop
#: while fewer than half of the 10 tokens are left, so retries never multiply a sustained overload.
_RETRY_THROTTLING = {"maxTokens": 10, "tokenRatio": 0.1}
#: The published policy: 4 attempts, backoff 50 ms doubling up to 2 s, on UNAVAILABLE and RESOURCE_EXHAUSTED.
DEFAULT_GRPC_RETRY = RetryPolicy()


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def service_config(
    retry: RetryPolicy | None = DEFAULT_GRPC_RETRY,
    *,
    load_balancing: str = "round_robin",
    no_retry_methods: tuple[str, ...] = (),
) -> dict[str, Any]:
    """gRPC service config: the load-balancing policy and, unless ``retry`` is None or allows one attempt, a
    ``retryPolicy`` for :data:`RETRY_SERVICES` built from ``retry`` (attempts, backoff, status codes).

    ``no_retry_methods`` (``"service/Method"``) get a method config without retries, which overrides the
    service-wide one: this project's clients retry streams themselves (replaying the audio) instead.
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{load_balancing: {}}]}
    if retry is None or retry.max_attempts < 2:
        return config
    policy = {
        "maxAttempts": min(retry.max_attempts, _GRPC_MAX_ATTEMPTS),
        "initialBackoff": _duration(max(retry.initial_backoff_s, 0.001)),
        "maxBackoff": _duration(max(retry.max_backoff_s, retry.initial_backoff_s, 0.001)),
        "backoffMultiplier": retry.multiplier,
        "retryableStatusCodes": sorted(code.name for code in retry.retry_on),
    }
    methods: list[dict[str, Any]] = [
        {"name": [{"service": service} for service in RETRY_SERVICES], "retryPolicy": policy}
    ]
    if no_retry_methods:
        names = [dict(zip(("service", "method"), m.split("/"), strict=True)) for m in no_retry_methods]
        methods.append({"name": names})
    config["methodConfig"] = methods
    config["retryThrottling"] = dict(_RETRY_THROTTLING)
    return config


def published_service_config() -> str:
    """The service config published for other gRPC clients (``deploy/grpc/service_config.json``)."""
    return json.dumps(service_config(), indent=2) + "\n"


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the channel. Give ``client_cert`` and ``client_key`` together for mutual TLS.

    Paths are PEM files; ``root_cert=None`` uses the system roots.
    """

    root_cert: str | os.PathLike[str] | None = None
    client_cert: str | os.PathLike[str] | None = None
    client_key: str | os.PathLike[str] | None = None
    server_name: str | None = None  # overrides the name checked against the certificate

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key must be given together (mutual TLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | os.PathLike[str] | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.root_cert),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )


@dataclass(frozen=True)
class ChannelSettings:
    """Transport settings shared by the sync and asyncio clients."""

    target: str = "localhost:50051"
    tls: TLSConfig | None = None
    token: str | None = None  # sent as ``authorization: Bearer <token>``
    load_balancing: str = "round_robin"  # or "pick_first"
    # 60 s is above what most proxies and the gRPC server default tolerate between pings on an active
    # connection; shorter intervals get a GOAWAY "too_many_pings" unless the server allows them.
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_message_bytes: int = 256 * 1024 * 1024  # frame embeddings of long audio are large
    user_agent: str = "emotion-client/0.1"
    # Retries gRPC makes by itself, from the channel's service config (None: none). The clients turn this off
    # when given their own RetryPolicy, so that attempts never multiply.
    grpc_retry: RetryPolicy | None = DEFAULT_GRPC_RETRY

    def token_metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata carrying the token when the channel cannot (insecure channels)."""
        if self.token and self.tls is None:
            return (("authorization", f"Bearer {self.token}"),)
        return ()


def channel_options(settings: ChannelSettings) -> list[tuple[str, Any]]:
    """gRPC channel arguments for ``settings``."""
    config = service_config(settings.grpc_retry, load_balancing=settings.load_balancing,
                            no_retry_methods=(f"{RETRY_SERVICES[0]}/StreamRecognize",))
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", json.dumps(config)),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.primary_user_agent", settings.user_agent),
        # The service config's retryPolicy (and gRPC's transparent retries) need this on.
        ("grpc.enable_retries", 1),
    ]
    if settings.tls is not None and settings.tls.server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls.server_name))
    return options


def _secure_credentials(settings: ChannelSettings) -> grpc.ChannelCredentials | None:
    if settings.tls is None:
        return None
    creds = settings.tls.credentials()
    if settings.token:
        # On TLS the token travels as call credentials: gRPC attaches it to every call on the channel.
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(settings.token))
    return creds


def create_channel(settings: ChannelSettings) -> grpc.Channel:
    """A synchronous channel for ``settings``."""
    creds = _secure_credentials(settings)
    options = channel_options(settings)
    if creds is None:
        return grpc.insecure_channel(settings.target, options=options)
    return grpc.secure_channel(settings.target, creds, options=options)


def create_aio_channel(settings: ChannelSettings) -> grpc.aio.Channel:
    """An asyncio channel for ``settings``. Create it inside the event loop that will use it."""
    creds = _secure_credentials(settings)
    options = channel_options(settings)
    if creds is None:
        return grpc.aio.insecure_channel(settings.target, options=options)
    return grpc.aio.secure_channel(settings.target, creds, options=options)
