"""Fixtures for the reliability tests: real grpc.aio servers (port 0) serving the real tiny ONNX model.

``tiny_repo`` (the exported tiny model repository) comes from tests/conftest.py. Fault injection uses the
runner's session factory (tests/server/faults.py): the real ONNX Runtime session, wrapped.
"""

from __future__ import annotations

import dataclasses
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

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
    max_duration_s=5.0,
    min_duration_s=0.05,
    max_message_bytes=2 * 1024 * 1024,
    warmup=False,
    drain_grace_s=10.0,
    max_queue_delay_ms=2.0,
)


@pytest.fixture(scope="session")
def manifest(tiny_repo: Path) -> ModelManifest:
    return load_manifest(Path(tiny_repo))


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
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.scrape(), name, **labels)


StartServer = Callable[..., Any]


@pytest.fixture
async def start_server(manifest: ModelManifest) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(session_factory=..., **settings_overrides)`` -> Running."""
    started: list[Running] = []

    async def start(session_factory: SessionFactory = ort_session_factory, **overrides: Any) -> Running:
        settings = dataclasses.replace(BASE_SETTINGS, **overrides)
        server = EmotionServer(settings, manifest, session_factory=session_factory)
        await server.start()
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}",
            options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],  # let oversized requests leave
        )
        running = Running(server, channel)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.channel.close()
        await running.server.stop()


def tone(duration_s: float, *, freq_hz: float = 220.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A deterministic float32 mono test signal (tone + a little noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq_hz * t) + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def raw_request(samples: np.ndarray, rate: int = 16000, **fields: Any) -> emotion_pb2.RecognizeRequest:
    """A Recognize request carrying ``samples`` as raw f32le PCM."""
    audio = emotion_pb2.Audio(
        raw=emotion_pb2.RawAudio(
            data=np.asarray(samples, "<f4").tobytes(),
            encoding=emotion_pb2.PCM_ENCODING_F32LE,
            sample_rate_hz=rate,
            channels=1,
        )
    )
    return emotion_pb2.RecognizeRequest(audio=audio, **fields)


def scores(response: emotion_pb2.RecognizeResponse) -> np.ndarray:
    return np.array([s.score for s in response.utterance.scores], np.float32)
