"""Shared fixtures: a tiny random-weight checkpoint in the real emotion2vec layout and its fp32 ONNX model
repository, each built once per test session (a few seconds), its manifest, and the one in-process server
factory (``start_server``).

The repository is exported without the FunASR parity check (tests/export runs that itself), so test
directories that only serve the model do not import funasr.

A suite picks the settings of its in-process servers by overriding ``server_settings`` (and
``server_channel_options``) in its conftest or module; ``manifest`` and ``start_server`` are defined here
only (tests/test_test_tree.py keeps it so). The helpers themselves live in tests/support/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from emotion2vec_serving.modelrepo.manifest import ModelManifest, load_manifest
from emotion2vec_serving.server.config import Settings
from tests.support.servers import SERVER_SETTINGS, StartServer, serving

#: Under CI=true a skipped test fails (tests/support/ci_skips.py).
pytest_plugins = ["tests.support.ci_skips"]

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with config.yaml, configuration.json, model.pt, tokens.txt (tiny, seed 0)."""
    from emotion2vec_serving.export.checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"), size="tiny", seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 model repository (model.onnx + manifest.json) exported from ``tiny_checkpoint``."""
    from emotion2vec_serving.export.onnx_export import export_repository

    return export_repository(
        tiny_checkpoint, tmp_path_factory.mktemp("tiny_repo"), precision="fp32", verify=False,
        progress=lambda _message: None,
    )


@pytest.fixture(scope="session")
def manifest(tiny_repo: Path) -> ModelManifest:
    """The manifest of the tiny model repository."""
    return load_manifest(Path(tiny_repo))


@pytest.fixture
def server_settings() -> Settings:
    """The base settings of ``start_server``'s servers; a suite overrides this fixture to change them."""
    return SERVER_SETTINGS


@pytest.fixture
def server_channel_options() -> tuple[tuple[str, Any], ...]:
    """gRPC options of the channel ``start_server`` opens to each server (a suite may override them)."""
    return ()


@pytest.fixture
async def start_server(
    manifest: ModelManifest, server_settings: Settings, server_channel_options: tuple[tuple[str, Any], ...]
) -> AsyncIterator[StartServer]:
    """Factory of in-process servers: ``await start_server(session_factory=..., **settings_overrides)`` ->
    ``Running``; each is ``server_settings`` with the overrides, stopped when the test ends."""
    async with serving(manifest, server_settings, server_channel_options) as start:
        yield start
