"""tritonclient.grpc (PyPI, unmodified) against a real server process: the Open Inference Protocol's gRPC
service answers health, metadata and configuration, and its inferences equal emotion.v1 Recognize on the
same audio (within 1e-5), for WAVEFORM and AUDIO inputs, batches > 1 and every output."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from emotion2vec_serving.server.process import ServerProcess
from tests.support.oip import (
    TOLERANCE,
    bytes_array,
    decode_array,
    encode_array,
    run_grpc_probe,
    v1_encoded,
    v1_waveform,
)


@pytest.fixture(scope="module")
def answers(oip_server: ServerProcess, model_name: str, audio_files: dict[str, bytes],
            waveforms: npt.NDArray[np.float32]) -> list[Any]:
    slow = waveforms[:1, : waveforms.shape[1] // 2]  # 8 kHz: the same samples last twice as long
    ops: list[dict[str, Any]] = [
        {"op": "health"},
        {"op": "metadata"},
        {"op": "config"},
        {"op": "infer", "outputs": None,
         "inputs": [{"name": "WAVEFORM", "datatype": "FP32", "array": encode_array(waveforms)}]},
        {"op": "infer", "inputs": [{"name": "AUDIO", "datatype": "BYTES",
                                    "array": encode_array(bytes_array(list(audio_files.values())))}],
         "outputs": ["PROBS", "LABEL", "EMBEDDING", "FRAME_PROBS"]},
        {"op": "infer", "inputs": [
            {"name": "WAVEFORM", "datatype": "FP32", "array": encode_array(slow)},
            {"name": "SAMPLE_RATE", "datatype": "INT32", "array": encode_array(np.array([8000], np.int32))},
        ], "outputs": ["PROBS"]},
        {"op": "index"},
    ]  # fmt: skip
    return run_grpc_probe(oip_server.target, model_name, ops)


def test_health_metadata_and_config(answers: list[Any], model_name: str) -> None:
    health, metadata, config = answers[0], answers[1], answers[2]
    assert health == {"live": True, "ready": True, "model_ready": True}
    assert metadata["server"]["name"] == "emotion2vec-serving"
    assert "model_configuration" in metadata["server"]["extensions"]
    model = metadata["model"]
    assert model["name"] == model_name and model["versions"] == ["1"]
    assert {t["name"] for t in model["inputs"]} == {"WAVEFORM", "AUDIO", "SAMPLE_RATE"}
    assert {t["name"]: t["datatype"] for t in model["outputs"]} == {
        "PROBS": "FP32", "LABEL": "BYTES", "EMBEDDING": "FP32", "FRAME_PROBS": "FP32"}
    cfg = config["config"]
    assert cfg["name"] == model_name
    labels = json.loads(cfg["parameters"]["labels"]["string_value"])
    probs_width = next(t for t in model["outputs"] if t["name"] == "PROBS")["shape"][1]
    assert len(labels) == int(probs_width) == 9
    assert answers[6]["models"] == [{"name": model_name, "version": "1", "state": "READY"}]


def test_waveform_batch_equals_emotion_v1(answers: list[Any], oip_server: ServerProcess,
                                          waveforms: npt.NDArray[np.float32]) -> None:
    infer = answers[3]
    assert "error" not in infer, infer
    assert infer["model_version"] == "1"
    assert set(infer["outputs"]) == {"PROBS", "LABEL"}  # the default outputs
    probs = decode_array(infer["outputs"]["PROBS"])
    labels = decode_array(infer["outputs"]["LABEL"])
    assert probs.shape == (2, 9) and labels.shape == (2,)
    for i, row in enumerate(waveforms):
        ref = v1_waveform(oip_server.target, row)
        np.testing.assert_allclose(probs[i], ref.probs, atol=TOLERANCE)
        assert labels[i].decode() == ref.label
    assert not np.allclose(probs[0], probs[1])  # two different inputs, two answers


def test_audio_batch_with_every_output_equals_emotion_v1(answers: list[Any], oip_server: ServerProcess,
                                                         audio_files: dict[str, bytes]) -> None:
    infer = answers[4]
    assert "error" not in infer, infer
    out = {name: decode_array(enc) for name, enc in infer["outputs"].items()}
    counts = json.loads(infer["parameters"]["FRAME_PROBS"]["frame_counts"]["string_param"])
    assert out["FRAME_PROBS"].shape == (3, max(counts), 9)
    assert len(set(counts)) > 1 and infer["parameters"]["FRAME_PROBS"]["padded"]["bool_param"] is True
    for i, data in enumerate(audio_files.values()):
        ref = v1_encoded(oip_server.target, data)
        np.testing.assert_allclose(out["PROBS"][i], ref.probs, atol=TOLERANCE)
        assert out["LABEL"][i].decode() == ref.label
        np.testing.assert_allclose(out["EMBEDDING"][i], ref.embedding, atol=TOLERANCE)
        assert counts[i] == ref.frame_probs.shape[0]
        np.testing.assert_allclose(out["FRAME_PROBS"][i, : counts[i]], ref.frame_probs, atol=TOLERANCE)
        assert not out["FRAME_PROBS"][i, counts[i]:].any()  # padding rows are zeros


def test_waveform_at_another_rate_is_resampled_like_emotion_v1(
    answers: list[Any], oip_server: ServerProcess, waveforms: npt.NDArray[np.float32]
) -> None:
    infer = answers[5]
    assert "error" not in infer, infer
    slow = waveforms[0, : waveforms.shape[1] // 2]
    ref = v1_waveform(oip_server.target, slow, rate=8000)
    np.testing.assert_allclose(decode_array(infer["outputs"]["PROBS"])[0], ref.probs, atol=TOLERANCE)
