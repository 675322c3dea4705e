"""The OpenVINO engine against the real tiny model: the same runner contract as ONNX Runtime.

Every test runs real OpenVINO (the ``openvino`` extra, installed by CI) and compares with a real ONNX
Runtime session of the same repository; nothing here is mocked.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from emotion2vec_serving.modelrepo.manifest import ModelManifest, load_manifest
from emotion2vec_serving.server.config import parse_settings
from emotion2vec_serving.server.runtime.contract import RunnerError, RunnerOptions, RunnerTimeout
from emotion2vec_serving.server.runtime.engines import session_factory_for
from emotion2vec_serving.server.runtime.engines.openvino import OpenVinoFactory, cpu_has_native_bf16
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER
from emotion2vec_serving.server.runtime.runner import Runner
from tests.support.calls import raw_request
from tests.support.metrics import metric_value
from tests.support.servers import server_process

RATE = 16000


def _batch(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (RATE, 2 * RATE + 160, RATE // 3)]


def _ov(manifest: ModelManifest, **overrides: object) -> Runner:
    options = RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=1, engine="openvino",
                            inference_precision="f32")
    options = RunnerOptions(**{**options.__dict__, **overrides})  # type: ignore[arg-type]
    return Runner(manifest, options, session_factory=session_factory_for("openvino"))


def _ort(manifest: ModelManifest) -> Runner:
    return Runner(manifest, RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=1))


def test_openvino_runner_gives_onnxruntime_answers_per_item(manifest: ModelManifest) -> None:
    ov_runner, ort_runner = _ov(manifest), _ort(manifest)
    try:
        assert (ov_runner.engine, ov_runner.precision) == ("openvino", "fp32")
        assert ov_runner.provider == CPU_PROVIDER
        assert (ort_runner.engine, ort_runner.precision) == ("onnxruntime", "fp32")
        batch = _batch()
        got, want = ov_runner.run(batch), ort_runner.run(batch)
        assert len(got) == len(batch)
        for g, w in zip(got, want, strict=True):
            assert g.probs is not None and w.probs is not None and g.frame_probs is not None
            assert g.frame_features.shape == w.frame_features.shape  # sliced to the item's own frames
            assert g.frame_probs.shape[0] == w.frame_features.shape[0]
            np.testing.assert_allclose(g.probs, w.probs, atol=1e-4)
            np.testing.assert_allclose(g.embedding, w.embedding, atol=1e-4)
            assert g.batch_size == len(batch)
    finally:
        ov_runner.close()
        ort_runner.close()


def test_openvino_f32_is_batch_exact(manifest: ModelManifest) -> None:
    runner = _ov(manifest)
    try:
        batch = _batch(1)
        together = runner.run(batch)
        for item, in_batch in zip(batch, together, strict=True):
            (alone,) = runner.run([item])
            assert alone.probs is not None and in_batch.probs is not None
            assert float(np.abs(alone.probs - in_batch.probs).max()) <= 1e-5
            assert float(np.abs(alone.embedding - in_batch.embedding).max()) <= 1e-4
    finally:
        runner.close()


@pytest.mark.parametrize("asked", ["auto", "f32", "bf16"])
def test_inference_precision_reports_what_really_runs(manifest: ModelManifest, asked: str) -> None:
    native = cpu_has_native_bf16()
    expected = {"auto": "bf16" if native else "fp32", "f32": "fp32", "bf16": "bf16" if native else "fp32"}
    runner = _ov(manifest, inference_precision=asked)
    try:
        assert runner.precision == expected[asked]
        (result,) = runner.run(_batch()[:1])
        (reference,) = _ort(manifest).run(_batch()[:1])
        assert result.probs is not None and reference.probs is not None
        # bf16 (only where the CPU has it) keeps the bound; f32 is fp32.
        bound = 0.02 if runner.precision == "bf16" else 1e-4
        assert float(np.abs(result.probs - reference.probs).max()) <= bound
    finally:
        runner.close()


def test_the_watchdog_cancels_an_openvino_run_and_the_request_is_reused(manifest: ModelManifest) -> None:
    timeouts: list[None] = []
    runner = Runner(
        manifest,
        RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=1, engine="openvino", run_timeout_s=0.001),
        session_factory=session_factory_for("openvino"), on_run_timeout=lambda: timeouts.append(None),
    )
    wave = (0.1 * np.random.default_rng(0).standard_normal(20 * RATE)).astype(np.float32)
    try:
        with pytest.raises(RunnerTimeout, match="run timeout") as caught:
            runner.run([wave])
        assert "cancel" in str(caught.value.__cause__).lower(), caught.value.__cause__
        assert len(timeouts) == 1
        runner.options = RunnerOptions(**{**runner.options.__dict__, "run_timeout_s": 60.0})
        (result,) = runner.run([wave])
        assert result.probs is not None and np.isfinite(result.probs).all()
    finally:
        runner.close()


def test_instances_share_one_compiled_model_and_run_concurrently(manifest: ModelManifest) -> None:
    factory = OpenVinoFactory()
    runner = Runner(manifest, RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=1, instances=2,
                                            engine="openvino", inference_precision="f32"),
                    session_factory=factory)
    try:
        assert len(factory._compiled) == 1  # one copy of the weights for both infer requests
        batches = [_batch(seed) for seed in range(4)]
        sequential = [runner.run(b) for b in batches]
        concurrent: dict[int, list[np.ndarray]] = {}

        def work(i: int) -> None:
            concurrent[i] = [r.embedding for r in runner.run(batches[i])]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for i, results in enumerate(sequential):
            for got, want in zip(concurrent[i], results, strict=True):
                np.testing.assert_allclose(got, want.embedding, atol=1e-6)
    finally:
        runner.close()


def test_a_model_openvino_cannot_read_is_a_runner_error(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    with pytest.raises(RunnerError, match="cannot load"):
        Runner(load_manifest(broken), RunnerOptions(providers=(CPU_PROVIDER,), engine="openvino"),
               session_factory=session_factory_for("openvino"))


def test_engine_settings_are_validated() -> None:
    s = parse_settings(["--engine", "openvino", "--inference-precision", "bf16"], env={})
    assert (s.engine, s.inference_precision) == ("openvino", "bf16")
    assert parse_settings([], env={}).engine == "onnxruntime"
    with pytest.raises(ValueError, match="engine"):
        parse_settings(["--engine", "tensorflow"], env={})
    with pytest.raises(ValueError, match="inference precision"):
        parse_settings([], env={"EMOTION_INFERENCE_PRECISION": "int4"})


def _loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text(encoding="utf-8", errors="replace")


def test_a_server_process_serves_with_openvino_and_only_then_loads_it(
    model_dir: Path, manifest: ModelManifest
) -> None:
    signal = _batch(2)[1]
    (reference,) = _ort(manifest).run([signal])
    assert reference.probs is not None
    with server_process(model_dir, "--engine", "openvino", "--inference-precision", "f32") as srv:
        with grpc.insecure_channel(srv.target) as channel:
            stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
            response = stub.Recognize(raw_request(signal), timeout=30)
            info = stub.GetModelInfo(emotion_pb2.GetModelInfoRequest(), timeout=30)
        # GetModelInfo and every response say which engine runs, at the precision it really runs.
        assert (info.engine, info.model.precision, response.model.precision) == ("openvino", "fp32", "fp32")
        probs = np.array([s.score for s in response.utterance.scores], dtype=np.float32)
        np.testing.assert_allclose(probs, reference.probs, atol=1e-4)
        assert metric_value(srv.scrape(), "emotion_model_info", precision="fp32") == 1.0
        assert "libopenvino" in _loaded_libraries(srv.pid)
    with server_process(model_dir) as srv:
        with grpc.insecure_channel(srv.target) as channel:
            stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
            stub.Recognize(raw_request(signal), timeout=30)
            info = stub.GetModelInfo(emotion_pb2.GetModelInfoRequest(), timeout=30)
        assert info.engine == "onnxruntime"
        assert "libopenvino" not in _loaded_libraries(srv.pid)
    assert isinstance(response, emotion_pb2.RecognizeResponse)
