"""Run the real server (``python -m server``) as a child process: for tests, benchmarks and soak runs.

``ServerProcess`` picks free loopback ports, starts ``sys.executable -m server --model ...
--port ... --metrics-port ... --http-port ...`` with the given flags, waits until gRPC health reports
SERVING for the recognizer service (failing with the tail of the server's log if it exits or does not
get there in time), and stops it with SIGTERM, the drain path a Kubernetes pod takes::

    with ServerProcess(model_repo, ["--no-warmup"]) as srv:
        call(srv.target)
        text = srv.scrape()

Only the standard library and grpc are used, so importing this module loads neither the model runtime nor
the server's own code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["HEALTH_SERVICE", "ServerProcess", "ServerStartError", "free_port"]

# The readiness name (server.health.SERVICE_NAME), spelled out: importing server.health would load the
# generated service stubs into a caller that only wants to start a process.
HEALTH_SERVICE = "emotion.v1.EmotionRecognizer"
ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; another process could take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerStartError(RuntimeError):
    """The server exited, or did not report SERVING, during start-up; the message ends with its log tail."""


class ServerProcess:
    """``python -m server`` on free loopback ports; a context manager (start on enter, SIGTERM on exit).

    Args:
        model: what ``--model`` accepts (a model repository directory, ``demo``, ...).
        args: further server flags, appended after the ones this class sets.
        env: variables set on top of the inherited environment.
        isolated_env: leave the inherited ``EMOTION_*`` settings out, so only ``args`` configure the server.
        metrics: serve /metrics on a free port; ``False`` passes ``--metrics-port -1``.
        http: serve HTTP (Open Inference Protocol REST, web page) on a free port; ``False`` passes
            ``--http-port -1``.
        port: the gRPC port (default: a free one).
        startup_timeout_s: how long to wait for SERVING.
        log_path: where the server's stdout and stderr go (default: a temporary file, deleted when the
            block ends without an exception).
        cwd: the working directory (default: the repository root, so ``-m server`` finds the package).
    """

    def __init__(
        self,
        model: str | Path,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        isolated_env: bool = False,
        metrics: bool = True,
        http: bool = True,
        port: int | None = None,
        startup_timeout_s: float = 120.0,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.model = str(model)
        self.args = list(args)
        self.env = dict(env or {})
        self.isolated_env = isolated_env
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port() if port is None else port
        self.metrics_port: int | None = free_port() if metrics else None
        self.http_port: int | None = free_port() if http else None
        self.cwd = cwd or ROOT
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="emotion-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.killed = False  # set when terminate() had to SIGKILL
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------------------------------ facts

    @property
    def command(self) -> list[str]:
        """The command line the server runs with."""
        metrics_port = -1 if self.metrics_port is None else self.metrics_port
        http_port = -1 if self.http_port is None else self.http_port
        return [
            sys.executable, "-m", "emotion2vec_serving.server", "--model", self.model, "--host", "127.0.0.1",
            "--port", str(self.port), "--metrics-port", str(metrics_port), "--http-port", str(http_port),
            *self.args,
        ]  # fmt: skip

    @property
    def target(self) -> str:
        """The gRPC target, ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The HTTP base URL (``http://127.0.0.1:<port>``); RuntimeError when started with ``http=False``."""
        if self.http_port is None:
            raise RuntimeError("this server was started without an HTTP port (http=False)")
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """The /metrics URL; ``RuntimeError`` when started with ``metrics=False``."""
        if self.metrics_port is None:
            raise RuntimeError("this server was started without a metrics port (metrics=False)")
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The child process (for signals and waits a test drives itself)."""
        if self._proc is None:
            raise RuntimeError("the server has not been started")
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        """Everything the server has written to stdout and stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def rss_bytes(self) -> int | None:
        """The server's resident set size (Linux /proc); ``None`` where that cannot be read."""
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def scrape(self, timeout_s: float = 5.0) -> str:
        """The text of the server's /metrics page."""
        with urllib.request.urlopen(self.metrics_url, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body.decode("utf-8")

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> ServerProcess:
        """Start the process and return once it reports SERVING; ``ServerStartError`` otherwise."""
        if self._proc is not None:
            raise RuntimeError("the server was already started")
        env = {k: v for k, v in os.environ.items() if not (self.isolated_env and k.startswith("EMOTION_"))}
        env.update({"PYTHONUNBUFFERED": "1", **self.env})
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        try:
            self._wait_serving()
        except BaseException:
            self.terminate(timeout_s=10.0)
            raise
        return self

    def _wait_serving(self) -> None:
        proc = self.proc
        deadline = time.monotonic() + self.startup_timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise ServerStartError(
                        f"server exited with {proc.returncode} during start-up:\n{self.log_tail()}"
                    )
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.1)
        raise ServerStartError(f"server not SERVING after {self.startup_timeout_s:g} s:\n{self.log_tail()}")

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (a clean drain) and wait up to ``timeout_s``; past that, SIGKILL (``killed`` becomes
        True). Returns the exit code (negative: the signal that ended it). Safe to call more than once."""
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.killed = True
                proc.kill()
        return proc.wait(timeout=10.0)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            self.terminate()
        if self._own_log and exc_type is None:
            self.log_path.unlink(missing_ok=True)
