"""gRPC health (grpc.health.v1) for the whole server ``""`` and for ``emotion.v1.EmotionRecognizer``.

Both start NOT_SERVING, become SERVING when warm-up ends and go back to NOT_SERVING, for good, when the
drain starts. Kubernetes probes readiness on the service name and liveness on ``""``.
"""

from __future__ import annotations

import grpc
from emotion.v1 import emotion_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

__all__ = ["SERVICE_NAME", "Health"]

SERVICE_NAME: str = emotion_pb2.DESCRIPTOR.services_by_name["EmotionRecognizer"].full_name
_NAMES = ("", SERVICE_NAME)


class Health:
    """Owns the health servicer and the serving state. Call from the event loop."""

    def __init__(self) -> None:
        self.servicer = HealthServicer()
        self._serving = False

    async def start(self) -> None:
        """Register both names as NOT_SERVING (the servicer's own default for ``""`` is SERVING)."""
        for name in _NAMES:
            await self.servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    @property
    def serving(self) -> bool:
        return self._serving

    async def set_serving(self) -> None:
        self._serving = True
        for name in _NAMES:
            await self.servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def enter_drain(self) -> None:
        """NOT_SERVING for every name, permanently (later ``set`` calls are ignored)."""
        self._serving = False
        await self.servicer.enter_graceful_shutdown()
