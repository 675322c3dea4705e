"""Generic Triton client code, as Triton's own tools shape requests, run in a process of its own.

perf_analyzer and model_analyzer's client code read the model configuration, take the user's shape of each
variable-size input *without* the batch axis (perf_analyzer's ``--shape WAVEFORM:16000``), check it against
``dims`` (same rank, fixed dims equal), and add the batch axis only when ``max_batch_size > 0``. Nothing here
knows this server. Run as ``python triton_tool_client.py`` with a JSON plan on stdin:
``{"protocol": "http"|"grpc", "url", "model", "batch", "inputs": {name: {"shape": [...], "wav_b64"?}},
"outputs": [names]}``; it prints ``{"config", "metadata", "sent": {name: shape}, "outputs": {name: shape}}``
or ``{"config", "metadata", "error": "..."}`` as JSON. (tritonclient.grpc's generated modules clash with the
server's ``emotion.oip`` stubs in one process: tests/support/triton_grpc_probe.py says why.)
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np


def _config_and_metadata(client: Any, protocol: str, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if protocol == "grpc":
        config = client.get_model_config(model, as_json=True)["config"]
        metadata = client.get_model_metadata(model, as_json=True)
    else:
        config = client.get_model_config(model)
        metadata = client.get_model_metadata(model)
    return config, metadata


def _request_shape(config: dict[str, Any], name: str, user_shape: list[int], batch: int) -> list[int]:
    """perf_analyzer's rule: the user's shape must fit ``dims``; the batch axis only when batching."""
    spec = next(t for t in config["input"] if t["name"] == name)
    dims = [int(d) for d in spec["dims"]]
    if len(dims) != len(user_shape) or any(d not in (-1, u) for d, u in zip(dims, user_shape, strict=True)):
        raise ValueError(f"input {name}: shape {user_shape} does not match the model's dims {dims}")
    max_batch_size = int(config.get("max_batch_size", 0))
    return [batch, *user_shape] if max_batch_size > 0 else list(user_shape)


def _data(name: str, datatype: str, shape: list[int], plan_input: dict[str, Any]) -> np.ndarray:
    if datatype == "TYPE_STRING":
        arr = np.empty(int(np.prod(shape)), dtype=object)
        arr[:] = [base64.b64decode(plan_input["wav_b64"])] * arr.size
        return arr.reshape(shape)
    rng = np.random.default_rng(0)
    return (0.05 * rng.standard_normal(shape)).astype(np.float32)


def main() -> None:
    plan = json.load(sys.stdin)
    protocol = plan["protocol"]
    if protocol == "grpc":
        import tritonclient.grpc as tc  # one protocol's client per process
    else:
        import tritonclient.http as tc  # type: ignore[no-redef]
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    client = tc.InferenceServerClient(plan["url"])
    config, metadata = _config_and_metadata(client, protocol, plan["model"])
    answer: dict[str, Any] = {"config": config, "metadata": metadata}
    try:
        inputs, sent = [], {}
        for name, plan_input in plan["inputs"].items():
            spec = next(t for t in config["input"] if t["name"] == name)
            shape = _request_shape(config, name, plan_input["shape"], plan["batch"])
            arr = _data(name, spec["data_type"], shape, plan_input)
            tensor = tc.InferInput(name, shape, np_to_triton_dtype(arr.dtype))
            tensor.set_data_from_numpy(arr)
            inputs.append(tensor)
            sent[name] = shape
        outputs = [tc.InferRequestedOutput(n) for n in plan["outputs"]]
        result = client.infer(plan["model"], inputs, outputs=outputs)
        answer["sent"] = sent
        answer["outputs"] = {n: list(result.as_numpy(n).shape) for n in plan["outputs"]}
    except (ValueError, InferenceServerException) as exc:
        answer["error"] = str(exc)
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
