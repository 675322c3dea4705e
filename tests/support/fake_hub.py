"""A model hub on 127.0.0.1 that answers as Hugging Face and ModelScope do, for the hubs' own clients.

The request and response shapes follow what ``huggingface_hub`` 2.4 and ``modelscope`` 1.40 (through
``modelscope_hub``) send and read (their sources: ``_snapshot_download.py``, ``file_download.py``,
``hf_api.py``; ``modelscope_hub/_download.py``, ``_legacy_api.py``):

Hugging Face (``HF_ENDPOINT``)
  ``GET /api/models/{repo}/revision/{rev}``  repo info: ``sha`` (the commit), ``siblings``
  ``GET /api/models/{repo}/tree/{rev}``      the file tree: ``oid`` (git blob id), ``lfs.oid`` (SHA-256)
  ``HEAD|GET /{repo}/resolve/{rev}/{path}``  ``X-Repo-Commit``, ``ETag`` (git blob id), for LFS files
                                             ``X-Linked-Etag`` (SHA-256) and ``X-Linked-Size``; ``Range``
ModelScope (``MODELSCOPE_ENDPOINT`` / ``MODELSCOPE_DOMAIN``)
  ``GET /api/v1/models/{id}``                        model info
  ``GET /api/v1/models/{id}/revisions``              branches and tags
  ``GET /api/v1/models/{id}/repo/files?Revision=``   the listing: ``Files[]`` with ``Sha256``, ``Revision``
  ``GET /api/v1/models/{id}/repo?Revision=&FilePath=``  the file, with ``Range``

Repositories are published per commit (:meth:`FakeHub.publish`); a revision name (``main``, ``master``, a
tag) points at a commit, and a commit id is itself a revision. It misbehaves on request
(:meth:`FakeHub.fault`): stall mid-file, drop the connection mid-file, answer a status (503) a number of
times; :meth:`FakeHub.corrupt` serves other bytes than the listing's digests; ``require_token`` answers 401
without ``Authorization: Bearer <token>``. Every request is recorded (:attr:`FakeHub.requests`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["LFS_SUFFIXES", "FakeHub", "Fault", "HubRequest", "git_blob_id", "read_tree"]

#: Files the Hugging Face repository keeps in LFS (the rest are plain git blobs, as on the real hub).
LFS_SUFFIXES = (".pt", ".bin", ".onnx", ".wav")


def git_blob_id(data: bytes) -> str:
    """The git object id of a file: what ``oid`` and a plain file's ``ETag`` carry on Hugging Face."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_tree(directory: Path) -> dict[str, bytes]:
    """The files of ``directory`` (recursively) by their relative POSIX path."""
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


@dataclass
class Fault:
    """One misbehaviour for file requests whose path ends with ``path``.

    ``kind``: ``"stall"`` (send ``after`` bytes, then nothing while the connection stays open, until the
    hub is closed or :meth:`FakeHub.release` is called), ``"drop"`` (send ``after`` bytes, then close), or
    ``"status"`` (answer ``status`` without a body). ``times``: how many requests it hits (None: all).
    """

    path: str
    kind: str
    after: int = 0
    status: int = 503
    times: int | None = 1
    hits: int = 0


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str  # with the query
    headers: Mapping[str, str]

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class _Repo:
    refs: dict[str, str] = field(default_factory=dict)  # revision name -> commit


