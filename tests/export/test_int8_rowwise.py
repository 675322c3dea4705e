"""Batch-exact int8 (row-wise activation scales) against fp32 and against the old per-tensor dynamic int8.

Real exports of the tiny checkpoint, run through the server's own ``Runner`` (ONNX Runtime CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from emotion2vec_serving.export.onnx_export import BATCH_EXACT_TOLERANCE, export_repository
from emotion2vec_serving.export.signals import speech_like
from emotion2vec_serving.modelrepo.manifest import ModelManifest, load_manifest
from emotion2vec_serving.server.app import batching_caveat
from emotion2vec_serving.server.runtime.contract import RunnerOptions
from emotion2vec_serving.server.runtime.engines import equal_length_batches
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER
from emotion2vec_serving.server.runtime.runner import Runner

QUIET = {"progress": lambda _message: None}


@pytest.fixture(scope="module")
def int8_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_repository(tiny_checkpoint, tmp_path_factory.mktemp("int8"), precision="int8", verify=False,
                             **QUIET)


@pytest.fixture(scope="module")
def int8_dynamic_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_repository(tiny_checkpoint, tmp_path_factory.mktemp("int8_dynamic"),
                             precision="int8_dynamic", verify=False, **QUIET)


def _runner(manifest: ModelManifest) -> Runner:
    return Runner(manifest, RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=1))


ITEMS = (16000, 7000, 23000)


def _alone_vs_equal_length_mates(repo: Path) -> float:
    """Largest |Δprobs| of items alone vs. in a batch with 20x louder mates of exactly the same length."""
    runner = _runner(load_manifest(repo))
    worst = 0.0
    try:
        for s, n in enumerate(ITEMS):
            item = speech_like(n, seed=s)
            (alone,) = runner.run([item])
            mates = [20.0 * speech_like(n, seed=50 + s), 5.0 * speech_like(n, seed=70 + s)]
            batched = runner.run([mates[0], item, mates[1]])[1]
            assert alone.probs is not None and batched.probs is not None
            worst = max(worst, float(np.abs(alone.probs - batched.probs).max()))
    finally:
        runner.close()
    return worst


def test_int8_manifest_records_batch_exact_and_measured_deviation(int8_repo: Path) -> None:
    manifest = load_manifest(int8_repo)
    assert manifest.precision == "int8" and manifest.batch_exact_equal_length
    quant, dev = manifest.quantization, manifest.deviation_from_fp32
    assert quant is not None and quant.method == "int8_rowwise" and quant.rowwise
    assert quant.smoothing is not None and quant.smoothing.calibration_clips == 3
    assert dev is not None and dev.equal_length_consistency_max_abs is not None
    assert dev.equal_length_consistency_max_abs <= BATCH_EXACT_TOLERANCE
    assert 0 < dev.max_abs_probs <= 0.02 and dev.min_cosine_embedding >= 0.99
    assert dev.top1_agreement == 1.0


def test_int8_graph_quantises_every_weight_matmul(int8_repo: Path) -> None:
    graph = onnx.load(str(int8_repo / "model.onnx")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    quant = load_manifest(int8_repo).quantization
    assert quant is not None and quant.matmuls_quantised is not None
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) == quant.matmuls_quantised > 0
    for node in graph.node:
        if node.op_type == "MatMulInteger":
            w = inits[node.input[1]]
            # 8-bit weights with 7-bit activations: u8 x s8 pairs cannot overflow AVX2's 16-bit sums.
            assert w.dtype == np.int8 and np.abs(w.astype(np.int32)).max() <= 127
        if node.op_type == "MatMul" and node.input[1] in inits:
            assert inits[node.input[1]].shape[1] < 16, node.name  # only the classifier head stays fp32


def test_int8_is_batch_exact_but_int8_dynamic_is_not(int8_repo: Path, int8_dynamic_repo: Path) -> None:
    assert load_manifest(int8_repo).batch_exact_equal_length
    assert _alone_vs_equal_length_mates(int8_repo) <= BATCH_EXACT_TOLERANCE
    # The old per-tensor scale: a loud batch mate changes every other item's answer.
    assert not load_manifest(int8_dynamic_repo).batch_exact_equal_length
    assert _alone_vs_equal_length_mates(int8_dynamic_repo) > 10 * BATCH_EXACT_TOLERANCE


def test_served_int8_batches_of_mixed_lengths_equal_items_alone(int8_repo: Path) -> None:
    """The server runs int8 batches as equal-length groups: any batch mix gives each item's alone answer."""
    runner = _runner(load_manifest(int8_repo))
    served = equal_length_batches(runner.run)
    items = [speech_like(n, seed=s) for s, n in enumerate((16000, 7000, 16000, 23000, 7000))]
    items[2] = 20.0 * items[2]
    try:
        alone = [runner.run([item])[0] for item in items]
        together = served(items)
        assert [r.frame_features.shape[0] for r in together] == [a.frame_features.shape[0] for a in alone]
        assert [r.batch_size for r in together] == [2, 2, 2, 1, 2]  # one run per distinct length
        for a, t in zip(alone, together, strict=True):
            assert a.probs is not None and t.probs is not None
            assert float(np.abs(a.probs - t.probs).max()) <= BATCH_EXACT_TOLERANCE
    finally:
        runner.close()


def test_int8_is_close_to_fp32_through_the_runner(int8_repo: Path, tiny_repo: Path) -> None:
    clips = [speech_like(n, seed=20 + n % 7) for n in (5000, 16000, 32000, 48000)]
    quant, fp32 = _runner(load_manifest(int8_repo)), _runner(load_manifest(tiny_repo))
    try:
        assert quant.precision == "int8" and quant.engine == "onnxruntime"
        for q, f in zip(quant.run(clips), fp32.run(clips), strict=True):
            assert q.probs is not None and f.probs is not None
            assert float(np.abs(q.probs - f.probs).max()) <= 0.02
            norms = np.linalg.norm(q.embedding) * np.linalg.norm(f.embedding)
            cos = float(np.dot(q.embedding, f.embedding) / norms)
            assert cos >= 0.99
    finally:
        quant.close()
        fp32.close()


def test_only_the_not_batch_exact_int8_carries_the_batching_caveat(int8_repo: Path,
                                                                     int8_dynamic_repo: Path) -> None:
    exact, dynamic = load_manifest(int8_repo), load_manifest(int8_dynamic_repo)
    assert not dynamic.batch_exact and dynamic.quantization is not None
    assert dynamic.quantization.method == "int8_dynamic" and not dynamic.quantization.rowwise
    assert batching_caveat(dynamic.precision, 8, batch_exact=dynamic.batch_exact) is not None
    # As the server asks (server/app.py): row-wise int8 is exact in the equal-length groups it runs.
    assert not exact.batch_exact and exact.batch_exact_equal_length
    served_exact = exact.batch_exact or exact.batch_exact_equal_length
    assert batching_caveat(exact.precision, 8, batch_exact=served_exact) is None
