"""The REST front end spoken by hand (urllib, no client library), as the Open Inference Protocol's
documentation writes its requests and responses: JSON tensors (nested or flat ``data``), the binary
tensor extension built byte by byte, and the JSON error object."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.server.process import ServerProcess
from tests.support.oip import TOLERANCE, v1_encoded, v1_waveform


def _call(url: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _json(url: str, doc: Any = None) -> tuple[int, Any]:
    body = None if doc is None else json.dumps(doc).encode()
    status, _, raw = _call(url, body, {"Content-Type": "application/json"})
    return status, json.loads(raw)


def test_health_and_metadata_endpoints(oip_server: ServerProcess, model_name: str) -> None:
    base = oip_server.http_url
    assert _json(f"{base}/v2/health/live") == (200, {"live": True})
    assert _json(f"{base}/v2/health/ready") == (200, {"ready": True})
    status, server = _json(f"{base}/v2")
    assert status == 200 and server["name"] == "emotion2vec-serving"
    assert "binary_tensor_data" in server["extensions"]
    for path in (f"/v2/models/{model_name}", f"/v2/models/{model_name}/versions/1"):
        status, meta = _json(base + path)
        assert status == 200 and meta["name"] == model_name and meta["platform"] == "onnxruntime_onnx"
        assert _json(base + path + "/ready") == (200, {"name": model_name, "ready": True})
    assert _json(f"{base}/v2/models/{model_name}/versions/2")[0] == 404
    status, error = _json(f"{base}/v2/models/nope/ready")
    assert status == 404 and "unknown model 'nope'" in error["error"]
    status, error = _json(f"{base}/v2/no/such/path")
    assert status == 404 and set(error) == {"error"}


def test_json_tensors_in_and_out(oip_server: ServerProcess, model_name: str,
                                 waveforms: npt.NDArray[np.float32]) -> None:
    url = f"{oip_server.http_url}/v2/models/{model_name}/infer"
    nested = {
        "id": "42",
        "inputs": [{"name": "WAVEFORM", "shape": list(waveforms.shape), "datatype": "FP32",
                    "data": waveforms.tolist()}],
        "outputs": [{"name": "PROBS"}, {"name": "LABEL"}],
    }
    status, answer = _json(url, nested)
    assert status == 200, answer
    assert answer["id"] == "42" and answer["model_name"] == model_name and answer["model_version"] == "1"
    by_name = {o["name"]: o for o in answer["outputs"]}
    assert by_name["PROBS"]["datatype"] == "FP32" and by_name["PROBS"]["shape"] == [2, 9]
    probs = np.array(by_name["PROBS"]["data"], np.float32).reshape(2, 9)
    for i, row in enumerate(waveforms):
        ref = v1_waveform(oip_server.target, row)
        np.testing.assert_allclose(probs[i], ref.probs, atol=TOLERANCE)
        assert by_name["LABEL"]["data"][i] == ref.label
    flat = dict(nested, inputs=[dict(nested["inputs"][0], data=waveforms.reshape(-1).tolist())])
    again = {o["name"]: o for o in _json(url, flat)[1]["outputs"]}
    assert again["LABEL"] == by_name["LABEL"] and again["PROBS"]["shape"] == [2, 9]
    # The same answer within the batch-exact tolerance (the batch each request joined may differ).
    repeated = np.array(again["PROBS"]["data"], np.float32).reshape(2, 9)
    np.testing.assert_allclose(repeated, probs, atol=TOLERANCE)


def test_audio_file_as_base64_json(oip_server: ServerProcess, model_name: str,
                                   audio_files: dict[str, bytes]) -> None:
    data = audio_files["mp3"]
    doc = {"inputs": [{"name": "AUDIO", "shape": [1], "datatype": "BYTES",
                       "parameters": {"content_type": "base64"}, "data": [base64.b64encode(data).decode()]}]}
    status, answer = _json(f"{oip_server.http_url}/v2/models/{model_name}/infer", doc)
    assert status == 200, answer
    probs = next(o for o in answer["outputs"] if o["name"] == "PROBS")["data"]
    np.testing.assert_allclose(probs, v1_encoded(oip_server.target, data).probs, atol=TOLERANCE)


def test_binary_tensor_extension_by_hand(oip_server: ServerProcess, model_name: str,
                                         audio_files: dict[str, bytes]) -> None:
    files = [audio_files["wav"], audio_files["flac"]]
    raw = b"".join(len(f).to_bytes(4, "little") + f for f in files)  # BYTES: 4-byte length + bytes
    header = json.dumps({
        "inputs": [{"name": "AUDIO", "shape": [2], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "EMBEDDING", "parameters": {"binary_data": True}}, {"name": "LABEL"}],
    }).encode()
    status, headers, body = _call(
        f"{oip_server.http_url}/v2/models/{model_name}/infer", header + raw,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200, body[:500]
    n = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:n])
    emb_out, label_out = answer["outputs"]
    size = emb_out["parameters"]["binary_data_size"]
    assert len(body) == n + size
    emb = np.frombuffer(body[n:], "<f4").reshape(emb_out["shape"])
    for i, data in enumerate(files):
        ref = v1_encoded(oip_server.target, data)
        np.testing.assert_allclose(emb[i], ref.embedding, atol=TOLERANCE)
        assert label_out["data"][i] == ref.label
