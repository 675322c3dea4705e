"""Start the real server (``python -m emotion2vec_serving.server``) as a child process, wait until it
serves, stop it.

The suite's defaults on top of server.process.ServerProcess: quiet logs and a long start-up allowance (the
large model's warm-up on a busy machine).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from emotion2vec_serving.server.process import ServerProcess as _ServerProcess
from emotion2vec_serving.server.process import free_port

__all__ = ["ServerProcess", "free_port"]


class ServerProcess(_ServerProcess):
    """The server on free ports with ``extra_args``; ``with ServerProcess(...) as srv: srv.target``."""

    def __init__(
        self,
        model: str | Path,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            model, ["--log-level", "WARNING", *extra_args], env=env, startup_timeout_s=startup_timeout_s
        )
