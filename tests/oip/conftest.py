"""Fixtures of the Open Inference Protocol tests: a real server process (gRPC + HTTP on free ports) serving
the tiny model, in-process servers on real sockets (``start_server``), and real audio (encoded files made by
ffmpeg, float waveforms)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from emotion2vec_serving.modelrepo.manifest import ModelManifest, load_manifest
from emotion2vec_serving.server.process import ServerProcess
from tests.oip.oip_support import IN_PROCESS
from tests.server.audio_fixtures import encoded_signal, make_signal
from tests.server.inprocess import StartServer, serving


@pytest.fixture(scope="session")
def oip_server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("oip_server") / "server.log"
    args = ["--intra-op-threads", "1", "--drain-grace-s", "2", "--no-warmup", "--max-queue-delay-ms", "5"]
    with ServerProcess(tiny_repo, args, startup_timeout_s=90.0, log_path=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def manifest(tiny_repo: Path) -> ModelManifest:
    return load_manifest(Path(tiny_repo))


@pytest.fixture
async def start_server(manifest: ModelManifest) -> AsyncIterator[StartServer]:
    """Factory of in-process servers: ``await start_server(**settings_overrides)`` -> Running."""
    async with serving(manifest, IN_PROCESS) as start:
        yield start


@pytest.fixture(scope="session")
def model_name(tiny_repo: Path) -> str:
    return load_manifest(Path(tiny_repo)).model_name


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
