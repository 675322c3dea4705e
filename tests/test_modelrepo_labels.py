"""modelrepo/labels.py: counting a head's enabled labels, the warning for an emotion2vec+ model with fewer
than nine, ``--require-labels`` refusals, and what a server serves with (the manifest's warnings plus its
own)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from emotion2vec_serving.modelrepo.labels import (
    LabelCountError,
    check_labels,
    enabled_count,
    manifest_revision,
    served_warnings,
)
from emotion2vec_serving.modelrepo.manifest import (
    EMOTION2VEC_FRAMING,
    INPUT_NAMES,
    OUTPUT_NAMES,
    DownloadRecord,
    ModelManifest,
    Source,
    labels_from_tokens,
)

NINE = ("生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "中立/neutral", "其他/other",
        "难过/sad", "吃惊/surprised", "<unk>")
FIVE = ("生气/angry", "unuse_1", "unuse_2", "开心/happy", "中立/neutral", "unuse_5", "难过/sad", "unuse_7",
        "<unk>")
COMMIT = "6c303ba987b86b93193de93e34bb2b077a6bedc4"


def _manifest(tokens: tuple[str, ...], name: str = "emotion2vec_plus_large", commit: str | None = COMMIT,
              warnings: tuple[str, ...] = ()) -> ModelManifest:
    hub = DownloadRecord(hub="huggingface", repo_id=f"emotion2vec/{name}", revision="main", commit=commit)
    return ModelManifest(
        directory=Path("/nowhere"), model_name=name, model_version="0123456789ab", precision="fp32",
        onnx_file="model.onnx", opset=17, **EMOTION2VEC_FRAMING, embedding_dim=1024,
        labels=labels_from_tokens(tokens), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
        untrained=False, batch_exact=True, batch_exact_equal_length=True,
        source=Source(checkpoint_sha256="0" * 64, path="/ck", hub=hub), warnings=warnings,
    )


def test_five_of_nine_labels_of_an_emotion2vec_plus_model_give_a_warning_naming_the_revision() -> None:
    labels = labels_from_tokens(FIVE)
    assert enabled_count(labels) == 5
    warning = check_labels("emotion2vec_plus_large", labels, revision="v2.0.5")
    assert warning is not None
    assert warning.startswith("emotion2vec_plus_large at revision v2.0.5 enables only 5 of the 9 emotions")
    assert "--require-labels 9" in warning
    assert check_labels("emotion2vec_plus_large", labels_from_tokens(NINE), revision="v2.0.5") is None
    # Models that promise no nine emotions: the headless base model, generated test models.
    assert check_labels("emotion2vec_base", ()) is None
    assert check_labels("emotion2vec_tiny_random", labels) is None


def test_require_refuses_below_n_and_accepts_n() -> None:
    five = labels_from_tokens(FIVE)
    with pytest.raises(LabelCountError, match="emotion2vec_plus_base at revision abc enables 5 labels; "
                                              "--require-labels asks for at least 9"):
        check_labels("emotion2vec_plus_base", five, revision="abc", require=9)
    # At the requirement the model is accepted, and still warned about (fewer than its nine).
    assert check_labels("emotion2vec_plus_base", five, require=5) is not None
    assert check_labels("emotion2vec_plus_base", labels_from_tokens(NINE), require=9) is None
    # Any model may be held to a count: a headless one has no labels at all.
    with pytest.raises(LabelCountError, match="enables 0 labels"):
        check_labels("emotion2vec_base", (), require=1)
    assert check_labels("emotion2vec_base", (), require=0) is None


def test_the_revision_named_is_the_resolved_commit_else_the_requested_revision() -> None:
    assert manifest_revision(_manifest(FIVE)) == COMMIT
    assert manifest_revision(_manifest(FIVE, commit=None)) == "main"
    local = dataclasses.replace(_manifest(FIVE), source=Source(checkpoint_sha256="0" * 64, path="/ck"))
    assert manifest_revision(local) is None
    assert manifest_revision(dataclasses.replace(local, source=None)) is None


def test_a_server_serves_the_manifests_warnings_and_its_own_each_once() -> None:
    (own,) = served_warnings(_manifest(FIVE))
    assert COMMIT in own and "5 of the 9" in own
    # The export wrote the same text into the manifest: it is shown once.
    assert served_warnings(_manifest(FIVE, warnings=(own,))) == (own,)
    # Other warnings of the manifest come first; a nine-label model adds none of its own.
    assert served_warnings(_manifest(FIVE, warnings=("other",))) == ("other", own)
    assert served_warnings(_manifest(NINE, warnings=("other",))) == ("other",)
    assert served_warnings(_manifest(NINE)) == ()
    with pytest.raises(LabelCountError, match=f"at revision {COMMIT} enables 5 labels"):
        served_warnings(_manifest(FIVE), require=9)
    assert served_warnings(_manifest(NINE), require=9) == ()
