"""Download a published emotion2vec checkpoint from a model hub: pinned revision, resumable, stall-bounded.

A multi-GB checkpoint on a real network takes minutes, so nothing here bounds the *whole* download. What is
bounded is silence: a connection that does not open within ``timeout_s``, or that delivers no byte for
``timeout_s``, is abandoned and the file is resumed where it stopped (HTTP ``Range``) on a new connection.
Only attempts that make no progress at all count against ``max_stalls``. Partial files (``*.partial``) from
an interrupted run are continued the same way, so re-running the export after a crash or a pod restart
continues the download instead of starting over.

Revisions are pinned: each known model id has a default revision per hub (``PINNED_REVISIONS``), which
``--revision`` overrides. The hub, repository, revision (and the commit the hub resolved it to, where it
says) and every file's size and SHA-256 are written to ``.emotion-download.json`` in the snapshot directory;
the exporter copies that record into the model repository's ``manifest.json``.

Hubs are plain HTTP APIs, so tests (and mirrors) point them elsewhere: ``MODELSCOPE_ENDPOINT`` (or
``MODELSCOPE_DOMAIN``) and ``HF_ENDPOINT``, as the hubs' own clients read them.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DOWNLOAD_RECORD",
    "HUBS",
    "PINNED_REVISIONS",
    "DownloadError",
    "DownloadSettings",
    "download_model",
    "fetch_file",
    "read_download_record",
]

HUBS = ("modelscope", "huggingface")
#: Repository ids of the published models per hub.
REPO_IDS: dict[str, dict[str, str]] = {
    name: {"modelscope": f"iic/{name}", "huggingface": f"emotion2vec/{name}"}
    for name in (
        "emotion2vec_plus_large", "emotion2vec_plus_base", "emotion2vec_plus_seed", "emotion2vec_base"
    )
}
#: The revision each model id is downloaded at unless ``--revision`` says otherwise: ModelScope release
#: tags (what FunASR's users pin: ``model_revision="v2.0.5"`` for the emotion2vec+ models of May 2024,
#: ``v2.0.4`` for emotion2vec_base). The Hugging Face mirrors publish no tags, so they are used only with an
#: explicit ``--revision`` (a commit id), never at an unpinned ``main``.
PINNED_REVISIONS: dict[str, dict[str, str]] = {
    "emotion2vec_plus_large": {"modelscope": "v2.0.5"},
    "emotion2vec_plus_base": {"modelscope": "v2.0.5"},
    "emotion2vec_plus_seed": {"modelscope": "v2.0.5"},
    "emotion2vec_base": {"modelscope": "v2.0.4"},
}
#: Written into the snapshot directory once every file is complete; the loader reads it back.
DOWNLOAD_RECORD = ".emotion-download.json"
#: Only what a checkpoint directory needs (config, weights, labels, model card); examples and images stay.
WANTED_SUFFIXES = (".yaml", ".json", ".pt", ".txt", ".md")
CHUNK_BYTES = 1 << 20
MAX_REDIRECTS = 5

Progress = Callable[[str], None]


class DownloadError(RuntimeError):
    """The hub could not be reached, stopped sending, or sent something else than it listed."""


@dataclass(frozen=True)
class DownloadSettings:
    """How patient a download is: with the connection, not with the size of the file."""

    timeout_s: float = 60.0  # no connection, or no byte received, for this long: abandon the attempt
    max_stalls: int = 4  # consecutive attempts that brought no new byte before giving up on a file
    retry_pause_s: float = 1.0  # pause before resuming after a stall or a dropped connection
    progress_every_s: float = 10.0
    cache_dir: Path | None = None  # default: $EMOTION_EXPORT_CACHE or ~/.cache/emotion2vec-serving/hub
    headers: dict[str, str] = field(default_factory=dict)

    def cache(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        if os.environ.get("EMOTION_EXPORT_CACHE"):
            return Path(os.environ["EMOTION_EXPORT_CACHE"])
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "emotion2vec-serving" / "hub"


def _endpoint(hub: str) -> str:
    if hub == "huggingface":
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if os.environ.get("MODELSCOPE_ENDPOINT"):
        return os.environ["MODELSCOPE_ENDPOINT"].rstrip("/")
    domain = os.environ.get("MODELSCOPE_DOMAIN", "www.modelscope.cn")
    return (domain if domain.startswith(("http://", "https://")) else f"https://{domain}").rstrip("/")


class _Response:
    """An open HTTP response whose socket times out after ``timeout_s`` of silence."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.headers = resp.headers

    def read(self, n: int) -> bytes:
        return self.resp.read(n)

    def read_some(self, n: int) -> bytes:
        """What one socket read brings (at most ``n`` bytes): progress is seen, and kept, as it arrives."""
        return self.resp.read1(n)

    def close(self) -> None:
        self.conn.close()