class FakeHub:
    """The server; use as a context manager (it listens on 127.0.0.1, port 0)."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}
        self.repos: dict[str, _Repo] = {}
        self.faults: list[Fault] = []
        self.corrupted: set[str] = set()
        self.require_token: str | None = None
        self.requests: list[HubRequest] = []
        self._released = threading.Event()
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    # -- content ---------------------------------------------------------------------------------------

    def publish(self, repo_ids: tuple[str, ...] | list[str], files: Mapping[str, bytes],
                refs: tuple[str, ...] = ("main", "master")) -> str:
        """Publish ``files`` as a new commit of each repository in ``repo_ids``; point ``refs`` at it."""
        digest = hashlib.sha1()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + git_blob_id(files[name]).encode())
        digest.update(str(len(self.commits)).encode())
        commit = digest.hexdigest()
        self.commits[commit] = dict(files)
        for repo_id in repo_ids:
            repo = self.repos.setdefault(repo_id, _Repo())
            for ref in refs:
                repo.refs[ref] = commit
        return commit

    def fault(self, path: str, kind: str, after: int = 0, status: int = 503, times: int | None = 1) -> Fault:
        fault = Fault(path, kind, after, status, times)
        self.faults.append(fault)
        return fault

    def corrupt(self, path: str) -> None:
        """Serve ``path`` with one byte changed (size and listed digests unchanged)."""
        self.corrupted.add(path)

    def release(self) -> None:
        """End every stall now (their connections are then closed)."""
        self._released.set()

    def file_requests(self, path: str, method: str = "GET") -> list[HubRequest]:
        """Requests for the content of ``path`` through either hub's file URL."""
        out = []
        for r in list(self.requests):
            url = urllib.parse.urlsplit(r.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            hf = "/resolve/" in url.path and urllib.parse.unquote(url.path).endswith("/" + path)
            ms = url.path.endswith("/repo") and query.get("FilePath") == path
            if r.method == method and (hf or ms):
                out.append(r)
        return out

    # -- request handling ------------------------------------------------------------------------------

    def _resolve(self, repo_id: str, revision: str) -> str | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        if revision in repo.refs:
            return repo.refs[revision]
        return revision if revision in self.commits and revision in repo.refs.values() else None

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        with self._lock:
            self.requests.append(HubRequest(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}))
        token = self.require_token
        public = h.path.startswith("/api/v1/repos/internalAccelerationInfo")  # ModelScope's region probe
        if token is not None and not public and h.headers.get("Authorization") != f"Bearer {token}":
            return _send(h, 401, {"error": "Invalid credentials in Authorization header"}, head)
        url = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:3] == ["api", "v1", "models"]:
            return self._modelscope(h, parts[3:], query, head)
        if parts[:2] == ["api", "models"] and len(parts) >= 5:
            return self._hf_api(h, "/".join(parts[2:4]), parts[4], "/".join(parts[5:]), head)
        if len(parts) >= 5 and parts[2] == "resolve":
            commit = self._resolve("/".join(parts[:2]), parts[3])
            if commit is None:
                return _send(h, 404, {"error": "Revision Not Found"}, head,
                             {"X-Error-Code": "RevisionNotFound"})
            return self._file(h, commit, "/".join(parts[4:]), head, hf=True)
        return _send(h, 404, {"error": f"no route {url.path}"}, head)

    def _hf_api(self, h: BaseHTTPRequestHandler, repo_id: str, kind: str, rest: str, head: bool) -> None:
        revision = rest.split("/", 1)[0] if rest else "main"
        if repo_id not in self.repos:
            return _send(h, 401 if self.require_token else 404, {"error": "Repository Not Found"}, head,
                         {"X-Error-Code": "RepoNotFound"})
        commit = self._resolve(repo_id, revision)
        if commit is None:
            return _send(h, 404, {"error": f"Invalid rev id: {revision}"}, head,
                         {"X-Error-Code": "RevisionNotFound"})
        files = self.commits[commit]
        if kind == "revision":
            siblings = [{"rfilename": n, **self._hf_entry(n, b)} for n, b in files.items()]
            return _send(h, 200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                                  "siblings": siblings}, head)
        if kind == "tree":
            tree = [{"type": "file", "path": n, "oid": git_blob_id(b), "size": len(b),
                     **({"lfs": {"oid": hashlib.sha256(b).hexdigest(), "size": len(b), "pointerSize": 134}}
                        if n.endswith(LFS_SUFFIXES) else {})}
                    for n, b in files.items()]
            return _send(h, 200, tree, head)
        return _send(h, 404, {"error": f"no route {kind}"}, head)

    @staticmethod
    def _hf_entry(name: str, data: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {"size": len(data), "blobId": git_blob_id(data)}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _modelscope(self, h: BaseHTTPRequestHandler, parts: list[str], query: dict[str, str],
                    head: bool) -> None:
        if len(parts) < 2:
            return _send(h, 404, {"Code": 10010205001, "Message": "not found", "Success": False}, head)
        repo_id, rest = "/".join(parts[:2]), parts[2:]
        if repo_id not in self.repos:
            return _send(h, 404, {"Code": 10010205001, "Message": f"model {repo_id} not found",
                                  "Success": False}, head)
        repo = self.repos[repo_id]
        if not rest:
            return _send(h, 200, _ms_ok({"Id": 1, "Path": parts[0], "Name": parts[1], "ChineseName": "",
                                         "Revision": "master", "Tasks": [], "Downloads": 0}), head)
        if rest == ["revisions"]:
            branches = [{"Revision": r, "CommitId": c} for r, c in repo.refs.items() if not r.startswith("v")]
            tags = [{"Revision": r, "CommitId": c} for r, c in repo.refs.items() if r.startswith("v")]
            return _send(h, 200, _ms_ok({"RevisionMap": {"Branches": branches, "Tags": tags}}), head)
        revision = query.get("Revision") or "master"
        commit = self._resolve(repo_id, revision)
        if commit is None:
            return _send(h, 404, {"Code": 10010205001, "Message": f"revision {revision} not found",
                                  "Success": False}, head)
        files = self.commits[commit]
        if rest == ["repo", "files"]:
            listing = [{"Name": n.rsplit("/", 1)[-1], "Path": n, "Type": "blob", "Size": len(b),
                        "Sha256": hashlib.sha256(b).hexdigest(), "Revision": commit, "IsLFS": False,
                        "CommitMessage": "publish", "CommitterName": "fake-hub", "CommittedDate": 1700000000}
                       for n, b in files.items()]
            return _send(h, 200, _ms_ok({"Files": listing, "IsTruncated": False}), head)
        if rest == ["repo"] and "FilePath" in query:
            return self._file(h, commit, query["FilePath"], head, hf=False)
        return _send(h, 404, {"Code": 10010205001, "Message": f"no route {rest}", "Success": False}, head)

    def _take_fault(self, name: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if name.endswith(fault.path) and (fault.times is None or fault.hits < fault.times):
                    fault.hits += 1
                    return fault
        return None

    def _file(self, h: BaseHTTPRequestHandler, commit: str, name: str, head: bool, hf: bool) -> None:
        files = self.commits[commit]
        if name not in files:
            return _send(h, 404, {"error": "Entry not found"}, head, {"X-Error-Code": "EntryNotFound"})
        body = files[name]
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "ETag": f'"{git_blob_id(body)}"'}
        if hf and name.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(body).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(body))
        if name in self.corrupted:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        fault = None if head else self._take_fault(name)
        if fault is not None and fault.kind == "status":
            return _send(h, fault.status, {"error": "Service Unavailable"}, head, {"Retry-After": "0"})
        start = 0
        ranged = h.headers.get("Range")
        if ranged and not head:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                return _send(h, 416, {"error": "Range Not Satisfiable"}, head,
                             {"Content-Range": f"bytes */{len(body)}"})
        h.send_response(206 if start else 200)
        for key, value in headers.items():
            h.send_header(key, value)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body) - start))
        h.end_headers()
        if head:
            return
        limit = len(body) if fault is None else max(fault.after, start)
        sent = start
        try:
            while sent < limit:
                piece = body[sent:min(sent + (256 << 10), limit)]
                h.wfile.write(piece)
                sent += len(piece)
            h.wfile.flush()
            if fault is not None and fault.kind == "stall":
                self._released.wait(120)  # silent, the connection open
            if fault is not None:
                h.close_connection = True
                h.connection.shutdown(2)
        except OSError:
            h.close_connection = True


def _ms_ok(data: Any) -> dict[str, Any]:
    return {"Code": 200, "Data": data, "Message": "success", "Success": True, "RequestId": "fake"}


def _send(h: BaseHTTPRequestHandler, status: int, payload: Any, head: bool,
          headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    h.send_response(status)
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if not head:
        h.wfile.write(body)
