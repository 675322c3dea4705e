"""tritonclient.http (PyPI, unmodified; binary tensor data both ways by default) against a real server
process: health, metadata, configuration, and inferences equal to emotion.v1 Recognize within 1e-5."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from emotion2vec_serving.server.process import ServerProcess
from tests.support.oip import TOLERANCE, bytes_array, v1_encoded, v1_waveform


@pytest.fixture(scope="module")
def client(oip_server: ServerProcess) -> Iterator[th.InferenceServerClient]:
    c = th.InferenceServerClient(oip_server.http_url.removeprefix("http://"))
    yield c
    c.close()


def test_health_metadata_and_config(client: th.InferenceServerClient, model_name: str) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(model_name) and client.is_model_ready(model_name, "1")
    assert client.get_server_metadata()["name"] == "emotion2vec-serving"
    meta = client.get_model_metadata(model_name)
    assert meta["name"] == model_name and meta["versions"] == ["1"]
    labels = json.loads(meta["parameters"]["labels"])
    assert len(labels) == 9 and labels[0] == "angry"
    config = client.get_model_config(model_name)
    assert {t["name"] for t in config["input"]} == {"WAVEFORM", "AUDIO", "SAMPLE_RATE"}
    assert client.get_model_repository_index() == [{"name": model_name, "version": "1", "state": "READY"}]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("no_such_model")


def test_waveform_batch_equals_emotion_v1(client: th.InferenceServerClient, model_name: str,
                                          oip_server: ServerProcess,
                                          waveforms: npt.NDArray[np.float32]) -> None:
    inp = th.InferInput("WAVEFORM", list(waveforms.shape), "FP32")
    inp.set_data_from_numpy(waveforms)  # binary by default
    result = client.infer(model_name, [inp], request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    probs, labels = result.as_numpy("PROBS"), result.as_numpy("LABEL")
    assert probs.shape == (2, 9)
    for i, row in enumerate(waveforms):
        ref = v1_waveform(oip_server.target, row)
        np.testing.assert_allclose(probs[i], ref.probs, atol=TOLERANCE)
        assert labels[i].decode() == ref.label


def test_audio_batch_json_and_binary_outputs_equal_emotion_v1(
    client: th.InferenceServerClient, model_name: str, oip_server: ServerProcess,
    audio_files: dict[str, bytes],
) -> None:
    inp = th.InferInput("AUDIO", [len(audio_files)], "BYTES")
    inp.set_data_from_numpy(bytes_array(list(audio_files.values())))
    outputs = [th.InferRequestedOutput("PROBS", binary_data=False),  # JSON
               th.InferRequestedOutput("LABEL", binary_data=False),
               th.InferRequestedOutput("EMBEDDING"),  # binary
               th.InferRequestedOutput("FRAME_PROBS")]
    result = client.infer(model_name, [inp], outputs=outputs)
    counts = json.loads(result.get_output("FRAME_PROBS")["parameters"]["frame_counts"])
    frames = result.as_numpy("FRAME_PROBS")
    for i, data in enumerate(audio_files.values()):
        ref = v1_encoded(oip_server.target, data)
        np.testing.assert_allclose(result.as_numpy("PROBS")[i], ref.probs, atol=TOLERANCE)
        assert result.as_numpy("LABEL")[i] == ref.label  # JSON BYTES come back as str
        np.testing.assert_allclose(result.as_numpy("EMBEDDING")[i], ref.embedding, atol=TOLERANCE)
        np.testing.assert_allclose(frames[i, : counts[i]], ref.frame_probs, atol=TOLERANCE)


def test_bad_input_is_a_clear_client_error(client: th.InferenceServerClient, model_name: str) -> None:
    inp = th.InferInput("AUDIO", [1], "BYTES")
    inp.set_data_from_numpy(bytes_array([b"this is not audio"]))
    with pytest.raises(InferenceServerException) as err:
        client.infer(model_name, [inp])
    assert err.value.status() == "400"
    assert "audio" in err.value.message().lower()
    # The server is unharmed: the next call works.
    assert client.is_server_ready()
