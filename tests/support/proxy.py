"""A tiny HTTP proxy on 127.0.0.1 that counts what goes through it: plain forwarding (``GET http://...``)
and ``CONNECT`` tunnels (for https), as a corporate egress proxy does. Only 127.0.0.1 targets are served."""

from __future__ import annotations

import http.client
import select
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["CountingProxy"]

_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade"}


class CountingProxy:
    """Use as a context manager; ``url`` is what HTTP_PROXY/HTTPS_PROXY take, ``requests`` what came."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []  # (method, target URL or host:port)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _record(self) -> None:
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))

            def do_CONNECT(self) -> None:
                self._record()
                host, _, port = self.path.rpartition(":")
                if host not in ("127.0.0.1", "localhost"):
                    self.send_error(403, "only 127.0.0.1")
                    return
                upstream = socket.create_connection((host, int(port)))
                self.send_response(200, "Connection established")
                self.end_headers()
                sockets = [self.connection, upstream]
                try:
                    while True:
                        ready, _, _ = select.select(sockets, [], [], 60)
                        if not ready:
                            break
                        for s in ready:
                            data = s.recv(1 << 16)
                            if not data:
                                return
                            (upstream if s is self.connection else self.connection).sendall(data)
                finally:
                    upstream.close()
                    self.close_connection = True

            def _forward(self) -> None:
                self._record()
                url = urllib.parse.urlsplit(self.path)
                if url.hostname not in ("127.0.0.1", "localhost") or url.scheme != "http":
                    self.send_error(403, "only http://127.0.0.1")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
                try:
                    target = url.path + (f"?{url.query}" if url.query else "")
                    conn.request(self.command, target, body, headers)
                    resp = conn.getresponse()
                    self.send_response(resp.status, resp.reason)
                    for key, value in resp.getheaders():
                        if key.lower() not in _HOP:
                            self.send_header(key, value)
                    self.end_headers()
                    if self.command != "HEAD":
                        while chunk := resp.read1(1 << 16):
                            self.wfile.write(chunk)
                            self.wfile.flush()
                    if resp.length:  # the upstream closed early: so does the proxy
                        self.close_connection = True
                except OSError:
                    self.close_connection = True
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