def _open(url: str, settings: DownloadSettings, headers: dict[str, str] | None = None) -> _Response:
    """GET ``url`` following redirects; connect and every read are bounded by ``settings.timeout_s``."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadError(f"{url}: not an http(s) URL")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=settings.timeout_s,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=settings.timeout_s)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request("GET", path, headers={"User-Agent": "emotion2vec-serving", **settings.headers,
                                               **(headers or {})})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException):
            conn.close()
            raise
        if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
            url = urllib.parse.urljoin(url, resp.headers["Location"])
            conn.close()
            continue
        return _Response(conn, resp)
    raise DownloadError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _get_json(url: str, settings: DownloadSettings) -> Any:
    response = _open(url, settings)
    try:
        body = response.read(64 << 20)
        if response.status != 200:
            raise DownloadError(f"{url}: HTTP {response.status}: {body[:200]!r}")
    finally:
        response.close()
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DownloadError(f"{url}: not JSON ({exc})") from exc


@dataclass(frozen=True)
class _RemoteFile:
    path: str
    url: str
    size: int | None
    sha256: str | None


def _wanted(path: str) -> bool:
    return "/" not in path and path.endswith(WANTED_SUFFIXES)


Listing = tuple[str | None, list[_RemoteFile]]  # (the commit the hub resolved the revision to, files)


def _list_modelscope(repo_id: str, revision: str, settings: DownloadSettings) -> Listing:
    base = _endpoint("modelscope")
    query = urllib.parse.urlencode({"Revision": revision, "Recursive": "true"})
    body = _get_json(f"{base}/api/v1/models/{repo_id}/repo/files?{query}", settings)
    data = body.get("Data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("Files"), list):
        raise DownloadError(f"modelscope {repo_id}@{revision}: unexpected file listing {str(body)[:200]}")
    files = []
    for entry in data["Files"]:
        path = str(entry.get("Path") or entry.get("Name") or "")
        if entry.get("Type", "blob") != "blob" or not _wanted(path):
            continue
        url_query = urllib.parse.urlencode({"Revision": revision, "FilePath": path})
        size = entry.get("Size")
        files.append(_RemoteFile(path, f"{base}/api/v1/models/{repo_id}/repo?{url_query}",
                                 int(size) if size is not None else None, entry.get("Sha256") or None))
    commit = data.get("Revision") or data.get("CommitId") or None
    return (str(commit) if commit else None), files


def _list_huggingface(repo_id: str, revision: str, settings: DownloadSettings) -> Listing:
    base = _endpoint("huggingface")
    rev = urllib.parse.quote(revision, safe="")
    body = _get_json(f"{base}/api/models/{repo_id}/revision/{rev}?blobs=true", settings)
    if not isinstance(body, dict) or not isinstance(body.get("siblings"), list):
        raise DownloadError(f"huggingface {repo_id}@{revision}: unexpected listing {str(body)[:200]}")
    commit = body.get("sha")
    # Files at the resolved commit, so a branch moving mid-download cannot mix two revisions.
    at = urllib.parse.quote(str(commit or revision), safe="")
    files = []
    for entry in body["siblings"]:
        path = str(entry.get("rfilename", ""))
        if not _wanted(path):
            continue
        lfs = entry.get("lfs") or {}
        size = lfs.get("size", entry.get("size"))
        files.append(_RemoteFile(path, f"{base}/{repo_id}/resolve/{at}/{urllib.parse.quote(path)}",
                                 int(size) if size is not None else None, lfs.get("sha256") or None))
    return (str(commit) if commit else None), files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _total_from(response: _Response, offset: int) -> int | None:
    """The full file size a (partial) response implies, if it says."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    if length is not None:
        return offset + int(length)
    return None


