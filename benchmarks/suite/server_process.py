"""Start the real server (``python -m server``) as a child process, wait until it serves, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SERVICE_NAME = "emotion.v1.EmotionRecognizer"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """The server on free ports with ``extra_args``; ``with ServerProcess(...) as srv: srv.target``."""

    def __init__(
        self,
        model: str | Path,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.model = str(model)
        self.extra_args = list(extra_args)
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self.port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "server",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--log-level",
            "WARNING",
            *self.extra_args,
        ]

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self) -> ServerProcess:
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self._wait_serving()
        return self

    def _wait_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode} during start-up:\n{self.log_tail()}"
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not SERVING after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()
        if not any(exc):
            Path(self._log.name).unlink(missing_ok=True)
