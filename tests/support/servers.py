"""An in-process server for tests: a real grpc.aio ``EmotionServer`` on port 0 with its metrics on port 0.

Shared by tests/server and tests/reliability, whose conftests wrap ``serving`` with their own base settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from emotion.v1 import emotion_pb2_grpc

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.app import EmotionServer
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.runtime.runner import SessionFactory


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus text exposition (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


class Running:
    """A started in-process server, a channel to it and its stub."""

    def __init__(self, server: EmotionServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.channel = channel
        self.stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def scrape(self) -> str:
        """The text of the real /metrics HTTP endpoint."""
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from a fresh scrape (0.0 when absent)."""
        return metric_value(self.scrape(), name, **labels)


StartServer = Callable[..., Any]


@contextlib.asynccontextmanager
async def serving(
    manifest: ModelManifest, base: Settings, channel_options: Sequence[tuple[str, Any]] = ()
) -> AsyncIterator[StartServer]:
    """Factory for the block: ``await start(session_factory=..., **settings_overrides)`` -> Running.

    Every server it started is stopped (and its channel closed) when the block ends.
    """
    started: list[Running] = []

    async def start(session_factory: SessionFactory | None = None, **overrides: Any) -> Running:
        settings = dataclasses.replace(base, **overrides)
        server = EmotionServer(settings, manifest, session_factory=session_factory)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=list(channel_options))
        running = Running(server, channel)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            await running.channel.close()
            await running.server.stop()
