"""One small Open Inference Protocol request must never stall the server (issue 22, defects 1 and 2).

Against a real server process (default flags, the real tiny model), probed from a thread through HTTP
``/v2/health/ready`` and gRPC health every 10 ms (benchmarks/oip_stall.py's probes). Before the fix a batch
of 40,000 empty items stalled every protocol for 2-7 s on this machine (benchmarks/results/oip_stall/) and
got a per-item audio error; a batch over the queue's 256 items got 429 "retry" on an idle server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.oip_stall import (
    Probes,
    grpc_audio_items,
    grpc_infer,
    grpc_shape,
    probing,
    rest_audio_items,
    rest_infer,
    rest_shape,
    rest_waveform_rows,
)
from emotion2vec_serving.server.process import ServerProcess
from tests.support.polling import wait_until
from tests.support.servers import server_process

#: The issue's bound for a health probe while such requests arrive. The stall it replaces is 20-70 times
#: longer; the bound still leaves room for a busy 2-core test machine (an idle probe takes 1-5 ms, the
#: largest request here is parsed as JSON in about 30 ms).
PROBE_BOUND_S = 0.100
LIMIT = "the limit is 256 items, --max-queue-requests"


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    with server_process(tiny_repo, startup_timeout_s=60.0) as running:
        yield running


@pytest.fixture(scope="module")
def model(tiny_repo: Path) -> str:
    from emotion2vec_serving.modelrepo import load_manifest

    return load_manifest(tiny_repo).model_name


def _worst_probe(probes: Probes, t0: float, t1: float) -> float:
    wait_until(lambda: probes.completed_after(t1), message="a probe after the request")
    return probes.worst_between(t0, t1)


def test_huge_batches_are_refused_at_parse_time_without_stalling_health(
        server: ServerProcess, model: str) -> None:
    sends = {
        "rest AUDIO [40000]": lambda: rest_infer(server, model, rest_audio_items(40_000)),
        "rest WAVEFORM [100000, 1]": lambda: rest_infer(server, model, rest_waveform_rows(100_000)),
        "grpc AUDIO [40000]": lambda: grpc_infer(server, model, grpc_audio_items(model, 40_000)),
        # One over the cap: refused as the caller's error, never 429 / RESOURCE_EXHAUSTED ("retry").
        "rest AUDIO [257]": lambda: rest_infer(server, model, rest_audio_items(257)),
        "grpc AUDIO [257]": lambda: grpc_infer(server, model, grpc_audio_items(model, 257)),
    }
    with probing(server) as probes:
        wait_until(lambda: len(probes.samples) >= 4, message="the probes running")
        for case, send in sends.items():
            t0 = time.monotonic()
            status, message = send()
            t1 = time.monotonic()
            worst = _worst_probe(probes, t0, t1)
            assert worst < PROBE_BOUND_S, (case, f"a health probe took {1000 * worst:.0f} ms")
            assert status in (400, "INVALID_ARGUMENT"), (case, status, message)
            assert LIMIT in message, (case, message)
    assert probes.failures == []


@pytest.mark.parametrize("shape", [[4294967296, 4294967296], [2**62 + 1, 4], [10**30, 1], [1, 2**64 + 1],
                                   [2, 2**62]])
def test_shapes_beyond_int64_are_invalid_argument(server: ServerProcess, model: str,
                                                  shape: list[int]) -> None:
    status, message = rest_infer(server, model, rest_shape(shape))
    assert status == 400 and "error" in json.loads(message), message
    if max(shape) < 2**63:  # what an int64 proto field can carry
        code, details = grpc_infer(server, model, grpc_shape(model, shape))
        assert code == "INVALID_ARGUMENT", details


def test_sample_rate_beyond_int32_and_deep_json_are_400(server: ServerProcess, model: str) -> None:
    wave = {"name": "WAVEFORM", "datatype": "FP32", "shape": [1, 1600], "data": [0.0] * 1600}
    for rate in ({"name": "SAMPLE_RATE", "datatype": "INT32", "shape": [1], "data": [2**40]},
                 {"name": "SAMPLE_RATE", "datatype": "INT64", "shape": [1], "data": [2**40]}):
        status, message = rest_infer(server, model, json.dumps({"inputs": [wave, rate]}).encode())
        assert status == 400 and "SAMPLE_RATE" in message, (rate, status, message)

    def rate_request(pb: object) -> object:
        request = pb.ModelInferRequest(model_name=model)  # type: ignore[attr-defined]
        request.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, 1600])
        request.inputs.add(name="SAMPLE_RATE", datatype="INT64", shape=[1])
        request.raw_input_contents.extend([bytes(4 * 1600), (2**40).to_bytes(8, "little")])
        return request

    code, details = grpc_infer(server, model, rate_request)
    assert code == "INVALID_ARGUMENT" and "SAMPLE_RATE" in details, details
    deep = b'{"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": [1, 1], "data": ' + \
        b"[" * 5000 + b"0" + b"]" * 5000 + b"}]}"
    status, message = rest_infer(server, model, deep)
    assert status == 400 and "nested too deeply" in message, message
    status, message = rest_infer(server, model, b'{"id": ' + b"[" * 900 + b"]" * 900 + b', "inputs": [' +
                                 json.dumps(wave).encode() + b"]}")
    assert status == 400 and '\\"id\\" must be a string' in message, message
    # None of these is the server's fault: no traceback, no ERROR line.
    log = server.log_text()
    assert "Traceback" not in log and " ERROR " not in log, server.log_tail()


def test_a_batch_under_the_cap_still_works(server: ServerProcess, model: str) -> None:
    rows = [[0.1 * ((i % 7) - 3) / 3] * 1600 for i in range(3)]
    body = {"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": [3, 1600], "data": rows}]}
    status, message = rest_infer(server, model, json.dumps(body).encode())
    assert status == 200, message
    assert json.loads(message)["outputs"][0]["shape"][0] == 3
