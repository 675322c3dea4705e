"""The OIP model configuration describes a dynamically batched model as Triton does (issue 24).

A real server process with explicit batching flags; unmodified ``tritonclient`` (http and grpc) driven by
generic Triton tool code (tests/support/triton_tool_client.py: the batch axis is added only when
``max_batch_size > 0``, as perf_analyzer and model_analyzer do) gets answers for WAVEFORM and AUDIO; the
configuration carries ``max_batch_size``, dims without the batch axis and a ``dynamic_batching`` block
from the flags; REST and gRPC agree, and the metadata is the configuration with the batch axis.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from emotion.oip import model_config_pb2
from google.protobuf import json_format

from emotion2vec_serving.server.process import ServerProcess
from tests.support.audio import encoded_signal
from tests.support.servers import server_process

TOOL = Path(__file__).resolve().parents[1] / "support" / "triton_tool_client.py"
MAX_BATCH_SIZE = 12
PREFERRED = [4, 8]
DELAY_MS = 7.5


@pytest.fixture(scope="module")
def batching_server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("triton_config") / "server.log"
    flags = ("--max-batch-size", str(MAX_BATCH_SIZE), "--preferred-batch-sizes",
             ",".join(map(str, PREFERRED)), "--max-queue-delay-ms", str(DELAY_MS), "--drain-grace-s", "2")
    with server_process(tiny_repo, *flags, startup_timeout_s=90.0, log_path=log) as srv:
        yield srv


def _tool(protocol: str, server: ServerProcess, model: str) -> dict[str, Any]:
    url = server.target if protocol == "grpc" else server.http_url.removeprefix("http://")
    wav = base64.b64encode(encoded_signal("wav", duration_s=1.0, rate=16000, channels=1)).decode()
    answers = {}
    for inputs, outputs in (
        ({"WAVEFORM": {"shape": [16000]}}, ["PROBS", "LABEL", "EMBEDDING"]),
        ({"AUDIO": {"shape": [1], "wav_b64": wav}}, ["PROBS", "LABEL"]),
    ):
        plan = {"protocol": protocol, "url": url, "model": model, "batch": 3, "inputs": inputs,
                "outputs": outputs}
        proc = subprocess.run([sys.executable, str(TOOL)], input=json.dumps(plan), capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        answers[next(iter(inputs))] = json.loads(proc.stdout)
    return answers


@pytest.fixture(scope="module")
def answers(batching_server: ServerProcess, model_name: str) -> dict[str, dict[str, Any]]:
    return {p: _tool(p, batching_server, model_name) for p in ("http", "grpc")}


def _normalised(config: dict[str, Any]) -> dict[str, Any]:
    """A config through the Triton proto: gRPC's JSON writes 64-bit integers as strings, REST as numbers."""
    message = json_format.ParseDict(config, model_config_pb2.ModelConfig(), ignore_unknown_fields=False)
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_generic_triton_tool_code_works_unchanged(answers: dict[str, dict[str, Any]], protocol: str) -> None:
    for name, answer in answers[protocol].items():
        assert "error" not in answer, f"{protocol} {name}: {answer['error']}"
        assert answer["sent"][name][0] == 3  # the tool added the batch axis
        dims = {t["name"]: t for t in answer["config"]["output"]}
        for output, shape in answer["outputs"].items():
            spec = dims[output]
            model_shape = spec["reshape"].get("shape", []) if "reshape" in spec else spec["dims"]
            expected = [3, *(int(d) for d in model_shape)]
            assert len(shape) == len(expected), f"{output}: {shape} vs {expected}"
            assert all(int(e) in (-1, s) for e, s in zip(expected, shape, strict=True)), (output, shape)


def test_config_describes_dynamic_batching(answers: dict[str, dict[str, Any]]) -> None:
    config = _normalised(answers["http"]["WAVEFORM"]["config"])
    assert config["max_batch_size"] == MAX_BATCH_SIZE
    assert config["dynamic_batching"] == {"preferred_batch_size": PREFERRED,
                                          "max_queue_delay_microseconds": str(int(DELAY_MS * 1000))}
    inputs = {t["name"]: t for t in config["input"]}
    assert inputs["WAVEFORM"]["dims"] == ["-1"] and "reshape" not in inputs["WAVEFORM"]
    assert inputs["AUDIO"]["dims"] == ["1"] and inputs["AUDIO"]["reshape"] == {}  # [batch]: reshape []


@pytest.mark.parametrize("name", ["WAVEFORM", "AUDIO"])
def test_rest_and_grpc_agree_and_metadata_is_config_with_the_batch_axis(
    answers: dict[str, dict[str, Any]], name: str
) -> None:
    rest, grpc_ = answers["http"][name], answers["grpc"][name]
    assert _normalised(rest["config"]) == _normalised(grpc_["config"])
    config = rest["config"]
    for protocol in ("http", "grpc"):
        metadata = answers[protocol][name]["metadata"]
        for kind, tensors in (("input", metadata["inputs"]), ("output", metadata["outputs"])):
            specs = {t["name"]: t for t in config[kind]}
            for tensor in tensors:
                spec = specs[tensor["name"]]
                model_shape = spec["reshape"].get("shape", []) if "reshape" in spec else spec["dims"]
                assert [int(d) for d in tensor["shape"]] == [-1, *(int(d) for d in model_shape)], (
                    protocol, tensor)
                assert "TYPE_" + ("STRING" if tensor["datatype"] == "BYTES" else tensor["datatype"]) == \
                    spec["data_type"]
