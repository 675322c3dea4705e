"""Fixtures of the reliability tests: the settings of their in-process servers (``start_server`` comes from
tests/conftest.py), server processes a test starts, and the null model.

Fault injection uses the runner's session factory (tests/support/faults.py): the real ONNX Runtime session,
wrapped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.process import ServerProcess
from tests.support.servers import RELIABILITY_CHANNEL_OPTIONS, RELIABILITY_SETTINGS


@pytest.fixture
def server_settings() -> Settings:
    """Short limits (tests/support/servers.py: RELIABILITY_SETTINGS)."""
    return RELIABILITY_SETTINGS


@pytest.fixture
def server_channel_options() -> tuple[tuple[str, Any], ...]:
    """A large send limit, so that oversized requests leave the client and the server refuses them."""
    return RELIABILITY_CHANNEL_OPTIONS


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
