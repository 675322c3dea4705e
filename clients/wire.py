"""Wire constants shared by the server and the light client: the names both sides must spell the same way.

Standard library only, and importing it loads nothing else of the client (``clients/__init__`` is lazy), so
the server's protocol-free core can import it too.
"""

from __future__ import annotations

__all__ = [
    "PROTOCOLS",
    "PROTOCOL_EMOTION_V1",
    "PROTOCOL_HTTP",
    "PROTOCOL_OIP_GRPC",
    "PROTOCOL_OIP_HTTP",
    "PROTOCOL_WS",
    "RETRY_AFTER_HEADER",
    "RETRY_AFTER_MS_KEY",
    "RETRY_PUSHBACK_KEY",
]

#: gRPC trailing metadata and HTTP header: milliseconds to wait before retrying (RESOURCE_EXHAUSTED /
#: UNAVAILABLE, HTTP 429 / 503). The light client's retry policy honours it.
RETRY_AFTER_MS_KEY = "retry-after-ms"
#: gRPC's own pushback key (same value as ``retry-after-ms``), read by gRPC's built-in retry policy.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: The standard HTTP header (whole seconds), sent beside ``retry-after-ms``.
RETRY_AFTER_HEADER = "Retry-After"

#: Values of the ``protocol`` label of the server's metrics (``emotion_requests_total{protocol}``...):
#: emotion.v1 gRPC, Open Inference Protocol gRPC and REST, the web API (``/v1`` over HTTP) and its WebSocket.
PROTOCOL_EMOTION_V1 = "emotion_v1"
PROTOCOL_OIP_GRPC = "oip_grpc"
PROTOCOL_OIP_HTTP = "oip_http"
PROTOCOL_HTTP = "http"
PROTOCOL_WS = "ws"
PROTOCOLS = (PROTOCOL_EMOTION_V1, PROTOCOL_OIP_GRPC, PROTOCOL_OIP_HTTP, PROTOCOL_HTTP, PROTOCOL_WS)
