"""What an unauthenticated network neighbour can see (issue 22, item 5): the /metrics listener binds where
``--host`` (or ``--metrics-host``) says, not every address; a ModelReady probe for a wrong name does not
reveal the served model's name, over OIP REST and gRPC, with tokens on."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from emotion.oip import grpc_service_pb2 as oip_pb
from emotion.oip import grpc_service_pb2_grpc as oip_grpc

from emotion2vec_serving.modelrepo import load_manifest
from emotion2vec_serving.server.process import ServerProcess

TOKEN = "exposure-test-token-0123456789"


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _server(tiny_repo: Path, tmp_path: Path, *flags: str) -> ServerProcess:
    return ServerProcess(tiny_repo, ["--no-warmup", "--intra-op-threads", "1", *flags],
                         log_path=tmp_path / "server.log", env={"EMOTION_AUTH_TOKENS": TOKEN})


def test_metrics_listen_where_host_says(tiny_repo: Path, tmp_path: Path) -> None:
    # 127.0.0.2 is another loopback address: a listener bound to 127.0.0.1 refuses it, a wildcard takes it.
    # (ServerProcess passes --host 127.0.0.1.)
    with _server(tiny_repo, tmp_path) as srv:
        assert srv.metrics_port is not None
        assert _connects("127.0.0.1", srv.metrics_port)
        assert not _connects("127.0.0.2", srv.metrics_port), "/metrics listened beyond --host"
    with _server(tiny_repo, tmp_path, "--metrics-host", "0.0.0.0") as srv:
        assert srv.metrics_port is not None
        assert _connects("127.0.0.2", srv.metrics_port), "--metrics-host 0.0.0.0 was not honoured"


def test_model_ready_for_a_wrong_name_does_not_name_the_served_model(tiny_repo: Path, tmp_path: Path) -> None:
    served = load_manifest(tiny_repo).model_name
    with _server(tiny_repo, tmp_path) as srv:
        url = f"{srv.http_url}/v2/models/guess/ready"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 404
        body = json.loads(refused.value.read().decode())
        assert "unknown model 'guess'" in body["error"] and served not in body["error"], body
        with grpc.insecure_channel(srv.target) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelReady(oip_pb.ModelReadyRequest(name="guess"), timeout=10)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            assert served not in (error.value.details() or ""), error.value.details()
            # The served name still answers the probe.
            assert stub.ModelReady(oip_pb.ModelReadyRequest(name=served), timeout=10).ready