def fetch_file(
    url: str,
    dest: Path,
    settings: DownloadSettings,
    size: int | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download ``url`` to ``dest``, continuing ``dest.partial`` if present; resume after stalls and drops.

    Raises DownloadError after ``settings.max_stalls`` consecutive attempts that brought no byte, or when
    the finished file has another size or SHA-256 than listed (the partial file is then deleted).
    """
    say = progress or (lambda _m: None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".partial")
    stalls = 0
    total = size
    last_report = time.monotonic()
    started = time.monotonic()
    start_bytes = part.stat().st_size if part.exists() else 0
    if start_bytes:
        say(f"{dest.name}: continuing a partial download at {start_bytes / 1e6:.1f} MB")
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if total is not None and offset == total:
            break
        if total is not None and offset > total:
            part.unlink()  # longer than the listed file: not a prefix of it
            offset = 0
        before = offset
        finished = False
        error = ""
        try:
            response = _open(url, settings, {"Range": f"bytes={offset}-"} if offset else None)
            try:
                if response.status == 416 and total is not None and offset == total:
                    finished = True
                elif response.status not in (200, 206):
                    raise DownloadError(f"{url}: HTTP {response.status}")
                else:
                    if response.status == 200 and offset:
                        offset = 0  # the server ignored the range: start over
                    implied = _total_from(response, offset)
                    if total is None:
                        total = implied
                    elif implied is not None and implied != total:
                        raise DownloadError(f"{url}: the hub listed {total} bytes but serves {implied}")
                    with part.open("r+b" if offset else "wb") as fh:
                        fh.seek(offset)
                        fh.truncate()
                        while True:
                            chunk = response.read_some(CHUNK_BYTES)
                            if not chunk:
                                break
                            fh.write(chunk)
                            offset += len(chunk)
                            now = time.monotonic()
                            if now - last_report >= settings.progress_every_s:
                                last_report = now
                                rate = (offset - start_bytes) / max(now - started, 1e-9) / 1e6
                                share = f" ({100 * offset / total:.0f} %)" if total else ""
                                say(f"{dest.name}: {offset / 1e6:.1f}"
                                    f"{f'/{total / 1e6:.1f}' if total else ''} MB{share}, {rate:.1f} MB/s")
                    finished = total is None or offset >= total
                    if not finished:
                        error = f"connection closed at {offset} of {total} bytes"
            finally:
                response.close()
        except TimeoutError:
            error = f"no data for {settings.timeout_s:g} s"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if finished:
            break
        got = (part.stat().st_size if part.exists() else 0) - before
        stalls = 0 if got > 0 else stalls + 1
        if stalls >= settings.max_stalls:
            raise DownloadError(f"{dest.name}: {error}; giving up after {stalls} attempts without progress "
                                f"({(part.stat().st_size if part.exists() else 0) / 1e6:.1f} MB kept in "
                                f"{part.name}: running again continues it)")
        say(f"{dest.name}: {error}; resuming at {(before + got) / 1e6:.1f} MB")
        time.sleep(settings.retry_pause_s)
    if not part.exists():
        part.touch()  # an empty file
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{dest.name}: {part.stat().st_size} bytes, the hub listed {total}")
    if sha256:
        got_sha = _sha256(part)
        if got_sha != sha256.lower():
            part.unlink()
            raise DownloadError(f"{dest.name}: SHA-256 {got_sha} differs from the hub's {sha256}; deleted")
    part.replace(dest)
    return dest


def read_download_record(directory: Path) -> dict[str, Any] | None:
    """The provenance record of a downloaded snapshot directory, or None for any other directory."""
    try:
        record = json.loads((Path(directory) / DOWNLOAD_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _snapshot_dir(settings: DownloadSettings, hub: str, repo_id: str, revision: str) -> Path:
    safe = lambda text: "".join(c if c.isalnum() or c in "._-" else "_" for c in text)  # noqa: E731
    return settings.cache() / hub / safe(repo_id.replace("/", "--")) / safe(revision)


def download_model(
    model_id: str,
    revision: str | None = None,
    hub: str | None = None,
    settings: DownloadSettings | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download ``model_id`` (a known name, or ``owner/name`` on a hub) into the cache; return its directory.

    ``revision`` None means the pinned revision of each hub; hubs without one are skipped (a model id with
    no pin at all needs ``--revision``). ``hub`` None tries ModelScope, then Hugging Face. A complete
    snapshot already in the cache is reused without touching the network.
    """
    settings = settings or DownloadSettings()
    say = progress or (lambda _m: None)
    name = model_id.split("/")[-1]
    hubs = [hub] if hub else list(HUBS)
    errors = []
    for h in hubs:
        if h not in HUBS:
            raise DownloadError(f"unknown hub {h!r}: choose one of {HUBS}")
        repo_id = REPO_IDS.get(name, {}).get(h) or model_id
        rev = revision or PINNED_REVISIONS.get(name, {}).get(h)
        if rev is None:
            errors.append(f"{h}: no pinned revision for {model_id!r} (pass --revision)")
            continue
        directory = _snapshot_dir(settings, h, repo_id, rev)
        record = read_download_record(directory)
        if record and all((directory / f).is_file() for f in record.get("files", {})):
            say(f"using the downloaded {h} {repo_id}@{rev} in {directory}")
            return directory
        try:
            say(f"listing {h} {repo_id}@{rev} ({_endpoint(h)})")
            lister = _list_modelscope if h == "modelscope" else _list_huggingface
            commit, files = lister(repo_id, rev, settings)
            if not files:
                raise DownloadError(f"{repo_id}@{rev} lists no checkpoint files")
            total = sum(f.size or 0 for f in files)
            say(f"downloading {len(files)} files, {total / 1e6:.1f} MB, into {directory}")
            for remote in files:
                fetch_file(remote.url, directory / remote.path, settings, remote.size, remote.sha256, say)
        except (DownloadError, OSError, http.client.HTTPException) as exc:
            errors.append(f"{h}: {exc}")
            say(f"{h}: {exc}")
            continue
        record = {
            "hub": h,
            "endpoint": _endpoint(h),
            "repo_id": repo_id,
            "revision": rev,
            "pinned_default": revision is None,
            "commit": commit,
            "files": {
                f.path: {"size": (directory / f.path).stat().st_size, "sha256": _sha256(directory / f.path)}
                for f in files
            },
        }
        (directory / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return directory
    raise DownloadError("; ".join(errors))
