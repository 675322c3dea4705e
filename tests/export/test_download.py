"""Hub downloads against a local HTTP server that speaks the ModelScope and Hugging Face file APIs and
misbehaves on request: slow but steady, silent mid-file, dropping the connection mid-file.

Before issue 14 a whole download had a 10 s deadline (a 1.2 GB checkpoint could never finish on a real
network), nothing resumed, and no revision was pinned or recorded.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emotion2vec_serving.export.download import (
    DOWNLOAD_RECORD,
    PINNED_REVISIONS,
    DownloadError,
    DownloadSettings,
    download_model,
    fetch_file,
)
from emotion2vec_serving.export.load import CheckpointError, load_checkpoint
from emotion2vec_serving.modelrepo import load_manifest

ROOT = Path(__file__).resolve().parents[2]
BLOB = bytes(range(256)) * 4096  # 1 MiB, so a stall or a drop lands mid-file


@dataclass
class Behaviour:
    """How the server treats requests for ``target`` (a file name)."""

    target: str = ""
    stall_after: int | None = None  # first response: send this many bytes, then go silent
    drop_after: int | None = None  # first response: send this many bytes, then close the connection
    silent: bool = False  # every response: headers, then nothing (a dead upstream)
    chunk: int = 64 * 1024
    delay_s: float = 0.0  # between chunks: slow but steady
    wrong_sha: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    released: threading.Event = field(default_factory=threading.Event)


class Hub:
    """Files per (repo_id, revision), served through both hub APIs."""

    def __init__(self, files: dict[str, bytes], behaviour: Behaviour) -> None:
        self.files = files
        self.behaviour = behaviour
        self.revisions: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                hub.behaviour.requests.append((self.path, self.headers.get("Range")))
                parts = url.path.strip("/").split("/")
                # ModelScope: /api/v1/models/<owner>/<name>/repo/files?Revision=  and  .../repo?FilePath=
                if parts[:3] == ["api", "v1", "models"] and parts[-2:] == ["repo", "files"]:
                    return self._listing_ms(query["Revision"])
                if parts[:3] == ["api", "v1", "models"] and parts[-1] == "repo":
                    return self._file(query["Revision"], query["FilePath"])
                # Hugging Face: /api/models/<repo>/revision/<rev>  and  /<repo>/resolve/<rev>/<file>
                if parts[:2] == ["api", "models"] and parts[-2] == "revision":
                    return self._listing_hf(urllib.parse.unquote(parts[-1]))
                if len(parts) == 5 and parts[2] == "resolve":
                    return self._file(urllib.parse.unquote(parts[3]), urllib.parse.unquote(parts[4]))
                self._send(404, b"not found")

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _sha(self, name: str) -> str:
                digest = hashlib.sha256(hub.files[name]).hexdigest()
                return "0" * 64 if hub.behaviour.wrong_sha and name == hub.behaviour.target else digest

            def _listing_ms(self, revision: str) -> None:
                if revision not in hub.revisions:
                    return self._send(404, b'{"Code": 404}')
                files = [{"Path": n, "Name": n, "Type": "blob", "Size": len(b), "Sha256": self._sha(n)}
                         for n, b in hub.files.items()]
                files.append({"Path": "example", "Name": "example", "Type": "tree", "Size": 0})
                files.append({"Path": "example/test.wav", "Type": "blob", "Size": 10, "Sha256": ""})
                self._send(200, json.dumps({"Code": 200, "Data": {"Files": files}}).encode())

            def _listing_hf(self, revision: str) -> None:
                if revision not in hub.revisions:
                    return self._send(404, b'{"error": "Revision Not Found"}')
                siblings = [{"rfilename": n, "size": len(b), "lfs": {"sha256": self._sha(n), "size": len(b)}}
                            for n, b in hub.files.items()]
                self._send(200, json.dumps({"sha": "c0ffee" * 6 + "0000", "siblings": siblings}).encode())

            def _file(self, revision: str, name: str) -> None:
                if revision not in hub.revisions and revision != "c0ffee" * 6 + "0000":
                    return self._send(404, b"no such revision")
                body = hub.files[name]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                b = hub.behaviour
                first = sum(1 for p, _ in b.requests if name in urllib.parse.unquote(p)) == 1
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                sent = start
                limit = len(body)
                if name == b.target and first and b.stall_after is not None:
                    limit = b.stall_after
                if name == b.target and first and b.drop_after is not None:
                    limit = b.drop_after
                if name == b.target and b.silent:
                    limit = start
                while sent < limit:
                    piece = body[sent:min(sent + b.chunk, limit)]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    sent += len(piece)
                    if b.delay_s and name == b.target:
                        time.sleep(b.delay_s)
                if sent < len(body):
                    if (name == b.target and first and b.stall_after is not None) or b.silent:
                        b.released.wait(30)  # silent, connection open
                    self.close_connection = True
                    self.connection.shutdown(2)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests_for(self, name: str) -> list[str | None]:
        return [r for p, r in self.behaviour.requests if urllib.parse.unquote(p).endswith(name)
                and "/files" not in p]


@pytest.fixture
def checkpoint_files(tiny_checkpoint: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(tiny_checkpoint.iterdir()) if p.is_file()}
    return files


@pytest.fixture
def hub(checkpoint_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Hub]:
    behaviour = Behaviour()
    server = Hub({**checkpoint_files, "blob.bin": BLOB}, behaviour)
    server.revisions = {PINNED_REVISIONS["emotion2vec_plus_large"]["modelscope"], "v9.9.9", "main"}
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", server.url)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("EMOTION_EXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EMOTION_EXPORT_OFFLINE", raising=False)
    yield server
    behaviour.released.set()
    server.server.shutdown()
    server.server.server_close()


def _blob_url(hub: Hub, revision: str = "v9.9.9") -> str:
    return f"{hub.url}/api/v1/models/iic/x/repo?Revision={revision}&FilePath=blob.bin"


QUICK = DownloadSettings(timeout_s=0.5, retry_pause_s=0.05, progress_every_s=0.0)


def test_a_slow_but_steady_download_outlasts_any_timeout(hub: Hub, tmp_path: Path) -> None:
    # 16 chunks, 0.1 s apart: 1.6 s in all, more than three times the 0.5 s timeout; never silent that long.
    hub.behaviour.target, hub.behaviour.delay_s = "blob.bin", 0.1
    messages: list[str] = []
    started = time.monotonic()
    out = fetch_file(_blob_url(hub), tmp_path / "blob.bin", QUICK, size=len(BLOB),
                     sha256=hashlib.sha256(BLOB).hexdigest(), progress=messages.append)
    assert time.monotonic() - started > 3 * QUICK.timeout_s
    assert out.read_bytes() == BLOB
    assert hub.requests_for("blob.bin") == [None]  # one connection, nothing to resume
    assert any("MB" in m and "%" in m for m in messages), messages  # progress was reported


def test_a_stalled_connection_is_abandoned_and_the_file_resumed(hub: Hub, tmp_path: Path) -> None:
    hub.behaviour.target, hub.behaviour.stall_after = "blob.bin", 300_000
    messages: list[str] = []
    started = time.monotonic()
    out = fetch_file(_blob_url(hub), tmp_path / "blob.bin", QUICK, size=len(BLOB), progress=messages.append)
    assert time.monotonic() - started < 10
    assert out.read_bytes() == BLOB
    ranges = hub.requests_for("blob.bin")
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))  # type: ignore[union-attr]
    assert 0 < resumed_at <= 300_000  # continued, not restarted
    assert any("no data for 0.5 s" in m for m in messages), messages


def test_a_dropped_connection_is_resumed(hub: Hub, tmp_path: Path) -> None:
    hub.behaviour.target, hub.behaviour.drop_after = "blob.bin", 500_000
    out = fetch_file(_blob_url(hub), tmp_path / "blob.bin", QUICK, size=len(BLOB))
    assert out.read_bytes() == BLOB
    assert hub.requests_for("blob.bin") == [None, "bytes=500000-"]


def test_a_partial_file_from_an_earlier_run_is_continued(hub: Hub, tmp_path: Path) -> None:
    (tmp_path / "blob.bin.partial").write_bytes(BLOB[:123_456])
    messages: list[str] = []
    out = fetch_file(_blob_url(hub), tmp_path / "blob.bin", QUICK, size=len(BLOB),
                     sha256=hashlib.sha256(BLOB).hexdigest(), progress=messages.append)
    assert out.read_bytes() == BLOB and not (tmp_path / "blob.bin.partial").exists()
    assert hub.requests_for("blob.bin") == ["bytes=123456-"]
    assert any("continuing a partial download at 0.1 MB" in m for m in messages)


def test_a_silent_hub_fails_in_bounded_time(hub: Hub, tmp_path: Path) -> None:
    hub.behaviour.target, hub.behaviour.silent = "blob.bin", True  # headers, then nothing, every time
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"no data for 0\.5 s; giving up after 4 attempts"):
        fetch_file(_blob_url(hub), tmp_path / "blob.bin", QUICK, size=len(BLOB))
    assert time.monotonic() - started < 10
    assert len(hub.requests_for("blob.bin")) == QUICK.max_stalls


def test_a_digest_mismatch_is_refused_and_the_file_deleted(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="SHA-256"):
        fetch_file(_blob_url(hub), tmp_path / "blob.bin", QUICK, size=len(BLOB), sha256="ab" * 32)
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / "blob.bin.partial").exists()


def test_model_id_downloads_the_pinned_revision_and_records_it(hub: Hub, tmp_path: Path) -> None:
    pinned = PINNED_REVISIONS["emotion2vec_plus_large"]["modelscope"]
    hub.behaviour.target, hub.behaviour.drop_after = "model.pt", 20_000  # and it survives a drop
    directory = download_model("emotion2vec_plus_large", settings=QUICK)
    listing = [p for p, _ in hub.behaviour.requests if "/repo/files" in p]
    assert listing and all(f"Revision={pinned}" in p for p in listing)
    record = json.loads((directory / DOWNLOAD_RECORD).read_text())
    assert record["hub"] == "modelscope" and record["repo_id"] == "iic/emotion2vec_plus_large"
    assert record["revision"] == pinned and record["pinned_default"] is True
    # The checkpoint's files only: no examples (example/test.wav), nothing else (blob.bin).
    assert set(record["files"]) == set(hub.files) - {"blob.bin"}
    ck = load_checkpoint("emotion2vec_plus_large", timeout_s=0.5)  # reuses the cache: no new request
    assert ck.hub == record and ck.untrained  # the tiny generated checkpoint, served as the large model id
    assert len([p for p, _ in hub.behaviour.requests if "/repo/files" in p]) == len(listing)


def test_revision_override_and_hugging_face(hub: Hub) -> None:
    directory = download_model("emotion2vec_plus_large", revision="main", hub="huggingface", settings=QUICK)
    record = json.loads((directory / DOWNLOAD_RECORD).read_text())
    assert record["hub"] == "huggingface" and record["revision"] == "main"
    assert record["commit"] == "c0ffee" * 6 + "0000" and record["pinned_default"] is False
    files = [urllib.parse.unquote(p) for p, _ in hub.behaviour.requests if "/resolve/" in p]
    assert files and all(f"/resolve/{record['commit']}/" in p for p in files)  # at the resolved commit


def test_hugging_face_without_a_pin_is_never_used_at_an_unpinned_head(hub: Hub) -> None:
    with pytest.raises(DownloadError, match=r"no pinned revision .*pass --revision"):
        download_model("emotion2vec_plus_large", hub="huggingface", settings=QUICK)
    assert hub.behaviour.requests == []


def test_unknown_revision_fails_with_the_download_hint(hub: Hub) -> None:
    with pytest.raises(CheckpointError, match=r"HTTP 404.*--source DIR"):
        load_checkpoint("emotion2vec_plus_large", timeout_s=0.5, revision="v0.0.0-missing")


def test_cli_export_of_a_model_id_records_the_revision_in_the_manifest(hub: Hub, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "emotion2vec_serving.export.cli", "onnx", "--source",
         "iic/emotion2vec_plus_large", "--revision", "v9.9.9", "--out", str(tmp_path / "repo"),
         "--no-verify"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    source = load_manifest(tmp_path / "repo").source
    assert source is not None and source.hub is not None
    assert source.hub.revision == "v9.9.9" and source.hub.repo_id == "iic/emotion2vec_plus_large"
    assert {f.path: f.sha256 for f in source.hub.files}["model.pt"] == source.checkpoint_sha256
    assert "downloading" in done.stderr
