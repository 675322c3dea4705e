"""The Triton model directory: config.pbtxt parses as Triton's own ModelConfig protobuf (tritonclient ships
it), agrees with the ONNX graph, and ONNX Runtime runs the model from the version directory."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from emotion2vec_serving.export import onnx_export
from emotion2vec_serving.export.onnx_export import export_repository
from emotion2vec_serving.export.ort_run import pad_batch
from emotion2vec_serving.export.signals import speech_like_set
from emotion2vec_serving.export.triton import write_triton_layout
from emotion2vec_serving.modelrepo import MANIFEST_FILE, ManifestError, load_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[2]

# Parsed in a child process: tritonclient's protobuf module must not share a process with the server's
# OIP stubs (both define the 'inference' protobuf package).
PARSE = """
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
config = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())
print(json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)))
"""


def _parse(config: Path) -> dict:  # type: ignore[type-arg]
    done = subprocess.run([sys.executable, "-c", PARSE, str(config)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _check_runs(model_dir: Path, config: dict) -> None:  # type: ignore[type-arg]
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i["name"] for i in config["input"]]
    waveform, lengths = pad_batch(speech_like_set((0.5, 1.3)))
    outputs = session.run(None, {"waveform": waveform, "lengths": lengths})
    for declared, value in zip(config["output"], outputs, strict=True):
        dims = [int(d) for d in declared["dims"]]
        shape = list(value.shape)
        assert shape[0] == 2, declared["name"]  # the batch axis Triton adds
        if "reshape" in declared:  # one value per item
            assert shape == [2] and dims == [1], declared
        else:
            assert len(shape[1:]) == len(dims), declared
            assert all(d in (-1, s) for d, s in zip(dims, shape[1:], strict=True)), (declared, shape)


def test_triton_layout_of_the_tiny_model(tiny_repo: Path, tmp_path: Path) -> None:
    target = write_triton_layout(tiny_repo, tmp_path / "triton", max_batch_size=16)
    manifest = load_manifest(tiny_repo)
    assert target == tmp_path / "triton" / manifest.model_name
    assert (target / "1" / "model.onnx").read_bytes() == (tiny_repo / "model.onnx").read_bytes()
    config = _parse(target / "config.pbtxt")
    assert config["name"] == manifest.model_name and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 16 and "dynamic_batching" in config
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["waveform"]["data_type"] == "TYPE_FP32" and inputs["waveform"]["dims"] == ["-1"]
    assert inputs["lengths"]["data_type"] == "TYPE_INT64" and inputs["lengths"]["dims"] == ["1"]
    assert "reshape" in inputs["lengths"]
    outputs = {o["name"]: o for o in config["output"]}
    assert list(outputs) == list(manifest.output_names)
    n_labels = len(manifest.labels)
    assert outputs["probs"]["dims"] == [str(n_labels)] and outputs["probs"]["label_filename"] == "labels.txt"
    assert outputs["frame_features"]["dims"] == ["-1", str(manifest.embedding_dim)]
    labels = (target / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == [label.name for label in manifest.labels]
    _check_runs(target, config)


def test_cli_writes_the_layout_beside_the_export_and_large_models_keep_external_data(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "emotion2vec_serving.export.cli", "onnx", "--source", str(tiny_checkpoint),
         "--out", str(tmp_path / "repo"), "--no-verify", "--triton-layout", str(tmp_path / "triton")],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    name = load_manifest(tmp_path / "repo").model_name
    assert (tmp_path / "triton" / name / "config.pbtxt").is_file()
    # A model stored with external data (as every large one is): the data file travels with it.
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    external = export_repository(tiny_checkpoint, tmp_path / "external", verify=False,
                                 progress=lambda _m: None)
    assert (external / "model.onnx.data").is_file()
    target = write_triton_layout(external, tmp_path / "triton2", name="emotion")
    assert (target / "1" / "model.onnx.data").is_file()
    _check_runs(target, _parse(target / "config.pbtxt"))
    # Same answers as the self-contained export.
    waveform, lengths = pad_batch(speech_like_set((0.5, 1.3)))
    one = ort.InferenceSession(str(tmp_path / "repo" / "model.onnx"), providers=["CPUExecutionProvider"])
    two = ort.InferenceSession(str(target / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for a, b in zip(one.run(None, {"waveform": waveform, "lengths": lengths}),
                    two.run(None, {"waveform": waveform, "lengths": lengths}), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_layout_reads_the_repository_through_the_typed_manifest(tiny_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(tiny_repo / "model.onnx", repo / "emotion.onnx")
    manifest = load_manifest(tiny_repo)
    renamed = dataclasses.replace(manifest, onnx_file="emotion.onnx",
                                  labels=tuple(dataclasses.replace(lb, name=lb.name.upper())
                                               for lb in manifest.labels))
    write_manifest(repo, renamed)
    target = write_triton_layout(repo, tmp_path / "triton")
    assert (target / "1" / "model.onnx").read_bytes() == (tiny_repo / "model.onnx").read_bytes()
    assert (target / "labels.txt").read_text(encoding="utf-8").splitlines()[0] == "ANGRY"
    # A manifest the server would refuse makes no layout either, and the refusal names the field.
    data = json.loads((repo / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["labels"][0]["name"] = 5
    (repo / MANIFEST_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ManifestError, match=r"field 'labels\[0\]\.name' must be a string"):
        write_triton_layout(repo, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
