"""Random and malformed Open Inference Protocol requests never crash the server or get an internal error:
every answer is a success or a client error (gRPC INVALID_ARGUMENT / NOT_FOUND, HTTP 4xx), and the server
still answers a good request afterwards. Seeded, so a failure reproduces."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import grpc
import grpc.aio
import numpy as np
import pytest
from emotion.oip import grpc_service_pb2 as pb
from emotion.oip import grpc_service_pb2_grpc as pb_grpc

from emotion2vec_serving.server.config import Settings
from tests.support.servers import OIP_SETTINGS, Running, StartServer

DATATYPES = ["FP32", "FP64", "FP16", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "BF16", "", "NOPE"]
NAMES = ["WAVEFORM", "AUDIO", "SAMPLE_RATE", "PIXELS", ""]
CASES = 120


@pytest.fixture
def server_settings() -> Settings:
    """This module's in-process servers run the Open Inference Protocol test settings."""
    return OIP_SETTINGS


def _random_tensor(rng: np.random.Generator) -> tuple[str, str, list[int], bytes]:
    name = str(rng.choice(NAMES))
    datatype = str(rng.choice(DATATYPES))
    shape = [int(d) for d in rng.integers(-2, 3000, size=int(rng.integers(0, 4)))]
    raw = rng.bytes(int(rng.integers(0, 4000)))
    if rng.random() < 0.3 and datatype == "FP32" and len(shape) == 2 and all(d > 0 for d in shape):
        raw = rng.standard_normal(int(np.prod(shape))).astype("<f4").tobytes()  # well-formed, odd values
    return name, datatype, shape, raw


async def test_random_requests_get_client_errors_never_internal(start_server: StartServer) -> None:
    running: Running = await start_server()
    model = running.server.manifest.model_name
    stub = pb_grpc.GRPCInferenceServiceStub(running.channel)
    rng = np.random.default_rng(11)
    grpc_codes: set[str] = set()
    http_statuses: set[int] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        url = f"http://127.0.0.1:{running.server.http_port}/v2/models/{model}/infer"
        for _ in range(CASES):
            tensors = [_random_tensor(rng) for _ in range(int(rng.integers(0, 3)))]
            request = pb.ModelInferRequest(model_name=model if rng.random() < 0.9 else "x")
            for name, datatype, shape, raw in tensors:
                request.inputs.add(name=name, datatype=datatype, shape=shape)
                request.raw_input_contents.append(raw)
            if rng.random() < 0.2:
                request.outputs.add(name=str(rng.choice(["PROBS", "FRAME_PROBS", "X", ""])))
            try:
                await stub.ModelInfer(request, timeout=30)
                grpc_codes.add("OK")
            except grpc.aio.AioRpcError as exc:
                grpc_codes.add(exc.code().name)
            header: dict[str, Any] = {"inputs": [
                {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(r)}}
                for n, d, s, r in tensors]}
            if rng.random() < 0.2:
                header["parameters"] = {"priority": str(rng.choice(["-1", "x"])), "timeout": -5}
            head = json.dumps(header).encode()
            if rng.random() < 0.2:  # truncate or corrupt the JSON part
                head = head[: int(rng.integers(0, len(head) + 1))]
            body = head + b"".join(r for *_, r in tensors)
            headers = {"Inference-Header-Content-Length": str(len(head))}
            async with http.post(url, data=body, headers=headers) as r:
                doc = await r.json(content_type=None)
                http_statuses.add(r.status)
                assert r.status == 200 or set(doc) == {"error"}, doc
    assert grpc_codes <= {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}, grpc_codes
    assert http_statuses <= {200, 400, 404}, http_statuses
    assert "INVALID_ARGUMENT" in grpc_codes and 400 in http_statuses  # the fuzzer reached the checks
    good = pb.ModelInferRequest(model_name=model)
    good.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, 8000])
    good.raw_input_contents.append(np.zeros(8000, "<f4").tobytes())
    assert (await stub.ModelInfer(good, timeout=30)).outputs[0].name == "PROBS"
