"""Fixtures of the server tests (``manifest`` and ``start_server`` come from tests/conftest.py, with its
default ``server_settings``): the model directory, a running in-process server, and, for the Open Inference
Protocol tests of grpc/ and http/, a real server process and real audio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.process import ServerProcess
from tests.support.audio import encoded_signal, make_signal
from tests.support.servers import Running, StartServer, server_process


@pytest.fixture(scope="session")
def model_dir(tiny_repo: Path) -> Path:
    """The exported tiny model repository (``tiny_repo`` comes from tests/conftest.py)."""
    return Path(tiny_repo)


@pytest.fixture
async def running(start_server: StartServer) -> Running:
    """A server with the default test settings."""
    result: Running = await start_server()
    return result


# ------------------------------------------------------------------------------ Open Inference Protocol


@pytest.fixture(scope="session")
def oip_server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server process (gRPC + HTTP on free ports) serving the tiny model."""
    log = tmp_path_factory.mktemp("oip_server") / "server.log"
    flags = ("--drain-grace-s", "2", "--max-queue-delay-ms", "5")
    with server_process(tiny_repo, *flags, startup_timeout_s=90.0, log_path=log) as srv:
        yield srv


@pytest.fixture(scope="session")
def model_name(manifest: ModelManifest) -> str:
    return manifest.model_name


@pytest.fixture(scope="session")
def audio_files() -> dict[str, bytes]:
    """Real encoded files of different formats and lengths (so batches mix lengths)."""
    return {
        "wav": encoded_signal("wav", duration_s=1.5, rate=16000, channels=1),
        "mp3": encoded_signal("mp3", duration_s=2.2, rate=44100, channels=2),
        "flac": encoded_signal("flac", duration_s=1.0, rate=22050, channels=1),
    }


@pytest.fixture(scope="session")
def waveforms() -> npt.NDArray[np.float32]:
    """Two different mono 16 kHz rows of equal length (a WAVEFORM batch)."""
    rows = [make_signal(1.2, 16000, 1, seed=s)[:, 0] for s in (1, 2)]
    return np.stack(rows).astype(np.float32)
