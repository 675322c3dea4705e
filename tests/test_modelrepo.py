"""The model repository contract (modelrepo/): the typed manifest written and read back, refusals that name
the field, and the JSON shape the exporter has always written (so existing repositories keep loading).

Standard library only, like modelrepo itself: the model file is a placeholder (the reader checks that it is
there, never what it holds). The exported tiny model and the null model are checked in
tests/test_modelrepo_writers.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from emotion2vec_serving.modelrepo import (
    HEADLESS_OUTPUT_NAMES,
    INPUT_NAMES,
    MANIFEST_FILE,
    OUTPUT_NAMES,
    Deviation,
    DownloadRecord,
    FileDigest,
    Label,
    ManifestError,
    ModelManifest,
    Parity,
    Quantization,
    Smoothing,
    Source,
    labels_from_tokens,
    load_manifest,
    write_manifest,
)

TOKENS = ("生气/angry", "厌恶/disgusted", "unuse_2", "<unk>")


def _full(directory: Path) -> ModelManifest:
    """A manifest in which every field, nested ones included, holds something other than its default."""
    return ModelManifest(
        directory=directory,
        model_name="emotion2vec_plus_large",
        model_version="0123456789ab",
        precision="int8",
        onnx_file="model.onnx",
        opset=17,
        sample_rate_hz=16000,
        frame_rate_hz=50.0,
        frame_hop_samples=320,
        receptive_field_samples=400,
        min_samples=400,
        embedding_dim=1024,
        labels=labels_from_tokens(TOKENS),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        untrained=True,
        batch_exact=False,
        batch_exact_equal_length=True,
        quantization=Quantization(
            method="int8_rowwise", weights="int8 per channel", activations="uint8 per row", ops="MatMul",
            weight_bits=8, activation_levels=127, asymmetric=True, matmuls_quantised=97,
            smoothing=Smoothing(alpha=0.5, calibration_clips=3),
            weight_bytes_fp32=1200, weight_bytes_int8=300,
        ),
        source=Source(
            checkpoint_sha256="0123456789ab" + "f" * 52,
            path="/models/checkpoint",
            weights_file="model.pt",
            hub=DownloadRecord(
                hub="modelscope", repo_id="iic/emotion2vec_plus_large", revision="v2.0.5",
                endpoint="https://modelscope.cn", pinned_default=True, commit="abc123",
                files=(FileDigest("model.pt", 1234, "f" * 64), FileDigest("config.yaml", 56, "e" * 64)),
            ),
            config={"embed_dim": 1024, "modalities": {"audio": {"conv_bias": False}}, "norm_eps": 1e-05},
        ),
        exporter={"torch": "2.5.0", "onnx": "1.17.0"},
        export_seconds=12.5,
        deviation_from_fp32=Deviation(
            max_abs_probs=2.9e-3, min_cosine_embedding=0.9999, max_abs_embedding=0.04,
            batch_consistency_max_abs=1.2e-3, equal_length_consistency_max_abs=6e-8, top1_agreement=1.0,
            inputs="speech_like_set seeds 1234..", equal_length_consistency_by_threads={1: 6e-8, 4: 1.8e-3},
        ),
        parity=Parity(
            max_abs={"single_probs": 3e-7, "batch_probs": 4e-7}, reference="funasr.AutoModel",
            lengths_samples=(400, 16000), batches=3, batch_size=4, tolerance=1e-4, passed=True,
        ),
        notes={"frame_probs": "head applied to each frame"},
        warnings=("emotion2vec_plus_large at revision abc123 enables only 5 of the 9 emotions", "second"),
    )


def _repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model.onnx").write_bytes(b"placeholder: the reader checks that the file is there")
    return repo


def _unset(value: Any, where: str) -> list[str]:
    """Paths of the dataclass fields (recursively) that still hold their default (None, empty)."""
    if not dataclasses.is_dataclass(value):
        return []
    found = []
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if item is None or item == () or item == {}:
            found.append(f"{where}.{f.name}")
        found += _unset(item, f"{where}.{f.name}")
    return found


def test_a_full_manifest_round_trips_field_for_field(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    manifest = _full(repo)
    assert _unset(manifest, "manifest") == []  # the round trip below covers every field
    written = write_manifest(repo, manifest)
    assert written == manifest and load_manifest(repo) == manifest
    loaded = load_manifest(repo)
    assert loaded.labels[2] == Label(2, "unuse_2", "", "unuse_2", enabled=False)
    assert loaded.labels[3].name == "unknown" and loaded.labels[0].name_zh == "生气"
    assert loaded.source is not None and loaded.source.hub is not None
    assert loaded.source.hub.files[0] == FileDigest("model.pt", 1234, "f" * 64)
    data = json.loads((repo / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert data["schema_version"] == 1
    assert data["frame_rate_hz"] == 50 and isinstance(data["frame_rate_hz"], int)
    assert data["source"]["hub"]["files"]["model.pt"] == {"size": 1234, "sha256": "f" * 64}
    assert data["quantization"]["smoothing"] == {"alpha": 0.5, "calibration_clips": 3}
    assert data["warnings"] == list(manifest.warnings)
    # Written atomically, yet readable as any file written under the umask (a shared model volume).
    umask = os.umask(0o022)
    os.umask(umask)
    assert (repo / MANIFEST_FILE).stat().st_mode & 0o777 == 0o666 & ~umask


# The manifest the exporter wrote for the tiny model before the manifest was typed (checkpoint config
# shortened): the typed reader must take it, and the writer must give back the same JSON, key order included.
LEGACY = """{
  "schema_version": 1, "model_name": "emotion2vec_tiny_random", "model_version": "f49eeaa00eba",
  "untrained": true, "precision": "int8", "batch_exact": true, "batch_exact_equal_length": true,
  "quantization": {"method": "int8_rowwise", "weights": "int8 symmetric per output channel (8-bit)",
    "activations": "uint8 dynamic", "ops": "MatMul", "weight_bits": 8, "activation_levels": 127,
    "asymmetric": true, "matmuls_quantised": 13, "smoothing": null, "weight_bytes_fp32": 151552,
    "weight_bytes_int8": 37888},
  "onnx_file": "model.onnx", "opset": 17, "sample_rate_hz": 16000, "frame_rate_hz": 50,
  "frame_hop_samples": 320, "receptive_field_samples": 400, "min_samples": 400, "embedding_dim": 32,
  "labels": [{"index": 0, "name": "angry", "name_zh": "生气", "token": "生气/angry", "enabled": true},
             {"index": 1, "name": "unknown", "name_zh": "", "token": "<unk>", "enabled": true}],
  "io": {"inputs": ["waveform", "lengths"],
         "outputs": ["logits", "probs", "frame_probs", "embedding", "frame_features", "frame_lengths"]},
  "source": {"checkpoint_sha256": "f49eeaa00eba784727e2333ccf625dddbf9ee7c7144a7fadec996785724c8e0c",
             "path": "/tmp/ck", "weights_file": "model.pt",
             "hub": {"hub": "modelscope", "endpoint": "https://www.modelscope.cn", "repo_id": "iic/x",
                     "revision": "v1", "pinned_default": false, "commit": null,
                     "files": {"model.pt": {"size": 10, "sha256": "ab"}}},
             "config": {"depth": 2, "loss_scale": null, "norm_eps": 1e-05, "modalities": {"audio": {}}}},
  "exporter": {"torch": "2.13.0+cpu", "onnx": "1.23.2", "funasr": "not installed"},
  "export_seconds": 3.07,
  "deviation_from_fp32": {"max_abs_probs": 0.0029, "min_cosine_embedding": 0.99991,
    "max_abs_embedding": 0.04, "batch_consistency_max_abs": 5.96e-08,
    "equal_length_consistency_max_abs": 5.96e-08, "top1_agreement": null, "inputs": "speech_like_set"},
  "parity": {"reference": "funasr.AutoModel, one clip at a time", "lengths_samples": [400, 401],
             "batches": 3, "batch_size": 4, "tolerance": null,
             "max_abs": {"single_probs": 1e-07, "batch_probs": 2e-07}, "passed": false},
  "notes": {"frame_probs": "head applied to each frame: this project's addition, not a FunASR output"}
}"""


def test_the_json_written_before_the_typed_writer_reads_and_rewrites_unchanged(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    (repo / MANIFEST_FILE).write_text(LEGACY, encoding="utf-8")
    manifest = load_manifest(repo)
    # Its int8 "batch_exact": true is not trusted (issue 24: padding is never exact for int8): equal lengths.
    assert not manifest.batch_exact and manifest.batch_exact_equal_length
    assert manifest.quantization is not None and manifest.quantization.rowwise
    assert manifest.parity is not None and manifest.parity.tolerance is None and not manifest.parity.passed
    assert manifest.source is not None and manifest.source.hub is not None
    assert manifest.source.hub.pinned_default is False and manifest.source.hub.commit is None
    write_manifest(repo, manifest)
    rewritten = json.loads((repo / MANIFEST_FILE).read_text(encoding="utf-8"))
    original = json.loads(LEGACY) | {"batch_exact": False}
    assert rewritten == original
    assert json.dumps(rewritten) == json.dumps(original)  # same keys in the same order, nested ones too


def test_an_old_manifest_without_the_batch_fields_and_provenance_still_loads(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    data = _full(repo).to_json()
    for key in ("batch_exact", "batch_exact_equal_length", "quantization", "source", "exporter",
                "export_seconds", "deviation_from_fp32", "parity", "notes", "untrained", "warnings"):
        del data[key]
    (repo / MANIFEST_FILE).write_text(json.dumps(data), encoding="utf-8")
    manifest = load_manifest(repo)
    # Before the fields: fp32/fp16 were batch-exact, the old (per-tensor) int8 was not.
    assert manifest.precision == "int8"
    assert (manifest.batch_exact, manifest.batch_exact_equal_length) == (False, False)
    assert manifest.source is None and manifest.deviation_from_fp32 is None and manifest.exporter == {}
    assert not manifest.untrained and manifest.warnings == ()
    data["precision"] = "fp16"
    (repo / MANIFEST_FILE).write_text(json.dumps(data), encoding="utf-8")
    assert load_manifest(repo).batch_exact_equal_length


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    """Set (or, for ``...``, delete) the field at ``a.b[2].c`` (``files/model.pt``: a key with a dot)."""
    keys: list[str | int] = [int(k) if k.isdigit() else k.replace("/", ".")
                             for k in re.findall(r"[^.\[\]]+", path)]
    for key in keys[:-1]:
        data = data[key]  # type: ignore[index]
    if value is ...:
        del data[keys[-1]]  # type: ignore[arg-type]
    else:
        data[keys[-1]] = value  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("opset", ..., "missing field 'opset'"),
        ("model_name", 3, "field 'model_name' must be a string, not int"),
        ("embedding_dim", 1024.0, "field 'embedding_dim' must be an integer, not float"),
        ("sample_rate_hz", True, "field 'sample_rate_hz' must be an integer, not bool"),
        ("schema_version", 2, "field 'schema_version' is 2, this reader reads 1"),
        ("precision", "int4", "field 'precision' is 'int4'"),
        ("labels[1].name", ..., "missing field 'labels[1].name'"),
        ("labels[2].enabled", "no", "field 'labels[2].enabled' must be true or false, not str"),
        ("labels[1].index", 5, "field 'labels' indices must be 0..3 in order"),
        ("io.inputs", ["waveform"], "field 'io.inputs' is ['waveform']"),
        ("io.outputs[0]", 7, "field 'io.outputs[0]' must be a string, not int"),
        ("io.outputs", list(HEADLESS_OUTPUT_NAMES),
         "field 'io.outputs' lacks ['logits', 'probs', 'frame_probs']"),
        ("onnx_file", "../model.onnx", "field 'onnx_file' must be a plain file name"),
        ("batch_exact", "yes", "field 'batch_exact' must be true or false, not str"),
        ("deviation_from_fp32.max_abs_probs", "small",
         "field 'deviation_from_fp32.max_abs_probs' must be a number"),
        ("deviation_from_fp32", [1], "field 'deviation_from_fp32' must be an object, not list"),
        ("deviation_from_fp32.equal_length_consistency_by_threads.4", "x",
         "field 'deviation_from_fp32.equal_length_consistency_by_threads.4' must be a number"),
        ("deviation_from_fp32.equal_length_consistency_by_threads", {"two": 1e-7},
         "field 'deviation_from_fp32.equal_length_consistency_by_threads.two' is not a thread count"),
        ("quantization.smoothing.alpha", True,
         "field 'quantization.smoothing.alpha' must be a number, not bool"),
        ("source.hub.revision", ..., "missing field 'source.hub.revision'"),
        ("source.hub.files.model/pt.size", "1234",
         "field 'source.hub.files.model.pt.size' must be an integer"),
        ("parity.max_abs.single_probs", None, "field 'parity.max_abs.single_probs'"),
        ("parity.lengths_samples[1]", 1.5, "field 'parity.lengths_samples[1]' must be an integer, not float"),
        ("exporter.torch", 2, "field 'exporter.torch' must be a string, not int"),
        ("notes", "none", "field 'notes' must be an object, not str"),
        ("warnings", "five labels", "field 'warnings' must be a list, not str"),
        ("warnings[1]", {"text": "x"}, "field 'warnings[1]' must be a string, not object"),
    ],
)
def test_a_malformed_manifest_is_refused_naming_the_field(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    repo = _repository(tmp_path)
    data = copy.deepcopy(_full(repo).to_json())
    _set(data, path, value)
    (repo / MANIFEST_FILE).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ManifestError, match=re.escape(message)) as refused:
        load_manifest(repo)
    assert str(refused.value).startswith(str(repo / MANIFEST_FILE))


def test_missing_unreadable_or_modelless_repositories_are_refused(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(repo)
    (repo / MANIFEST_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match="unreadable"):
        load_manifest(repo)
    (repo / MANIFEST_FILE).write_text("[]", encoding="utf-8")
    with pytest.raises(ManifestError, match="not a JSON object"):
        load_manifest(repo)
    write_manifest(repo, _full(repo))
    (repo / "model.onnx").unlink()
    with pytest.raises(ManifestError, match="model file missing"):
        load_manifest(repo)


def test_the_writer_refuses_what_the_reader_would_and_keeps_the_manifest_there(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    good = _full(repo)
    write_manifest(repo, good)
    before = (repo / MANIFEST_FILE).read_bytes()
    bad = [
        dataclasses.replace(good, precision="int4"),
        dataclasses.replace(good, input_names=("lengths", "waveform")),
        dataclasses.replace(good, onnx_file="missing.onnx"),
        dataclasses.replace(good, labels=(Label(1, "angry"),)),
        dataclasses.replace(good, deviation_from_fp32=Deviation(max_abs_probs="0.1",  # type: ignore[arg-type]
                                                                min_cosine_embedding=1.0)),
    ]
    for manifest in bad:
        with pytest.raises(ManifestError):
            write_manifest(repo, manifest)
    assert (repo / MANIFEST_FILE).read_bytes() == before
    assert sorted(p.name for p in repo.iterdir()) == [MANIFEST_FILE, "model.onnx"]  # no temporary left


def test_labels_from_tokens_follow_tokens_txt() -> None:
    assert labels_from_tokens(TOKENS) == (
        Label(0, "angry", "生气", "生气/angry", True),
        Label(1, "disgusted", "厌恶", "厌恶/disgusted", True),
        Label(2, "unuse_2", "", "unuse_2", False),
        Label(3, "unknown", "", "<unk>", True),
    )


def test_the_batch_bound_is_what_was_measured_for_the_way_the_model_is_served(tmp_path: Path) -> None:
    int8 = _full(tmp_path)  # int8: equal-length groups, measured at 1 and 4 intra-op threads
    assert int8.batch_bound([1]) == 6e-8
    assert int8.batch_bound([1, 4]) == 1.8e-3  # the widest of the counts in use
    assert int8.batch_bound([2]) is None  # a thread count the exporter did not measure: not known
    assert int8.batch_bound([1, 2]) is None
    assert int8.batch_bound(None) is None  # another engine or a GPU
    assert int8.batch_bound([4], batched=False) == 0.0  # --max-batch-size 1: every item alone
    fp32 = dataclasses.replace(int8, precision="fp32", batch_exact=True)
    assert fp32.batch_bound([2]) == 1.2e-3  # padded batches: the padded measurement, whatever the threads
    legacy = dataclasses.replace(int8, batch_exact_equal_length=False)  # per-tensor int8: batch-dependent
    assert legacy.batch_bound([1]) is None
    assert dataclasses.replace(int8, deviation_from_fp32=None).batch_bound([1]) is None
