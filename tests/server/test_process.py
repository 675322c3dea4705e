"""server.process.ServerProcess against the real ``python -m emotion2vec_serving.server``: start, serve,
scrape, drain, fail."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from emotion2vec_serving.server.grpc.health import SERVICE_NAME
from emotion2vec_serving.server.process import HEALTH_SERVICE, ServerProcess, ServerStartError
from tests.support.servers import server_process


def test_health_name_is_the_servers() -> None:
    assert HEALTH_SERVICE == SERVICE_NAME


def test_serves_scrapes_and_drains_cleanly(tiny_repo: Path) -> None:
    with server_process(tiny_repo) as srv:
        with grpc.insecure_channel(srv.target) as channel:
            info = emotion_pb2_grpc.EmotionRecognizerStub(channel).GetModelInfo(
                emotion_pb2.GetModelInfoRequest(), timeout=10
            )
        assert info.labels
        assert "emotion_requests_total" in srv.scrape()
        rss = srv.rss_bytes()
        assert rss is not None and rss > 10 * 1024 * 1024
        log = srv.log_path
        assert srv.terminate(timeout_s=30) == 0
        assert not srv.killed
        assert "stopped" in srv.log_text()
    assert not log.exists()  # its own temporary log is removed after a clean block


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "no-such-model", log_path=tmp_path / "server.log", startup_timeout_s=60)
    with pytest.raises(ServerStartError, match="exited with") as failed:
        srv.start()
    assert "no-such-model" in str(failed.value)
    assert srv.proc.poll() is not None
