"""The writers of the model repository contract: the exporter's tiny repository and the benchmarks' null
model are both written by ``modelrepo.write_manifest`` and read back typed by ``load_manifest``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from emotion2vec_serving.modelrepo import MANIFEST_FILE, ModelManifest, load_manifest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package; `python -m pytest` adds the cwd
    sys.path.insert(0, str(ROOT))

from benchmarks.suite.null_model import build_null_model  # noqa: E402

#: The exporter's claim threshold (export/onnx_export.py BATCH_EXACT_TOLERANCE).
BATCH_EXACT_TOLERANCE = 1e-5


def _as_the_writer_writes(manifest: ModelManifest) -> str:
    return json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) + "\n"


def test_the_exported_tiny_repository_loads_with_typed_batch_exactness(tiny_repo: Path) -> None:
    manifest = load_manifest(tiny_repo)
    deviation = manifest.deviation_from_fp32
    assert deviation is not None and manifest.source is not None
    assert isinstance(manifest.batch_exact, bool) and isinstance(manifest.batch_exact_equal_length, bool)
    for measured in (deviation.batch_consistency_max_abs, deviation.equal_length_consistency_max_abs,
                     deviation.max_abs_embedding, deviation.top1_agreement):
        assert isinstance(measured, float)
    # The claims are the measurements: fp32 is batch-exact, padded or not.
    assert deviation.batch_consistency_max_abs is not None
    assert manifest.batch_exact is (deviation.batch_consistency_max_abs <= BATCH_EXACT_TOLERANCE) is True
    assert manifest.batch_exact_equal_length
    assert manifest.quantization is None and manifest.parity is None  # fp32, exported without --verify
    assert manifest.source.hub is None and manifest.source.weights_file == "model.pt"
    assert manifest.source.config["embed_dim"] == manifest.embedding_dim == 32
    assert isinstance(manifest.export_seconds, float) and "torch" in manifest.exporter
    assert (tiny_repo / MANIFEST_FILE).read_text(encoding="utf-8") == _as_the_writer_writes(manifest)


def test_the_null_model_repository_is_written_by_the_same_writer(tmp_path: Path) -> None:
    repo = build_null_model(tmp_path / "null")
    manifest = load_manifest(repo)
    assert (repo / MANIFEST_FILE).read_text(encoding="utf-8") == _as_the_writer_writes(manifest)
    assert manifest.model_name == "null_model" and manifest.untrained and manifest.precision == "fp32"
    assert manifest.batch_exact and manifest.batch_exact_equal_length  # what the server assumed before
    assert [label.name for label in manifest.labels][-1] == "unknown" and len(manifest.labels) == 9
    assert manifest.source is not None and manifest.model_version == manifest.source.checkpoint_sha256[:12]
    # The manifest describes the graph it sits beside.
    session = ort.InferenceSession(str(manifest.onnx_path), providers=["CPUExecutionProvider"])
    assert tuple(i.name for i in session.get_inputs()) == manifest.input_names
    assert tuple(o.name for o in session.get_outputs()) == manifest.output_names
    outputs = dict(zip(manifest.output_names, session.run(None, {
        "waveform": np.zeros((2, 16000), np.float32), "lengths": np.array([16000, 8000], np.int64)}),
        strict=True))
    assert outputs["probs"].shape == (2, len(manifest.labels))
    assert outputs["embedding"].shape == (2, manifest.embedding_dim)
    # Built again into the same directory: the same manifest (the version is the graph's digest).
    assert load_manifest(build_null_model(repo)) == manifest
