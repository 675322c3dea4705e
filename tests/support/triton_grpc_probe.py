"""Runs ``tritonclient.grpc`` calls in a process of its own and prints the answers as JSON.

tritonclient's generated modules declare the protobuf package ``inference``, as do the server's
``emotion.oip`` stubs: one process cannot load both (duplicate symbols), and the pytest process loads the
server's when a test starts a server in-process. So the interoperability tests drive tritonclient.grpc
through this script: a JSON list of operations on stdin, a JSON list of results on stdout.

Operations: ``{"op": "health"}``, ``{"op": "metadata"}``, ``{"op": "config"}``, ``{"op": "index"}`` and
``{"op": "infer", "inputs": [{"name", "datatype", "array": ENC}], "outputs": [names] | null}``, where ENC is
``{"dtype", "shape", "b64"}`` (numpy bytes) or, for BYTES, ``{"bytes_b64": [...]}``. Errors come back as
``{"error": {"status": "StatusCode.X", "message": "..."}}``.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException


def _decode(enc: dict[str, Any]) -> np.ndarray:
    if "bytes_b64" in enc:
        arr = np.empty(len(enc["bytes_b64"]), dtype=object)
        arr[:] = [base64.b64decode(v) for v in enc["bytes_b64"]]
        return arr
    raw = base64.b64decode(enc["b64"])
    return np.frombuffer(raw, dtype=enc["dtype"]).reshape(enc["shape"])


def _encode(arr: np.ndarray) -> dict[str, Any]:
    if arr.dtype == object:
        values = [base64.b64encode(bytes(v)).decode() for v in arr.reshape(-1)]
        return {"shape": list(arr.shape), "bytes_b64": values}
    arr = np.ascontiguousarray(arr)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "b64": base64.b64encode(arr.tobytes()).decode()}


def _run(client: tg.InferenceServerClient, model: str, op: dict[str, Any]) -> Any:
    kind = op["op"]
    if kind == "health":
        return {"live": client.is_server_live(), "ready": client.is_server_ready(),
                "model_ready": client.is_model_ready(model)}
    if kind == "metadata":
        return {"server": client.get_server_metadata(as_json=True),
                "model": client.get_model_metadata(model, as_json=True)}
    if kind == "config":
        return client.get_model_config(model, as_json=True)
    if kind == "index":
        return client.get_model_repository_index(as_json=True)
    if kind == "infer":
        inputs = []
        for spec in op["inputs"]:
            arr = _decode(spec["array"])
            inp = tg.InferInput(spec["name"], list(arr.shape), spec["datatype"])
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        outputs = None if op.get("outputs") is None else [tg.InferRequestedOutput(n) for n in op["outputs"]]
        result = client.infer(op.get("model", model), inputs, outputs=outputs)
        response = result.get_response(as_json=True)
        names = [o["name"] for o in response["outputs"]]
        return {"outputs": {n: _encode(result.as_numpy(n)) for n in names},
                "parameters": {o["name"]: o.get("parameters", {}) for o in response["outputs"]},
                "model_version": response.get("model_version")}
    raise ValueError(f"unknown op {kind!r}")


def main() -> None:
    plan = json.load(sys.stdin)
    client = tg.InferenceServerClient(plan["target"])
    results = []
    for op in plan["ops"]:
        try:
            results.append(_run(client, plan["model"], op))
        except InferenceServerException as exc:
            results.append({"error": {"status": str(exc.status()), "message": exc.message()}})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
