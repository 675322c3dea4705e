"""Slow clients on the HTTP port (issue 22, item 4): half-sent heads and trickled bodies are cut at their
deadlines, open connections are capped with a clear refusal while health probes still get through, and a
server out of file descriptors logs its failed accepts once, not every second.

A real server process (the tiny model) on free loopback ports, with short limits by flag, and plain sockets
playing the slow clients. The bounds asserted are the flags' deadlines with a wide margin (the test machines
are shared and slow): they tell "cut at the deadline" from "left open", which before this fix meant the
hour-long aiohttp keep-alive timeout for a head and no bound at all for a body.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emotion2vec_serving.modelrepo import load_manifest
from emotion2vec_serving.server.process import ServerProcess
from tests.support.metrics import metric_value
from tests.support.polling import wait_until
from tests.support.servers import server_process

#: Far more than any deadline set below; a socket read waiting this long means "never answered".
_READ_BOUND_S = 20.0
_HALF_HEAD = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-Slow: "


def _server(tiny_repo: Path, tmp_path: Path, *flags: str) -> ServerProcess:
    return server_process(tiny_repo, *flags, log_path=tmp_path / "server.log")


def _connect(srv: ServerProcess) -> socket.socket:
    assert srv.http_port is not None
    sock = socket.create_connection(("127.0.0.1", srv.http_port), timeout=_READ_BOUND_S)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (``socket.timeout`` if it never does)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _read_response(sock: socket.socket) -> bytes:
    """One response's head and body (Content-Length), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _metric(srv: ServerProcess, name: str, **labels: str) -> float:
    return metric_value(srv.scrape(), name, **labels)


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def test_half_sent_heads_are_closed_at_the_head_deadline(
        tiny_repo: Path, tmp_path: Path, opened: list[socket.socket]) -> None:
    with _server(tiny_repo, tmp_path, "--http-header-timeout-s", "1") as srv:
        for _ in range(50):
            sock = _connect(srv)
            opened.append(sock)
            sock.sendall(_HALF_HEAD)
        # A keep-alive connection whose second request stalls mid-head is cut the same way.
        keep = _connect(srv)
        opened.append(keep)
        keep.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        assert _read_response(keep).startswith(b"HTTP/1.1 200")
        keep.sendall(_HALF_HEAD)
        started = time.monotonic()
        for sock in opened:
            answer = _read_until_closed(sock)  # socket.timeout here: the server left it open
            assert b"HTTP/1.1 408 Request Timeout" in answer, answer
            assert b"--http-header-timeout-s" in answer
        # Deadline 1 s; 15 s of margin for a loaded machine (before: open for the keep-alive hour).
        assert time.monotonic() - started < 16.0
        assert _metric(srv, "emotion_http_connections_cut_total", reason="header_timeout") == 51
        # The server still answers, and a complete head well within the deadline is served.
        with _connect(srv) as fresh:
            fresh.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            assert _read_until_closed(fresh).startswith(b"HTTP/1.1 200")


def test_a_trickled_body_is_cut_at_the_body_deadline(tiny_repo: Path, tmp_path: Path) -> None:
    model = load_manifest(tiny_repo).model_name
    with _server(tiny_repo, tmp_path, "--http-body-timeout-s", "2") as srv, _connect(srv) as sock:
        sock.sendall(f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: test\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode())
        stop = threading.Event()

        def trickle() -> None:  # one byte every 0.1 s: the whole body would take almost 3 hours
            while not stop.wait(0.1):
                try:
                    sock.sendall(b" ")
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            answer = _read_until_closed(sock)  # socket.timeout here: the server kept reading
        finally:
            stop.set()
            sender.join(5)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"did not arrive within 2 s" in answer
        assert time.monotonic() - started < 2.0 + 15.0  # deadline 2 s, wide margin for a loaded machine
        assert _metric(srv, "emotion_http_connections_cut_total", reason="body_timeout") == 1


def test_the_connection_cap_refuses_clearly_and_keeps_room_for_health_probes(
        tiny_repo: Path, tmp_path: Path, opened: list[socket.socket]) -> None:
    from emotion2vec_serving.server.http.connections import PROBE_RESERVE

    with _server(tiny_repo, tmp_path, "--max-http-connections", "8", "--http-header-timeout-s", "60") as srv:
        for _ in range(8):  # slow clients hold every slot
            sock = _connect(srv)
            opened.append(sock)
            sock.sendall(_HALF_HEAD)
        wait_until(lambda: _metric(srv, "emotion_http_connections") == 8, 20, 0.05,
                   "the server does not count 8 open HTTP connections")

        # Past the cap: a health probe is still answered ...
        with _connect(srv) as probe:
            probe.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: test\r\n\r\n")
            assert _read_until_closed(probe).startswith(b"HTTP/1.1 200")  # closed after its one probe
        # ... anything else gets a clear 503 with Retry-After.
        with _connect(srv) as other:
            other.sendall(b"GET /v2 HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = _read_until_closed(other)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"Retry-After: 1" in answer and b"--max-http-connections 8" in answer

        # The probe reserve full too: refused at once, before any request is read.
        for _ in range(PROBE_RESERVE):
            sock = _connect(srv)
            opened.append(sock)
            sock.sendall(_HALF_HEAD)
        wait_until(lambda: _metric(srv, "emotion_http_connections") == 8 + PROBE_RESERVE, 20, 0.05,
                   "the reserve connections are not counted")
        with _connect(srv) as refused:
            refused.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = _read_until_closed(refused)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable"), answer
        assert b"Retry-After: 1" in answer and b"too many open HTTP connections" in answer
        assert _metric(srv, "emotion_http_connections_cut_total", reason="connection_limit") == 2

        # Once the slow clients are gone, new connections are served normally.
        for sock in opened:
            sock.close()
        wait_until(lambda: _metric(srv, "emotion_http_connections") == 0, 20, 0.05,
                   "closed connections are still counted")
        with _connect(srv) as fresh:
            fresh.sendall(b"GET /v2 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            assert _read_until_closed(fresh).startswith(b"HTTP/1.1 200")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc and prlimit")
def test_accept_errors_at_the_descriptor_limit_are_logged_once_per_interval(
        tiny_repo: Path, tmp_path: Path, opened: list[socket.socket]) -> None:
    with _server(tiny_repo, tmp_path, "--max-http-connections", "4096") as srv:
        accept_line = "accept() out of system resource"
        hard = resource.prlimit(srv.pid, resource.RLIMIT_NOFILE)[1]
        # Room for 3 more descriptors in the server: the 4th connection and on wait in the backlog while every
        # accept() fails with EMFILE (asyncio retries each second, and logged a traceback each time).
        resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (_open_fds(srv.pid) + 3, hard))
        try:
            for _ in range(12):
                opened.append(_connect(srv))
            wait_until(lambda: accept_line in srv.log_text(), 20, 0.05, "no accept() failure logged")
            first = time.monotonic()
            # Hold the server at its limit for 3.5 more retries; the count below proves they happened.
            wait_until(lambda: time.monotonic() - first > 3.5, 10, 0.1, "time passing")
        finally:
            for sock in opened:
                sock.close()
            resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (hard, hard))
        wait_until(lambda: _metric(srv, "emotion_accept_errors_total") >= 4, 20, 0.1,
                   "the server did not count its failed accepts")
        lines = [line for line in srv.log_text().splitlines() if accept_line in line]
        assert len(lines) == 1, lines
        assert "Traceback" not in srv.log_text()
