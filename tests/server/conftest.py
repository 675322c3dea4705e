"""Fixtures for the server tests: a real grpc.aio server on port 0 serving the real tiny ONNX model."""

from __future__ import annotations

import dataclasses
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from emotion.v1 import emotion_pb2_grpc

from server.app import EmotionServer
from server.config import Settings
from server.manifest import ModelManifest, load_manifest
from server.runner import SessionFactory, ort_session_factory

BASE_SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    metrics_port=0,
    providers=("CPUExecutionProvider",),
    intra_op_threads=1,
    max_duration_s=20.0,
    min_duration_s=0.1,
    warmup=False,
    drain_grace_s=5.0,
    max_queue_delay_ms=5.0,
)


@pytest.fixture(scope="session")
def model_dir(tiny_repo: Path) -> Path:
    """The exported tiny model repository (``tiny_repo`` comes from tests/conftest.py)."""
    return Path(tiny_repo)


@pytest.fixture(scope="session")
def manifest(model_dir: Path) -> ModelManifest:
    return load_manifest(model_dir)


class Running:
    """A started server, a channel to it and its stub."""

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
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


StartServer = Callable[..., Any]


@pytest.fixture
async def start_server(manifest: ModelManifest) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(**settings_overrides, session_factory=...)`` -> Running."""
    started: list[Running] = []

    async def start(session_factory: SessionFactory = ort_session_factory, **overrides: Any) -> Running:
        settings = dataclasses.replace(BASE_SETTINGS, **overrides)
        server = EmotionServer(settings, manifest, session_factory=session_factory)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        running = Running(server, channel)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.channel.close()
        await running.server.stop()


@pytest.fixture
async def running(start_server: StartServer) -> Running:
    """A server with the default test settings."""
    result: Running = await start_server()
    return result
