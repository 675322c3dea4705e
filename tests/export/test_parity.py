"""Parity against FunASR's own AutoModel on the same checkpoint, and proof that the check has teeth."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emotion2vec_serving.export.onnx_export import export_repository
from emotion2vec_serving.export.ort_run import OnnxModel
from emotion2vec_serving.export.signals import speech_like
from emotion2vec_serving.export.verify import ParityError, _load_funasr, funasr_reference, verify_repository

QUIET = {"progress": lambda _message: None}


@pytest.fixture(scope="module")
def automodel(tiny_checkpoint: Path) -> Any:
    return _load_funasr(tiny_checkpoint)


def test_fp32_export_matches_funasr_within_1e4(
    tiny_checkpoint: Path, tiny_repo: Path, automodel: Any
) -> None:
    report = verify_repository(tiny_checkpoint, tiny_repo, automodel=automodel, **QUIET)
    maxima = report.max_abs
    assert set(maxima) == {f"{w}_{k}" for w in ("single", "batch") for k in ("probs", "embedding",
                                                                              "frame_features")}
    assert max(maxima.values()) <= 1e-4, maxima
    assert report.passed and max(report.lengths_samples) == 30 * 16000


def test_export_without_the_padding_fix_fails_parity(
    tiny_checkpoint: Path, automodel: Any, tmp_path: Path
) -> None:
    naive = export_repository(tiny_checkpoint, tmp_path / "naive", verify=False, padding_fix=False, **QUIET)
    with pytest.raises(ParityError, match=r"batch_"):
        verify_repository(tiny_checkpoint, naive, automodel=automodel, **QUIET)


def test_unuse_labels_are_masked_like_funasr(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    tokens = (ckpt / "tokens.txt").read_text(encoding="utf-8").split("\n")
    tokens[1], tokens[5] = "unuse_1", "unuse_5"
    (ckpt / "tokens.txt").write_text("\n".join(tokens), encoding="utf-8")
    repo = export_repository(ckpt, tmp_path / "repo", verify=False, **QUIET)
    clip = speech_like(24000, seed=5)
    out = OnnxModel(repo / "model.onnx").run_clips([clip])[0]
    assert np.isneginf(out["logits"][[1, 5]]).all() and (out["probs"][[1, 5]] == 0).all()
    assert (out["frame_probs"][:, [1, 5]] == 0).all()
    ref = funasr_reference(_load_funasr(ckpt), clip)
    enabled = [i for i in range(9) if i not in (1, 5)]
    assert np.abs(out["probs"][enabled] - ref["scores"]).max() <= 1e-4


def test_headless_checkpoint_exports_embeddings_only(tmp_path: Path) -> None:
    from emotion2vec_serving.export.checkpoint import write_checkpoint
    from emotion2vec_serving.modelrepo.manifest import HEADLESS_OUTPUT_NAMES, load_manifest

    ckpt = write_checkpoint(tmp_path / "base", "tiny", seed=3, headless=True)
    repo = export_repository(ckpt, tmp_path / "repo", verify=True, **QUIET)
    manifest = load_manifest(repo)
    assert manifest.labels == () and manifest.output_names == HEADLESS_OUTPUT_NAMES
    assert manifest.model_name == "emotion2vec_base_tiny_random"
    assert manifest.parity is not None and manifest.parity.passed
    assert max(manifest.parity.max_abs.values()) <= 1e-4
