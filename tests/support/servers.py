"""The one server factory of the tests: in-process servers (a real grpc.aio ``EmotionServer`` with its
metrics and HTTP listeners, all on port 0) and server processes (``python -m emotion2vec_serving.server``
through ``server.process.ServerProcess``), with the test settings of each suite.

``tests/conftest.py`` defines the ``manifest`` and ``start_server`` fixtures once, over ``serving``; a suite
chooses its settings by overriding the ``server_settings`` fixture (and ``server_channel_options``) in its
conftest or module, e.g. ``tests/reliability/conftest.py`` returns ``RELIABILITY_SETTINGS``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from emotion.v1 import emotion_pb2_grpc

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.app import EmotionServer
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.process import ServerProcess
from emotion2vec_serving.server.runtime.contract import SessionFactory
from tests.support.metrics import metric_value

__all__ = [
    "OIP_SETTINGS",
    "PROCESS_FLAGS",
    "RELIABILITY_CHANNEL_OPTIONS",
    "RELIABILITY_SETTINGS",
    "SERVER_SETTINGS",
    "TEST_SETTINGS",
    "Running",
    "StartServer",
    "server_process",
    "serving",
]

#: What every in-process test server shares: loopback, free ports (gRPC, metrics, HTTP), the CPU provider
#: with one intra-op thread (the test machines are shared), no warm-up, no readiness delay when stopping
#: (the drain tests set their own), and no connection age, so a stop does not wait for the age GOAWAY of a
#: connection a test left open (the real server's default drain is tested on processes:
#: tests/reliability/test_goaway.py, test_drain_under_load.py), and one fixed runner instance (the default):
#: the tests' gated sessions count on one batch running at a time (the adaptive widths are tested on real
#: sessions and a server process in tests/server/runtime/test_adaptive_widths.py).
TEST_SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    metrics_port=0,
    http_port=0,
    providers=("CPUExecutionProvider",),
    intra_op_threads=1,
    warmup=False,
    drain_readiness_delay_s=0.0,
    max_connection_age_s=0.0,
    runner_instances=1,
)

#: tests/server (the default ``server_settings``): long audio is segmented up to 60 s (issue 13), beyond
#: it refused.
SERVER_SETTINGS = dataclasses.replace(
    TEST_SETTINGS, max_duration_s=20.0, max_audio_s=60.0, min_duration_s=0.1, drain_grace_s=5.0,
    max_queue_delay_ms=5.0,
)  # fmt: skip

#: tests/reliability: short limits (5 s per pass, 2 MiB messages), so hostile inputs hit them quickly.
RELIABILITY_SETTINGS = dataclasses.replace(
    TEST_SETTINGS, max_duration_s=5.0, min_duration_s=0.05, max_message_bytes=2 * 1024 * 1024,
    drain_grace_s=10.0, max_queue_delay_ms=2.0,
)  # fmt: skip
#: A large send limit lets oversized requests leave the client, so the server is the one refusing them.
RELIABILITY_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)

#: The Open Inference Protocol tests' in-process servers (tests/server/http/test_oip_*.py).
OIP_SETTINGS = dataclasses.replace(
    TEST_SETTINGS, max_duration_s=5.0, min_duration_s=0.1, drain_grace_s=10.0, max_queue_delay_ms=2.0,
)  # fmt: skip


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
    manifest: ModelManifest, base: Settings = SERVER_SETTINGS, channel_options: Sequence[tuple[str, Any]] = ()
) -> AsyncIterator[StartServer]:
    """Factory for the block: ``await start(session_factory=..., **settings_overrides)`` -> Running.

    Each server runs ``base`` with the overrides; every server it started is stopped (and its channel
    closed) when the block ends.
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


#: The flags a test server process starts with (before the test's own): no warm-up, one intra-op thread.
PROCESS_FLAGS: tuple[str, ...] = ("--no-warmup", "--intra-op-threads", "1")


def server_process(
    model: str | Path, *flags: str, base: Sequence[str] = PROCESS_FLAGS, **options: Any
) -> ServerProcess:
    """A (not yet started) ``ServerProcess`` of ``model`` with ``base`` then ``flags``; ``options`` are
    ServerProcess's own (``env``, ``isolated_env``, ``metrics``, ``http``, ``startup_timeout_s``,
    ``log_path``...). Use it as a context manager, or ``.start()`` it and terminate it yourself."""
    return ServerProcess(model, [*base, *flags], **options)
