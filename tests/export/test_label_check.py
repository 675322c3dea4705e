"""The exporter counts the enabled labels after every export (issue 23): an emotion2vec+ checkpoint whose
``tokens.txt`` enables 5 of the 9 emotions is exported with a warning naming its revision (printed and kept
in ``manifest.json``), ``require_labels=9`` refuses it before anything is written, and a nine-label one has
no warning. Real tiny checkpoints in the hub layout, the real export (no FunASR parity check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emotion2vec_serving.export.checkpoint import TOKENS, TOKENS_FIVE_LABELS
from emotion2vec_serving.export.onnx_export import export_repository
from emotion2vec_serving.modelrepo.labels import LabelCountError
from emotion2vec_serving.modelrepo.manifest import MANIFEST_FILE, ONNX_FILE, load_manifest
from tests.support.labels import FIVE_LABEL_COMMIT, NINE_LABEL_COMMIT, hub_snapshot


@pytest.fixture(scope="module")
def five_label_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hub_snapshot(tmp_path_factory.mktemp("five") / "snapshot", TOKENS_FIVE_LABELS, FIVE_LABEL_COMMIT)


def test_a_five_label_emotion2vec_plus_model_is_exported_with_a_warning_naming_its_commit(
    five_label_snapshot: Path, tmp_path: Path
) -> None:
    said: list[str] = []
    # require_labels=5: the model meets it, and is still warned about (its model card promises nine).
    repo = export_repository(five_label_snapshot, tmp_path / "repo", verify=False, progress=said.append,
                             require_labels=5)
    manifest = load_manifest(repo)
    assert manifest.model_name == "emotion2vec_plus_tiny" and not manifest.untrained
    assert sum(label.enabled for label in manifest.labels) == 5
    (warning,) = manifest.warnings
    assert warning.startswith(f"emotion2vec_plus_tiny at revision {FIVE_LABEL_COMMIT} enables only 5 of the "
                              "9 emotions")
    assert json.loads((repo / MANIFEST_FILE).read_text(encoding="utf-8"))["warnings"] == [warning]
    assert [line for line in said if warning in line] == [f"      WARNING: {warning}"]


def test_require_labels_9_refuses_it_before_writing_the_repository(
    five_label_snapshot: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / MANIFEST_FILE).write_text('{"earlier": "repository"}\n', encoding="utf-8")
    (repo / ONNX_FILE).write_bytes(b"earlier model")
    said: list[str] = []
    with pytest.raises(LabelCountError) as refused:
        export_repository(five_label_snapshot, repo, verify=False, progress=said.append, require_labels=9)
    assert str(refused.value) == (f"emotion2vec_plus_tiny at revision {FIVE_LABEL_COMMIT} enables 5 labels; "
                                  "--require-labels asks for at least 9")
    # Refused before the export touched the directory: what was there is still there, unchanged.
    assert (repo / MANIFEST_FILE).read_text(encoding="utf-8") == '{"earlier": "repository"}\n'
    assert (repo / ONNX_FILE).read_bytes() == b"earlier model"
    assert sorted(p.name for p in repo.iterdir()) == [MANIFEST_FILE, ONNX_FILE]
    assert not any(line.startswith("[2/4]") for line in said)


def test_a_nine_label_model_has_no_warning_and_meets_require_labels_9(tmp_path: Path) -> None:
    snapshot = hub_snapshot(tmp_path / "snapshot", TOKENS, NINE_LABEL_COMMIT)
    said: list[str] = []
    repo = export_repository(snapshot, tmp_path / "repo", verify=False, progress=said.append,
                             require_labels=9)
    manifest = load_manifest(repo)
    assert manifest.model_name == "emotion2vec_plus_tiny" and manifest.warnings == ()
    assert manifest.source is not None and manifest.source.hub is not None
    assert manifest.source.hub.commit == NINE_LABEL_COMMIT
    assert "warnings" not in json.loads((repo / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert not any("WARNING" in line for line in said)
