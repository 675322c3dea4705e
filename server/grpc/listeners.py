"""GOAWAY without shutting the gRPC server down: the drain's way around gRPC core's shutdown race.

``server.stop()`` (gRPC core's ``ShutdownAndNotify``) sends GOAWAY, but from that instant core also cancels
every call its transport reads that no handler has taken yet, and every call that arrives before the client
has read the GOAWAY: a plain client sees CANCELLED for a call the server never saw (grpc/grpc#41785). The
connection-age GOAWAY (``grpc.max_connection_age_ms``) has no such race: the server still runs, so calls
that cross it are served. The drain therefore

1. stops accepting new TCP connections on the gRPC port (``stop_accepting``; accepted connections stay), so
   a client whose connection got its GOAWAY reconnects to another server, not to this one;
2. waits until every connection has had its age GOAWAY (``age_goaway_wait_s`` at most; sooner when
   channelz reports no connection left, ``connections_open``);
3. only then calls ``server.stop(grace)``: what is left are connections that already had their GOAWAY and
   carry streams, so nothing new can arrive for core to cancel.

Linux only for step 1 (``/proc/self/fd``); elsewhere the listener stays open until ``server.stop``.

Why the age is on by default (``--max-connection-age-s`` 10 s; issue 22): the safe GOAWAY cannot be sent
at drain time only. A connection's age timer is armed when the connection is accepted, from channel
arguments fixed when the server was created (``grpc.max_connection_age_ms``; core's max-age filter), and
neither grpcio nor core's public API sends a GOAWAY on a live server's connection any other way: the
shutdown's GOAWAY is the racy one above; ``grpc.max_connection_idle_ms`` only reaches connections with no
call, never a client under load; ``grpc.max_connection_age_grace_ms`` only bounds what comes after an age
GOAWAY; a second server cannot take over connections the first accepted; the xDS server's serving-status
drain (the one other GOAWAY without shutdown) needs an xDS control plane. So every connection must age all
the time for one to be due soon after any SIGTERM: the wait here is at most 1.1 x the age + 1 s. A short
default keeps that wait short (12 s, within Kubernetes' default 30 s termination grace); its cost in normal
serving is one reconnect per client about every 10 s (new calls go to the new connection, calls and streams
on the old one finish: the age grace is ``--max-stream-duration-s`` + ``--drain-grace-s``), which also
rebalances clients behind a TCP load balancer. ``--max-connection-age-s 0`` turns it off, and with it the
safe drain: the drain then goes straight to ``server.stop``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from typing import Any

log = logging.getLogger(__name__)

# gRPC core spreads each connection's age over +-10 % (chttp2 MAX_CONNECTION_AGE_JITTER).
AGE_JITTER = 0.1
# After its first GOAWAY a connection still serves the calls its client sent before reading it (chttp2
# pings the client and sends the final GOAWAY on the ack); one round trip, given a generous second.
GOAWAY_SETTLE_S = 1.0


def age_goaway_wait_s(max_connection_age_s: float) -> float:
    """The longest a drain waits, once the listener is closed, for the last connection's age GOAWAY."""
    return max_connection_age_s * (1.0 + AGE_JITTER) + GOAWAY_SETTLE_S


def stop_accepting(port: int) -> int:
    """Close this process's TCP listening sockets on ``port`` to new connections; returns how many.

    ``shutdown(SHUT_RD)`` on a listening socket resets its accept queue and turns it into a closed socket
    (the kernel's way to stop a listener another thread polls): new connections are refused at once, every
    accepted connection is untouched. gRPC's acceptor then sees accept fail and stops (it logs "Closing
    acceptor"); the descriptor stays gRPC's and is closed by ``server.stop`` as usual.
    """
    if port <= 0 or not os.path.isdir("/proc/self/fd"):
        return 0
    closed = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))  # a duplicate: closing it leaves gRPC's descriptor alone
        except (OSError, ValueError):
            continue
        with sock:
            try:
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                    continue
                if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                if sock.getsockname()[1] != port:
                    continue
                sock.shutdown(socket.SHUT_RD)
                closed += 1
            except OSError:
                continue
    return closed


def connections_open(port: int) -> bool | None:
    """Whether any gRPC server connection of this process is still open on local ``port`` (None when
    channelz, gRPC's registry of servers and sockets, cannot be read)."""
    try:
        from grpc._cython import cygrpc  # channelz's query functions (what grpcio-channelz serves)

        for server in json.loads(cygrpc.channelz_get_servers(0)).get("server", []):
            start = 0
            while True:
                page: dict[str, Any] = json.loads(
                    cygrpc.channelz_get_server_sockets(int(server["ref"]["serverId"]), start, 0))
                refs = page.get("socketRef", [])
                for ref in refs:
                    try:
                        data = json.loads(cygrpc.channelz_get_socket(int(ref["socketId"])))
                    except ValueError:  # closed between the two calls
                        continue
                    local = data.get("socket", {}).get("local", {}).get("tcpipAddress", {})
                    if int(local.get("port", 0)) == port:
                        return True
                if page.get("end", True) or not refs:
                    break
                start = int(refs[-1]["socketId"]) + 1
        return False
    except Exception:  # an optional view: without it the drain waits its whole bound
        log.debug("channelz unavailable", exc_info=True)
        return None
