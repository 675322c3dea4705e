"""Fixtures for the server tests: a real grpc.aio server on port 0 serving the real tiny ONNX model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emotion2vec_serving.modelrepo.manifest import ModelManifest, load_manifest
from emotion2vec_serving.server.config import Settings
from tests.server.inprocess import Running, StartServer, serving

__all__ = ["BASE_SETTINGS", "Running", "StartServer"]  # imported by the tests from here

BASE_SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    metrics_port=0,
    http_port=0,
    providers=("CPUExecutionProvider",),
    intra_op_threads=1,
    max_duration_s=20.0,
    max_audio_s=60.0,  # longer audio is segmented up to this (issue 13); beyond it, refused
    min_duration_s=0.1,
    warmup=False,
    drain_grace_s=5.0,
    drain_readiness_delay_s=0.0,  # stopping test servers at once; the drain tests set their own delay
    max_queue_delay_ms=5.0,
)


@pytest.fixture(scope="session")
def model_dir(tiny_repo: Path) -> Path:
    """The exported tiny model repository (``tiny_repo`` comes from tests/conftest.py)."""
    return Path(tiny_repo)


@pytest.fixture(scope="session")
def manifest(model_dir: Path) -> ModelManifest:
    return load_manifest(model_dir)


@pytest.fixture
async def start_server(manifest: ModelManifest) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(**settings_overrides, session_factory=...)`` -> Running."""
    async with serving(manifest, BASE_SETTINGS) as start:
        yield start


@pytest.fixture
async def running(start_server: StartServer) -> Running:
    """A server with the default test settings."""
    result: Running = await start_server()
    return result
