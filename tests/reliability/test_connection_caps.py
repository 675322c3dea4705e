"""The gRPC port's connection cap and the process's descriptor limit (issue 22, item 4).

Near the file-descriptor limit both ports' health once timed out: the HTTP port now caps its connections
(test_slow_clients.py); the gRPC port caps them too (``--max-grpc-connections``, gRPC core's
``grpc.max_allowed_incoming_connections``: a connection past the cap is closed at once and the client sees
UNAVAILABLE, so it can try another server), and the server raises its soft descriptor limit to the hard one
at start, as servers do, so the default caps (a quarter of it each) leave room for everything else.
A real server process on the tiny model; real gRPC channels, each on its own connection.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emotion2vec_serving.server.process import ServerProcess
from tests.support.polling import wait_until
from tests.support.servers import server_process


def _own_channel(srv: ServerProcess) -> grpc.Channel:
    # A private subchannel pool: a new TCP connection per channel, as separate clients would have.
    return grpc.insecure_channel(srv.target, options=[("grpc.use_local_subchannel_pool", 1)])


def _check(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def channels() -> Iterator[list[grpc.Channel]]:
    opened: list[grpc.Channel] = []
    yield opened
    for channel in opened:
        channel.close()


def test_grpc_connections_past_the_cap_are_refused_and_slots_come_back(
        tiny_repo: Path, channels: list[grpc.Channel]) -> None:
    with server_process(tiny_repo, "--max-grpc-connections", "2") as srv:
        channels += [_own_channel(srv) for _ in range(3)]
        assert _check(channels[0]) == grpc.StatusCode.OK
        assert _check(channels[1]) == grpc.StatusCode.OK
        # The third connection is closed by the server as it arrives: UNAVAILABLE, not a hang.
        assert _check(channels[2]) == grpc.StatusCode.UNAVAILABLE
        # The first two keep working; closing one frees its slot for a new client.
        assert _check(channels[0]) == grpc.StatusCode.OK
        channels.pop(0).close()

        def a_new_client_gets_in() -> bool:  # a fresh connection each try, until the server saw the close
            with _own_channel(srv) as late:
                return _check(late) == grpc.StatusCode.OK

        wait_until(a_new_client_gets_in, timeout_s=30, interval_s=0.2, message="a freed slot is reused")


def test_the_server_raises_its_soft_descriptor_limit_to_the_hard_one(tiny_repo: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:  # nothing to raise: lower our own soft limit so the child starts below its hard one
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1024) // 2, hard))
    try:
        with server_process(tiny_repo) as srv:
            limits = Path(f"/proc/{srv.pid}/limits").read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    child_soft, child_hard = line.split()[3:5]
    assert child_soft == child_hard, line
