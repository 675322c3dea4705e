"""The model repository: manifest readable by the server, precisions with recorded deviations, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from emotion2vec_serving.export.onnx_export import export_repository
from emotion2vec_serving.export.ort_run import OnnxModel
from emotion2vec_serving.export.signals import speech_like
from emotion2vec_serving.modelrepo.manifest import OUTPUT_NAMES, load_manifest

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"progress": lambda _message: None}


def test_manifest_is_readable_by_the_server(tiny_repo: Path, tiny_checkpoint: Path) -> None:
    manifest = load_manifest(tiny_repo)
    assert manifest.model_name == "emotion2vec_tiny_random" and manifest.untrained
    assert manifest.precision == "fp32" and manifest.opset == 17 and manifest.embedding_dim == 32
    assert (manifest.sample_rate_hz, manifest.frame_rate_hz, manifest.frame_hop_samples) == (16000, 50.0, 320)
    assert manifest.min_samples == manifest.receptive_field_samples == 400
    assert manifest.output_names == OUTPUT_NAMES
    assert [(lb.name, lb.name_zh, lb.enabled) for lb in manifest.labels][:2] == [
        ("angry", "生气", True), ("disgusted", "厌恶", True)]
    assert manifest.labels[8].token == "<unk>" and manifest.labels[8].name == "unknown"
    import hashlib

    sha = hashlib.sha256((tiny_checkpoint / "model.pt").read_bytes()).hexdigest()
    assert manifest.source is not None and manifest.deviation_from_fp32 is not None
    assert manifest.source.checkpoint_sha256 == sha and manifest.model_version == sha[:12]
    assert {"torch", "onnx", "onnxruntime", "funasr"} <= set(manifest.exporter)
    assert manifest.deviation_from_fp32.max_abs_probs < 1e-5


def test_graph_has_dynamic_axes_and_no_baked_length(tiny_repo: Path) -> None:
    graph = onnx.load(str(tiny_repo / "model.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"waveform": ["batch", "samples"], "lengths": ["batch"]}
    # Longer than anything seen at export (the tracing batch is 1 s): the ALiBi bias must be computed.
    out = OnnxModel(tiny_repo / "model.onnx").run_clips([speech_like(16000 * 45, seed=9)])[0]
    assert out["frame_features"].shape == (2249, 32)


@pytest.mark.parametrize(
    ("precision", "max_probs", "min_cos"), [("int8", 0.05, 0.99), ("fp16", 5e-3, 0.999)]
)
def test_lower_precisions_record_their_deviation(
    tiny_checkpoint: Path,
    tiny_repo: Path,
    tmp_path: Path,
    precision: str,
    max_probs: float,
    min_cos: float,
) -> None:
    repo = export_repository(
        tiny_checkpoint, tmp_path / precision, precision=precision, verify=False, **QUIET
    )
    manifest = load_manifest(repo)
    dev = manifest.deviation_from_fp32
    assert manifest.precision == precision and dev is not None
    assert 0 < dev.max_abs_probs < max_probs and 1 > dev.min_cosine_embedding > min_cos
    # Inputs and outputs stay float32 at the boundary whatever the precision.
    session = OnnxModel(repo / "model.onnx").session
    assert {i.type for i in session.get_inputs()} == {"tensor(float)", "tensor(int64)"}
    assert {o.type for o in session.get_outputs()} == {"tensor(float)", "tensor(int64)"}
    clip = speech_like(12345, seed=2)
    ours = OnnxModel(repo / "model.onnx").run_clips([clip])[0]["probs"]
    fp32 = OnnxModel(tiny_repo / "model.onnx").run_clips([clip])[0]["probs"]
    assert np.abs(ours - fp32).max() < max_probs


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emotion2vec_serving.export.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_checkpoint_onnx_and_demo(tmp_path: Path) -> None:
    done = _cli("checkpoint", "--size", "tiny", "--seed", "7", "--out", str(tmp_path / "ck"))
    assert done.returncode == 0, done.stderr
    done = _cli("onnx", "--source", str(tmp_path / "ck"), "--out", str(tmp_path / "repo"), "--no-verify")
    assert done.returncode == 0, done.stderr
    assert "[2/4] exporting" in done.stderr and load_manifest(tmp_path / "repo").precision == "fp32"
    assert json.loads(done.stdout)["parity"] is None

    done = _cli("onnx", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "r2"))
    assert done.returncode == 2 and "no such directory" in done.stderr

    first = _cli("demo", "--out", str(tmp_path / "demo"))
    assert first.returncode == 0, first.stderr
    repo = Path(first.stdout.strip())
    stamp = (repo / "model.onnx").stat().st_mtime_ns
    again = _cli("demo", "--out", str(tmp_path / "demo"))
    assert again.returncode == 0 and Path(again.stdout.strip()) == repo
    assert (repo / "model.onnx").stat().st_mtime_ns == stamp  # idempotent: reused, not rebuilt
    assert load_manifest(repo).untrained


def test_ensure_demo_repo_returns_a_loadable_repository(tmp_path: Path) -> None:
    from emotion2vec_serving.export.demo import ensure_demo_repo

    repo = ensure_demo_repo(tmp_path)
    assert load_manifest(repo).model_name == "emotion2vec_tiny_random"
    assert ensure_demo_repo(tmp_path) == repo
