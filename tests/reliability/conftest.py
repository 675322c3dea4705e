"""Fixtures for the reliability tests: real grpc.aio servers (port 0) serving the real tiny ONNX model.

``tiny_repo`` (the exported tiny model repository) comes from tests/conftest.py. Fault injection uses the
runner's session factory (tests/server/faults.py): the real ONNX Runtime session, wrapped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from emotion.v1 import emotion_pb2

from emotion2vec_serving.modelrepo.manifest import ModelManifest, load_manifest
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.process import ServerProcess
from tests.server.inprocess import Running, StartServer, metric_value, serving

__all__ = ["BASE_SETTINGS", "Running", "StartServer", "metric_value"]  # imported by the tests from here

BASE_SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    metrics_port=0,
    http_port=0,
    providers=("CPUExecutionProvider",),
    intra_op_threads=1,
    max_duration_s=5.0,
    min_duration_s=0.05,
    max_message_bytes=2 * 1024 * 1024,
    warmup=False,
    drain_grace_s=10.0,
    drain_readiness_delay_s=0.0,  # stopping test servers at once; the drain tests set their own delay
    max_queue_delay_ms=2.0,
)


@pytest.fixture
def server_procs() -> Iterator[list[ServerProcess]]:
    """Server processes a test starts (it appends them): killed if still running at the end, logs removed."""
    procs: list[ServerProcess] = []
    yield procs
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)
        p.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def null_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The null model (benchmarks/suite/null_model.py): the serving path with almost no compute, so calls are
    short and many of them cross a drain's GOAWAY."""
    from benchmarks.suite.null_model import build_null_model

    return build_null_model(tmp_path_factory.mktemp("null_repo"))


@pytest.fixture(scope="session")
def manifest(tiny_repo: Path) -> ModelManifest:
    return load_manifest(Path(tiny_repo))


@pytest.fixture
async def start_server(manifest: ModelManifest) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(session_factory=..., **settings_overrides)`` -> Running."""
    # A large send limit lets oversized requests leave the client, so the server is the one refusing them.
    async with serving(
        manifest, BASE_SETTINGS, [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as start:
        yield start


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


def answered_by_server(log_text: str) -> dict[tuple[str, str, str], int]:
    """The server's exit line ``calls answered since start: proto/rpc/code=n, ...`` as a dict."""
    marker = "calls answered since start: "
    lines = [line for line in log_text.splitlines() if marker in line]
    assert lines, "the server did not log its calls at exit"
    out: dict[tuple[str, str, str], int] = {}
    for item in lines[-1].split(marker, 1)[1].split(", "):
        if item.strip() == "none":
            continue
        key, _, n = item.strip().rpartition("=")
        protocol, rpc, code = key.split("/")
        out[(protocol, rpc, code)] = int(n)
    return out
