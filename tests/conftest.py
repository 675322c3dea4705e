"""Shared model fixtures: a tiny random-weight checkpoint in the real emotion2vec layout and its fp32 ONNX
model repository, each built once per test session (a few seconds).

The repository is exported without the FunASR parity check (tests/export runs that itself), so test
directories that only serve the model do not import funasr.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
