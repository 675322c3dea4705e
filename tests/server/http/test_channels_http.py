"""Channel splitting through the web API and the command-line client (issue 21), on a real server process:
``/v1/recognize?channels=split&channel_names=agent,customer`` answers a ``channels`` list whose entries equal
the API's answer for each channel sent alone as a mono file (within 1e-5), ``emotion-client recognize
--channels split`` writes the same result.json, and bad channel options are 400s a person can read."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from emotion2vec_serving.clients.cli import main
from tests.support.audio import encode, make_signal
from tests.support.web import WebServer, close_json, http, multipart

TOL = 1e-5
RATE = 44100


def _stereo(duration_s: float = 2.5) -> np.ndarray:
    """Left: tones; right: silent for the first second, then other tones (the channels clearly differ)."""
    left = make_signal(duration_s, RATE, 1, seed=11)[:, 0]
    right = 0.7 * make_signal(duration_s, RATE, 1, seed=12)[:, 0]
    right[:RATE] = 0.0
    return np.stack([left, right], axis=1)


def _wav(signal: np.ndarray, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, signal, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _without_timing(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "timing"}


def test_recognize_split_equals_each_channel_alone(open_server: WebServer) -> None:
    signal = _stereo()
    reply = http("POST", open_server.url(
        "/v1/recognize?channels=split&channel_names=agent,customer&granularity=frame&embedding=true&name=call.wav"),
        _wav(signal))
    assert reply.status == 200, reply.body[:300]
    doc = reply.json()
    assert doc["channel_mode"] == "split" and doc["input"] == "call.wav"
    assert "emotion" not in doc and doc["duration_s"] == pytest.approx(2.5, abs=1e-3) and doc["model"]["name"]
    assert [(c["channel"], c["name"]) for c in doc["channels"]] == [(0, "agent"), (1, "customer")]
    for ch in doc["channels"]:
        alone = http("POST", open_server.url("/v1/recognize?granularity=frame&embedding=true"),
                     _wav(signal[:, ch["channel"]])).json()
        expected = {k: v for k, v in alone.items() if k not in ("granularity", "model", "input")}
        got = {k: v for k, v in ch.items() if k not in ("channel", "name")}
        assert list(got) == list(expected)
        close_json(_without_timing(got), _without_timing(expected))
    assert doc["channels"][0]["scores"] != pytest.approx(doc["channels"][1]["scores"], abs=1e-4)
    # Described by the OpenAPI document.
    schema = http("GET", open_server.url("/openapi.json")).json()["components"]["schemas"]["Recognition"]
    assert set(doc) <= set(schema["properties"]) and set(schema["required"]) <= set(doc)


def test_embed_split_as_a_form_upload(open_server: WebServer) -> None:
    signal = _stereo(1.5)
    # Encoded by ffmpeg (FLAC, lossless): each channel decodes to what a mono FLAC of it holds.
    data = encode(signal, RATE, "flac")
    body, ctype = multipart({"channels": "split", "frames": "true"}, "call.flac", data)
    reply = http("POST", open_server.url("/v1/embed"), body, {"Content-Type": ctype})
    assert reply.status == 200, reply.body[:300]
    doc = reply.json()
    assert doc["channel_mode"] == "split" and [c["name"] for c in doc["channels"]] == ["", ""]
    for ch in doc["channels"]:
        mono = encode(np.ascontiguousarray(signal[:, ch["channel"]]), RATE, "flac")
        alone = http("POST", open_server.url("/v1/embed?frames=true"), mono).json()
        np.testing.assert_allclose(ch["embedding"], alone["embedding"], atol=TOL)
        np.testing.assert_allclose(ch["frames"], alone["frames"], atol=TOL)
        assert ch["dim"] == alone["dim"]


@pytest.mark.parametrize(("query", "audio", "message"), [
    ("channels=split", "nine", "the recording has 9 channels; channel splitting answers at most 8"),
    ("channels=split&channel_names=a,b,c", "stereo", "3 channel names given but the recording has 2"),
    ("channels=both", "stereo", "channels must be 'mix' or 'split'"),
    ("channel_names=a,b", "stereo", "channel_names needs channels=split"),
])
def test_bad_channel_options_are_400(open_server: WebServer, query: str, audio: str, message: str) -> None:
    data = _wav(make_signal(1.0, 16000, 9, seed=3), 16000) if audio == "nine" else _wav(_stereo(1.0))
    reply = http("POST", open_server.url(f"/v1/recognize?{query}"), data)
    assert reply.status == 400, reply.body[:300]
    assert message in reply.json()["error"]


def test_the_cli_writes_the_channels_into_result_json(open_server: WebServer, tmp_path: Path) -> None:
    source = tmp_path / "call.wav"
    source.write_bytes(_wav(_stereo()))
    out = tmp_path / "outputs"
    code = main(["--target", open_server.target, "recognize", str(source), "--channels", "split",
                 "--channel-names", "agent,customer", "--granularity", "frame", "--embedding",
                 "--output-dir", str(out), "--no-progress"])
    assert code == 0
    (folder,) = out.iterdir()
    cli_doc = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    assert np.load(folder / "embedding.npy").shape[0] == 2  # one row per channel
    reply = http("POST", open_server.url(
        "/v1/recognize?channels=split&channel_names=agent,customer&granularity=frame&name=call.wav"),
        source.read_bytes())
    http_doc = reply.json()
    assert list(http_doc) == ["channel_mode", "granularity", "input", "duration_s", "model", "channels"]
    assert list(cli_doc) == list(http_doc)
    for got, want in zip(http_doc["channels"], cli_doc["channels"], strict=True):
        close_json(_without_timing(got), _without_timing(want))
    # Mixing (the default) writes today's result.json.
    mixed = tmp_path / "mixed"
    assert main(["--target", open_server.target, "recognize", str(source), "--output-dir", str(mixed),
                 "--no-progress"]) == 0
    (folder,) = mixed.iterdir()
    assert "channels" not in json.loads((folder / "result.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ OIP


def _model_name(server: WebServer) -> str:
    return str(http("GET", server.url("/v1/model")).json()["model"]["name"])


def test_oip_rest_split_adds_a_channel_dimension(open_server: WebServer) -> None:
    """tritonclient.http: a stereo and a mono file in one AUDIO batch with ``channels: "split"``: PROBS
    ``[2, 2, labels]`` (the mono item padded), ``channel_counts`` [2, 1], each row equal to /v1/recognize
    of that channel alone."""
    import tritonclient.http as th

    from tests.support.oip import bytes_array

    signal = _stereo(1.5)
    files = [_wav(signal), _wav(signal[:, 1])]
    with th.InferenceServerClient(open_server.base.removeprefix("http://")) as client:
        inp = th.InferInput("AUDIO", [2], "BYTES")
        inp.set_data_from_numpy(bytes_array(files))
        outputs = [th.InferRequestedOutput(n) for n in ("PROBS", "LABEL", "FRAME_PROBS")]
        result = client.infer(_model_name(open_server), [inp], outputs=outputs,
                              parameters={"channels": "split"})
        probs, labels, frames = (result.as_numpy(n) for n in ("PROBS", "LABEL", "FRAME_PROBS"))
        response = result.get_response()
    n_labels = probs.shape[-1]
    assert probs.shape == (2, 2, n_labels) and labels.shape == (2, 2) and frames.shape[:2] == (2, 2)
    params = {o["name"]: o.get("parameters", {}) for o in response["outputs"]}
    assert json.loads(params["PROBS"]["channel_counts"]) == [2, 1] and params["PROBS"]["padded"] is True
    frame_counts = json.loads(params["FRAME_PROBS"]["frame_counts"])
    expected = [signal[:, 0], signal[:, 1], signal[:, 1]]
    for (i, c), channel in zip([(0, 0), (0, 1), (1, 0)], expected, strict=True):
        alone = http("POST", open_server.url("/v1/recognize?granularity=frame"), _wav(channel)).json()
        np.testing.assert_allclose(probs[i, c], list(alone["scores"].values()), atol=TOL)
        assert labels[i, c].decode() == alone["emotion"]
        assert frame_counts[i][c] == len(alone["frames"])
    assert not probs[1, 1].any() and labels[1, 1] == b""  # the padding


def test_oip_grpc_split_and_waveform(open_server: WebServer) -> None:
    """The gRPC front end (generated OIP stubs): WAVEFORM is mono, so split gives one channel a row."""
    import grpc
    from emotion.oip import grpc_service_pb2 as pb
    from emotion.oip import grpc_service_pb2_grpc as pb_grpc

    rows = make_signal(1.0, 16000, 2, seed=21).T.copy()  # two mono rows
    request = pb.ModelInferRequest(model_name=_model_name(open_server))
    request.inputs.add(name="WAVEFORM", datatype="FP32", shape=[2, rows.shape[1]])
    request.raw_input_contents.append(rows.astype("<f4").tobytes())
    request.outputs.add(name="PROBS")
    request.parameters["channels"].string_param = "split"
    with grpc.insecure_channel(open_server.target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        (out,) = response.outputs
        assert list(out.shape)[:2] == [2, 1] and out.parameters["channel_counts"].string_param == "[1, 1]"
        probs = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(out.shape))
        mixed = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name=request.model_name, inputs=request.inputs,
                                 raw_input_contents=request.raw_input_contents, outputs=request.outputs),
            timeout=60)
        assert list(mixed.outputs[0].shape) == [2, probs.shape[-1]]  # mix: today's shape
        mixed_probs = np.frombuffer(mixed.raw_output_contents[0], "<f4").reshape(2, -1)
        np.testing.assert_allclose(probs[:, 0], mixed_probs, atol=TOL)
        request.parameters["channels"].string_param = "sideways"
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "channels must be 'mix' or 'split'" in (info.value.details() or "")
