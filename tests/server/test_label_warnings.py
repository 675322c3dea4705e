"""A server on an emotion2vec+ model that enables 5 of its 9 emotions (issue 23): real server processes on
repositories exported from tiny checkpoints in the hub layout. The start logs a WARNING naming the revision;
``GetModelInfo``, ``/v1/model``, ``emotion-client info`` and the page carry it; ``--require-labels 9`` (or
``EMOTION_REQUIRE_LABELS=9``) makes the server exit 2 with the reason; a nine-label model has no warning."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from emotion2vec_serving.clients import EmotionClient
from emotion2vec_serving.clients.cli import main as client_main
from emotion2vec_serving.export.checkpoint import TOKENS, TOKENS_FIVE_LABELS
from emotion2vec_serving.export.onnx_export import export_repository
from emotion2vec_serving.modelrepo.manifest import MANIFEST_FILE, load_manifest
from emotion2vec_serving.server.process import ServerProcess
from tests.support.labels import FIVE_LABEL_COMMIT, NINE_LABEL_COMMIT, hub_snapshot
from tests.support.servers import server_process
from tests.support.web import WebServer, http, wait_for_http

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"progress": lambda _message: None}
WARNING_START = f"emotion2vec_plus_tiny at revision {FIVE_LABEL_COMMIT} enables only 5 of the 9 emotions"
REFUSAL = (f"emotion2vec_plus_tiny at revision {FIVE_LABEL_COMMIT} enables 5 labels; --require-labels asks "
           "for at least 9")


@pytest.fixture(scope="module")
def five_label_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hub_snapshot(tmp_path_factory.mktemp("five") / "snapshot", TOKENS_FIVE_LABELS, FIVE_LABEL_COMMIT)


@pytest.fixture(scope="module")
def five_label_repo(five_label_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_repository(five_label_snapshot, tmp_path_factory.mktemp("five_repo"), verify=False, **QUIET)


@pytest.fixture(scope="module")
def warned_server(five_label_repo: Path) -> Iterator[ServerProcess]:
    with server_process(five_label_repo, isolated_env=True) as proc:
        _wait_for_http(proc)
        yield proc


def _wait_for_http(proc: ServerProcess) -> None:
    assert proc.http_port is not None
    wait_for_http(WebServer(proc, proc.http_port))


def _server_command(model: Path | str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "emotion2vec_serving.server", "--model", str(model), "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "-1", "--http-port", "-1", "--no-warmup", *flags]


def _run_server(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to refuse to start (bounded: a server that starts is killed)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}
    return subprocess.run(command, cwd=ROOT, env=clean | (env or {}), capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_start_logs_a_warning_naming_the_revision(warned_server: ServerProcess) -> None:
    lines = [line for line in warned_server.log_text().splitlines() if WARNING_START in line]
    assert len(lines) == 1, warned_server.log_tail()
    assert re.search(r" WARNING server: emotion2vec_plus_tiny at revision ", lines[0]), lines[0]


def test_get_model_info_v1_model_and_the_client_carry_the_warning(
    warned_server: ServerProcess, five_label_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (expected,) = load_manifest(five_label_repo).warnings
    assert expected.startswith(WARNING_START)
    with EmotionClient(warned_server.target) as client:
        info = client.model_info()
    assert info.warnings == (expected,)
    assert [label.name for label in info.labels][:2] == ["angry", "unuse_1"]
    card = http("GET", warned_server.http_url + "/v1/model").json()
    assert card["warnings"] == [expected]
    spec = http("GET", warned_server.http_url + "/openapi.json").json()
    assert set(card) <= set(spec["components"]["schemas"]["Model"]["properties"])
    assert client_main(["--target", warned_server.target, "info"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warnings"] == [expected]
    assert f"warning: {expected}" in err


def test_the_page_shows_the_warning_on_the_model_card(warned_server: ServerProcess) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                     "--headless"])
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(warned_server.http_url + "/")
            sync_api.expect(page.locator("#model-card .model-name")).to_have_text("emotion2vec_plus_tiny")
            box = page.locator("#model-warnings")
            sync_api.expect(box).to_be_visible()
            sync_api.expect(box.locator(".model-warning")).to_have_count(1)
            sync_api.expect(box).to_contain_text(f"Model warning: {WARNING_START}")
        finally:
            browser.close()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_require_labels_9_makes_the_server_exit_2_with_the_reason(five_label_repo: Path, how: str) -> None:
    if how == "flag":
        done = _run_server(_server_command(five_label_repo, "--require-labels", "9"))
    else:
        done = _run_server(_server_command(five_label_repo), env={"EMOTION_REQUIRE_LABELS": "9"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"refusing the model in {five_label_repo}: {REFUSAL}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_negative_requirement_is_a_settings_error() -> None:
    done = _run_server(_server_command("demo", "--require-labels", "-1"))
    assert done.returncode == 2
    assert "require_labels must be >= 0" in done.stderr


def test_a_nine_label_model_serves_without_warnings_under_require_labels_9(tmp_path: Path) -> None:
    snapshot = hub_snapshot(tmp_path / "snapshot", TOKENS, NINE_LABEL_COMMIT)
    repo = export_repository(snapshot, tmp_path / "repo", verify=False, **QUIET)
    with server_process(repo, "--require-labels", "9", isolated_env=True) as proc:
        with EmotionClient(proc.target) as client:
            info = client.model_info()
        assert info.model.name == "emotion2vec_plus_tiny" and info.warnings == ()
        _wait_for_http(proc)
        assert http("GET", proc.http_url + "/v1/model").json()["warnings"] == []
        assert "enables only" not in proc.log_text()


def _export_cli_takes_require_labels() -> bool:
    from emotion2vec_serving.export.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["onnx", "--source", "x", "--out", "y", "--require-labels", "9"])
    except SystemExit:
        return False
    return True


def test_a_checkpoint_directory_under_require_labels_9_is_refused_before_it_is_exported(
    five_label_snapshot: Path, tmp_path: Path
) -> None:
    if not _export_cli_takes_require_labels():
        pytest.skip("emotion-export onnx has no --require-labels yet (the download part of issue 23 adds it)")
    cache = tmp_path / "cache"
    done = _run_server(_server_command(five_label_snapshot, "--require-labels", "9", "--model-cache-dir",
                                       str(cache)))
    assert done.returncode == 2, done.stderr[-2000:]
    # The export subprocess got the requirement: it refused, and nothing was exported into the cache.
    assert "--require-labels 9" in done.stderr and REFUSAL in done.stderr
    assert not list(cache.rglob(MANIFEST_FILE))
