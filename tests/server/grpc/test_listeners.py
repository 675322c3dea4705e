"""server/grpc/listeners.py on a real grpc.aio server: the listener closes to new connections while an
accepted
connection keeps serving, and channelz tells when the last connection has gone after its age GOAWAY."""

from __future__ import annotations

import socket
import sys

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emotion2vec_serving.server.grpc import listeners
from tests.support.polling import wait_until_async

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="closes listeners through /proc")


def _connects(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _check(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(response.status)


async def test_stop_accepting_keeps_open_connections_and_refuses_new_ones() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_connection_age_ms", 1500),
                                      ("grpc.max_connection_age_grace_ms", 60_000)])
    health_pb2_grpc.add_HealthServicer_to_server(health_async.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # A channel of its own (no shared subchannel), so "a new connection" below is really one.
    own = [("grpc.use_local_subchannel_pool", 1)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own)
    try:
        assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
        assert listeners.connections_open(port) is True
        assert listeners.stop_accepting(port + 1 if port < 65535 else port - 1) == 0  # nobody's port: nothing
        assert listeners.stop_accepting(port) == 1
        assert not _connects(port), "the listener still accepts connections"
        # The connection accepted before keeps serving.
        assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
        fresh = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest(), timeout=2)
        await fresh.close()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # At its age the connection gets GOAWAY; its client cannot reconnect, so none is left.
        await wait_until_async(lambda: listeners.connections_open(port) is False, timeout_s=10,
                               message="the aged connection closed")
    finally:
        await channel.close()
        await server.stop(None)

