"""Download a published emotion2vec checkpoint through the hubs' own clients, at a revision with 9 emotions.

Transfers go through ``huggingface_hub.snapshot_download`` and ``modelscope.snapshot_download`` (with
``allow_patterns``), so what those clients do for every other model they do here too: proxies
(``HTTPS_PROXY``/``NO_PROXY``: httpx and requests honour them), tokens (``HF_TOKEN``,
``MODELSCOPE_API_TOKEN``), mirrors (``HF_ENDPOINT``, ``MODELSCOPE_ENDPOINT``/``MODELSCOPE_DOMAIN``), their
retries and in-process resume after a stalled or dropped connection, and their default caches
(``HF_HOME``/``HF_HUB_CACHE``, ``MODELSCOPE_CACHE``), which FunASR reads as well. Offline mode
(``HF_HUB_OFFLINE=1`` or ``EMOTION_EXPORT_OFFLINE=1``) serves a snapshot from those caches.

What the clients lack is kept here (docs/DESIGN.md, "Model downloads", says why each part exists):

* a SHA-256 check of every file against the hub's listing (Hugging Face: ``lfs.sha256`` of LFS files and
  the git blob id of the others; ModelScope: ``Sha256`` per file); a mismatch is refused naming the file
  and the cached copy is removed, so a rerun fetches it again;
* resume across process restarts on Hugging Face: ``huggingface_hub`` downloads into a per-process
  ``<etag>.<random>.incomplete`` file that a killed process leaves behind and no later run reads; such a
  leftover is continued here (HTTP ``Range``, the library's own ``http_get``) before the snapshot runs.
  ModelScope keeps ``<file>.incomplete`` and continues it itself;
* a stall timeout (no byte for ``timeout_s``) on every network wait of both clients (ModelScope's listing,
  API and download timeouts; every ``huggingface_hub`` request, whose API calls otherwise wait forever), and
  ModelScope's per-file deadline (``MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT``, 1 h) lifted: nothing bounds a
  download that keeps moving, while silence is bounded: ``retries + 1`` stalled attempts in a row (no byte
  in between), counted together for the clients' inner retries and ours (:class:`_StallMeter`), fail it;
* a bounded retry with backoff around a whole snapshot for 429/5xx answers and lost connections where the
  client gives up (``huggingface_hub`` retries a file's GET only on 408/429; its listing not at all); an
  attempt that moved bytes before it failed is not counted;
* the download record ``.emotion-download.json`` in the snapshot directory (hub, repository, requested
  revision, resolved commit, every file's size and SHA-256), which the exporter copies into manifest.json;
* the label check: after every download the enabled labels of ``tokens.txt`` are counted
  (``modelrepo.labels.check_labels``); fewer than nine for an emotion2vec+ model is a warning naming the
  commit, and ``require_labels`` turns it into an error.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotion2vec_serving.modelrepo import labels_from_tokens
from emotion2vec_serving.modelrepo.labels import LabelCountError, check_labels

__all__ = [
    "DOWNLOAD_RECORD",
    "HUBS",
    "HUB_ALIASES",
    "PINS",
    "REPO_IDS",
    "DownloadError",
    "DownloadSettings",
    "Pin",
    "download_model",
    "hub_name",
    "offline_mode",
    "read_download_record",
]

log = logging.getLogger(__name__)

HUBS = ("huggingface", "modelscope")
HUB_ALIASES = {"hf": "huggingface", "huggingface": "huggingface", "ms": "modelscope",
               "modelscope": "modelscope"}
MODEL_NAMES = ("emotion2vec_plus_large", "emotion2vec_plus_base", "emotion2vec_plus_seed", "emotion2vec_base")
#: Repository ids of the published models per hub.
REPO_IDS: dict[str, dict[str, str]] = {
    name: {"modelscope": f"iic/{name}", "huggingface": f"emotion2vec/{name}"} for name in MODEL_NAMES
}
#: The branch a hub resolves when no verified pin exists (resolved at download time, the commit recorded).
DEFAULT_BRANCH = {"huggingface": "main", "modelscope": "master"}


@dataclass(frozen=True)
class Pin:
    """The default hub and revision of a known model id, and where that revision comes from."""

    hub: str
    revision: str
    source: str


#: Revisions whose tokens.txt enables the nine emotions the README promises.
PINS: dict[str, Pin] = {
    # Hugging Face mirror emotion2vec/emotion2vec_plus_large, commit 6c303ba9…: the commit that brought the
    # 9-class tokens.txt (the May-2024 snapshots enabled 5 of 9, with unuse_* placeholders; issue 23).
    "emotion2vec_plus_large": Pin("huggingface", "6c303ba987b86b93193de93e34bb2b077a6bedc4",
                                  "Hugging Face commit with the 9-class tokens.txt (issue 23)"),
    # No commit of these repositories has been verified to carry the 9-class tokens.txt, and the ModelScope
    # tag v2.0.5 that used to be pinned is unconfirmed (FunASR itself asks for master). So: ModelScope
    # master, resolved at download time; the resolved commit is recorded and the label check reports what
    # it enables.
    "emotion2vec_plus_base": Pin("modelscope", "master", "ModelScope master, resolved at download time"),
    "emotion2vec_plus_seed": Pin("modelscope", "master", "ModelScope master, resolved at download time"),
    "emotion2vec_base": Pin("modelscope", "master", "ModelScope master, resolved at download time (no head)"),
}
#: Written into the snapshot directory once every file is verified; the loader and the exporter read it.
DOWNLOAD_RECORD = ".emotion-download.json"
#: What a checkpoint directory needs (config, weights, labels, model card); examples and images stay.
ALLOW_PATTERNS = ["*.yaml", "*.json", "*.pt", "*.txt", "*.md"]
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_COMMIT = re.compile(r"[0-9a-f]{40}")

Progress = Callable[[str], None]


class DownloadError(RuntimeError):
    """The hub could not be reached, refused, or sent something else than it listed."""


class HubStalled(RuntimeError):
    """Too many stalled attempts in a row: the hub took the requests and sent nothing back.

    Not a timeout type of either client, so neither retries it: it ends the download at once.
    """


class _StallMeter:
    """Stalled attempts in a row (no byte for ``timeout_s``), whoever retries: the client or us.

    ``huggingface_hub`` requests report here through :func:`_hf_metered` (each timed-out request, each byte);
    ModelScope's inner retries are lowered to one attempt, so :func:`download_model` reports each of its
    attempts that timed out without a byte. Any byte resets the count; ``budget`` stalls in a row raise
    :class:`HubStalled`.
    """

    def __init__(self, budget: int, timeout_s: float) -> None:
        self.budget = max(1, budget)
        self.timeout_s = timeout_s
        self.in_a_row = 0
        self.stalls = 0  # every stall so far (an attempt checks whether its stall was counted already)
        self.received = 0  # file bytes received so far (Hugging Face)
        self._lock = threading.Lock()

    def moved(self, nbytes: int = 0) -> None:
        with self._lock:
            self.in_a_row = 0
            self.received += nbytes

    def stalled(self, what: str, cause: BaseException | None = None) -> None:
        with self._lock:
            self.in_a_row += 1
            self.stalls += 1
            n = self.in_a_row
        log.info("stalled (no byte for %g s): %s (%d of %d in a row)", self.timeout_s, what, n, self.budget)
        if n >= self.budget:
            raise HubStalled(f"the hub stalled: no byte for {self.timeout_s:g} s, {n} attempts in a row "
                             f"(last: {what})") from cause


@dataclass(frozen=True)
class DownloadSettings:
    """How patient a download is: with silence, not with the size of the file."""

    timeout_s: float = 60.0  # no byte for this long: the client abandons the connection and resumes
    # Whole-snapshot retries after a 429/5xx or a lost connection the client gave up on (an attempt that
    # moved bytes is not counted); and retries + 1 stalled attempts in a row, the clients' and ours
    # together, give up on a silent hub.
    retries: int = 4
    backoff_s: float = 2.0  # first pause between those retries; doubles, at most 60 s
    offline: bool | None = None  # None: HF_HUB_OFFLINE or EMOTION_EXPORT_OFFLINE


def offline_mode() -> bool:
    """Whether the environment asks for no hub traffic (served from the caches only)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "EMOTION_EXPORT_OFFLINE"))


def hub_name(hub: str) -> str:
    """``hf``/``ms`` (or the full names) to ``huggingface``/``modelscope``; ValueError otherwise."""
    try:
        return HUB_ALIASES[hub.lower()]
    except KeyError:
        raise ValueError(f"unknown hub {hub!r}: choose hf (Hugging Face) or ms (ModelScope)") from None


def _say(progress: Progress | None, message: str) -> None:
    log.info("%s", message)
    if progress is not None:
        progress(message)


def read_download_record(directory: Path) -> dict[str, Any] | None:
    """The provenance record of a downloaded snapshot directory, or None for any other directory."""
    try:
        record = json.loads((Path(directory) / DOWNLOAD_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Listed:
    """A file as the hub lists it: what the downloaded copy must match."""

    path: str
    size: int | None
    sha256: str | None  # LFS files on Hugging Face, every file on ModelScope
    git_oid: str | None = None  # plain (non-LFS) files on Hugging Face


@dataclass(frozen=True)
class _Snapshot:
    directory: Path
    commit: str | None
    listed: tuple[_Listed, ...]  # empty offline: the record written at download time is the reference


def _wanted(path: str) -> bool:
    return "/" not in path and any(path.endswith(p[1:]) for p in ALLOW_PATTERNS)


# -- Hugging Face -------------------------------------------------------------------------------------


@contextmanager
def _hf_metered(meter: _StallMeter) -> Iterator[None]:
    """Every ``huggingface_hub`` request of the block waits at most ``timeout_s`` and reports to ``meter``.

    The library's API calls (``repo_info``, ``list_repo_tree``) pass ``timeout=None``, which httpx reads as
    "wait forever", and its ``http_backoff``/``http_get`` retry a timed-out request five times each. So the
    shared client's transports are wrapped (through the library's own ``set_client_factory``): each request's
    connect/read/write/pool timeouts become ``timeout_s``, a request or a body read that times out before a
    byte counts as a stall, and every byte read resets the count.
    """
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    timeout = meter.timeout_s

    class Body(httpx2.SyncByteStream):
        def __init__(self, inner: Any, url: str, data: bool) -> None:
            self.inner, self.url, self.data = inner, url, data

        def __iter__(self) -> Iterator[bytes]:
            try:
                for chunk in self.inner:
                    meter.moved(len(chunk) if self.data else 0)
                    yield chunk
            except httpx2.TimeoutException as exc:
                meter.stalled(f"reading {self.url}", exc)
                raise

        def close(self) -> None:
            self.inner.close()

    class Metered(httpx2.BaseTransport):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            request.extensions["timeout"] = dict.fromkeys(("connect", "read", "write", "pool"), timeout)
            url = f"{request.method} {request.url}"
            try:
                response = self.inner.handle_request(request)
            except httpx2.TimeoutException as exc:
                meter.stalled(url, exc)
                raise
            meter.moved()  # an answer, whatever its status: the hub is not silent
            # File bytes (``/resolve/``, 2xx) are progress; a listing fetched again on every attempt, or the
            # body of an error answer, is not.
            data = "/resolve/" in request.url.path and 200 <= response.status_code < 300
            response.stream = Body(response.stream, url, data)
            return response

        def close(self) -> None:
            self.inner.close()

    previous = _http._GLOBAL_CLIENT_FACTORY

    def factory() -> Any:
        client = previous()
        # Also the proxy transports httpx mounts from HTTPS_PROXY/ALL_PROXY, which serve those URLs instead.
        client._transport = Metered(client._transport)
        client._mounts = {pattern: None if t is None else Metered(t) for pattern, t in client._mounts.items()}
        return client

    set_client_factory(factory)  # closes the shared client: the next request builds a metered one
    try:
        yield
    finally:
        set_client_factory(previous)


def _hf_download(repo_id: str, revision: str, settings: DownloadSettings, offline: bool,
                 progress: Progress | None, meter: _StallMeter) -> _Snapshot:
    if offline:
        return _hf_snapshot(repo_id, revision, settings, offline, progress)
    with _hf_metered(meter):
        return _hf_snapshot(repo_id, revision, settings, offline, progress)


def _hf_snapshot(repo_id: str, revision: str, settings: DownloadSettings, offline: bool,
                 progress: Progress | None) -> _Snapshot:
    from huggingface_hub import HfApi, constants, snapshot_download

    # Read per request (the metered transport enforces timeout_s on every request in any case).
    constants.HF_HUB_DOWNLOAD_TIMEOUT = settings.timeout_s  # type: ignore[assignment]
    constants.HF_HUB_ETAG_TIMEOUT = settings.timeout_s  # type: ignore[assignment]
    # The library reads HF_ENDPOINT, HF_HOME/HF_HUB_CACHE and HF_HUB_OFFLINE once, at import; here they are
    # read per download, so a long-lived process follows the environment. HF_TOKEN it reads per request.
    constants.HF_HUB_OFFLINE = offline
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT
    cache = _hf_cache()
    if offline:
        directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                           cache_dir=cache, endpoint=endpoint, local_files_only=True))
        return _Snapshot(directory, directory.name, ())
    api = HfApi(endpoint=endpoint)
    commit = (revision if _COMMIT.fullmatch(revision)
              else api.repo_info(repo_id, revision=revision, timeout=settings.timeout_s).sha)
    listed = _hf_listing(api, repo_id, str(commit))
    _continue_leftovers(api, repo_id, str(commit), listed, progress)
    directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                       cache_dir=cache, endpoint=endpoint, etag_timeout=settings.timeout_s))
    if directory.name != commit:  # the branch moved between the listing and the download
        commit = directory.name
        listed = _hf_listing(api, repo_id, commit)
    return _Snapshot(directory, str(commit), listed)


def _hf_cache() -> str:
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return str(constants.HF_HUB_CACHE)


def _hf_listing(api: Any, repo_id: str, commit: str) -> tuple[_Listed, ...]:
    from huggingface_hub.hf_api import RepoFile

    out = []
    for entry in api.list_repo_tree(repo_id, revision=commit, recursive=True):
        if isinstance(entry, RepoFile) and _wanted(entry.path):
            lfs = entry.lfs
            out.append(_Listed(entry.path, entry.size, lfs.sha256 if lfs is not None else None,
                               None if lfs is not None else entry.blob_id))
    return tuple(out)


def _continue_leftovers(api: Any, repo_id: str, commit: str, listed: tuple[_Listed, ...],
                        progress: Progress | None) -> None:
    """Continue the ``<etag>.<random>.incomplete`` files a killed ``huggingface_hub`` process left.

    The library names each attempt's file after the process (see ``_download_to_tmp_and_move``) and deletes
    it only when the process lives to see the failure, so after a ``kill -9`` (an OOM kill, a pod eviction)
    the bytes sit in the cache and the next run starts from zero. Here the longest leftover of each blob is
    continued with a ``Range`` request (the library's ``http_get``), checked, and moved to where the library
    looks first: ``snapshot_download`` then finds the blob and only links it.
    """
    from filelock import FileLock
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils._headers import build_hf_headers

    storage = Path(_hf_cache()) / repo_folder_name(repo_id=repo_id, repo_type="model")
    blobs = storage / "blobs"
    if not blobs.is_dir():
        return
    by_etag = {str(f.sha256 or f.git_oid): f for f in listed if f.sha256 or f.git_oid}
    for etag, file in by_etag.items():
        leftovers = sorted(blobs.glob(f"{etag}.*.incomplete"), key=lambda p: p.stat().st_size, reverse=True)
        if not leftovers or (blobs / etag).exists() or file.size is None:
            continue
        keep, stale = leftovers[0], leftovers[1:]
        lock = storage.parent / ".locks" / storage.name / f"{etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            for path in stale:
                path.unlink(missing_ok=True)
            have = keep.stat().st_size
            if have > file.size:
                keep.unlink()
                continue
            _say(progress, f"{file.path}: continuing the {have / 1e6:.1f} MB an interrupted run left "
                           f"({keep.name})")
            url = hf_hub_url(repo_id, file.path, revision=commit, endpoint=api.endpoint)
            with keep.open("ab") as fh:
                http_get(url, fh, resume_size=have, headers=build_hf_headers(token=api.token),
                         expected_size=file.size, displayed_filename=file.path)
            os.replace(keep, blobs / etag)  # the digest is checked with every other file afterwards


# -- ModelScope --------------------------------------------------------------------------------------


#: ModelScope's network waits (seconds; whole numbers): each follows the stall timeout.
_MS_TIMEOUTS = {"API_TIMEOUT": "MODELSCOPE_API_TIMEOUT",
                "API_CONNECT_TIMEOUT": "MODELSCOPE_API_CONNECT_TIMEOUT",
                "DOWNLOAD_TIMEOUT": "MODELSCOPE_DOWNLOAD_TIMEOUT",
                "REPO_TREE_PAGE_TIMEOUT_SECONDS": "MODELSCOPE_REPO_TREE_PAGE_TIMEOUT_SECONDS"}
#: ModelScope's own retry layers, lowered to a single attempt: ours retries (and counts the stalls).
_MS_ATTEMPTS = {"REPO_TREE_PAGE_MAX_ATTEMPTS": ("MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS", 1),
                "DOWNLOAD_RETRY_TIMES": ("MODELSCOPE_DOWNLOAD_MAX_RETRIES", 0),
                "API_MAX_RETRIES": (None, 0)}  # its variable takes no 0; the constant does


def _modelscope_limits(timeout_s: float) -> None:
    """The stall timeout on every ModelScope wait, one attempt per request, and no per-file deadline.

    ``modelscope_hub`` reads its MODELSCOPE_* variables into module constants at import, and other modules
    copy them (``from .constants import ...``), some into function defaults (``LegacyClient(timeout=,
    max_retries=)``). So both are set: the variables, for a first import, and every copy in the modules
    already imported, whatever imported them first.
    """
    stall = max(1, math.ceil(timeout_s))
    total = int(os.environ.setdefault("MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT", str(10**9)))
    values: dict[str, int] = {"DOWNLOAD_TOTAL_TIMEOUT": total}
    for name, variable in _MS_TIMEOUTS.items():
        os.environ[variable] = str(stall)
        values[name] = stall
    for name, (attempts_variable, count) in _MS_ATTEMPTS.items():
        if attempts_variable:
            os.environ[attempts_variable] = str(count)
        values[name] = count
    import modelscope_hub._legacy_api  # noqa: F401  # the modules that copy the constants, imported now

    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith(("modelscope_hub", "modelscope.hub")):
            continue
        for name, value in values.items():
            if isinstance(getattr(module, name, None), int):
                setattr(module, name, value)
    from modelscope_hub._legacy_api import LegacyClient

    init = LegacyClient.__init__  # its defaults were bound at import: timeout=API_TIMEOUT, max_retries=...
    names = [p.name for p in inspect.signature(init).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty]
    old = init.__defaults__ or ()
    if len(names) == len(old) and {"timeout", "max_retries"} <= set(names):
        new = {"timeout": stall, "max_retries": 0}
        init.__defaults__ = tuple(new.get(n, d) for n, d in zip(names, old, strict=True))


def _ms_download(repo_id: str, revision: str, settings: DownloadSettings, offline: bool,
                 progress: Progress | None, meter: _StallMeter) -> _Snapshot:
    _modelscope_limits(settings.timeout_s)
    from modelscope import snapshot_download  # type: ignore[import-untyped]
    from modelscope_hub import HubApi, set_default_config

    # The client keeps one configuration per process (endpoint from MODELSCOPE_ENDPOINT/MODELSCOPE_DOMAIN,
    # MODELSCOPE_CACHE, MODELSCOPE_API_TOKEN), made at first use; dropped here so that each download follows
    # the environment of its time, as on Hugging Face above.
    set_default_config(None)

    if offline:
        directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                           local_files_only=True))
        return _Snapshot(directory, None, ())
    # The listing the client downloads from, raw: the commit comes per file (Files[].Revision), with Sha256
    # (the typed list_repo_files and the compat get_model_files drop Revision).
    files = HubApi().legacy.list_repo_files(repo_id=repo_id, repo_type="model", revision=revision,
                                            recursive=True)
    listed = []
    commits = set()
    for entry in files:
        path = str(entry.get("Path") or entry.get("Name") or "")
        if entry.get("Type", "blob") != "blob" or not _wanted(path):
            continue
        size = entry.get("Size")
        listed.append(_Listed(path, int(size) if size is not None else None, entry.get("Sha256") or None))
        if entry.get("Revision"):
            commits.add(str(entry["Revision"]))
    directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    commit = commits.pop() if len(commits) == 1 else None
    return _Snapshot(directory, commit, tuple(listed))


# -- the common part ---------------------------------------------------------------------------------


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes, and the per-file failures a ModelScope snapshot collects (``failed_files``)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current: BaseException | None = pending.pop(0)
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            yield current
            failed = getattr(current, "failed_files", None)
            if isinstance(failed, dict):
                pending.extend(e for e in failed.values() if isinstance(e, BaseException))
            current = current.__cause__ or current.__context__


def _retryable(exc: BaseException) -> bool:
    """A 429/5xx answer, or a connection the client lost and gave up on: worth another try later."""
    for cause in _causes(exc):
        status = _status_of(cause)
        if status is not None:
            return status in RETRYABLE_STATUS
        text = str(cause)
        if re.search(r"\b(429|50[0-4])\b", text) and ("HTTP" in text or "Server" in text or "status" in text):
            return True
        if isinstance(cause, (ConnectionError, TimeoutError)) or type(cause).__name__ in (
            "ConnectError", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError", "NetworkError",
            "RequestTimeoutError", "ChunkedEncodingError", "ReadError",
        ):
            return True
    return False


_TIMEOUT_TYPES = ("ReadTimeout", "ConnectTimeout", "WriteTimeout", "PoolTimeout", "TimeoutException",
                  "RequestTimeoutError", "_DownloadDeadlineError", "Timeout")


def _timed_out(exc: BaseException) -> bool:
    """Whether the failure was a wait that ran out (no byte in time), not an answer or a reset."""
    return any(isinstance(c, TimeoutError) or type(c).__name__ in _TIMEOUT_TYPES for c in _causes(exc))


def _moved_so_far(hub: str, meter: _StallMeter) -> int:
    """Bytes received so far: counted by the metered transport (Hugging Face), or found in the cache.

    ModelScope writes what it receives into ``<file>.incomplete`` in its cache (kept for resuming), so the
    size of the cache tells whether an attempt received bytes before it failed.
    """
    if hub == "huggingface":
        return meter.received
    root = Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope")
    total = 0
    for base, _dirs, files in os.walk(root):
        for name in files:
            with suppress(OSError):
                total += os.stat(os.path.join(base, name)).st_size
    return total


def _verify(snapshot: _Snapshot, hub: str) -> dict[str, dict[str, Any]]:
    """Every listed file present, of the listed size and digest; returns ``{path: {size, sha256}}``.

    A mismatching file is removed from the cache (through the snapshot link, the blob itself) so that the
    next run downloads it again instead of trusting it.
    """
    directory = snapshot.directory
    if not snapshot.listed:
        record = read_download_record(directory)
        if record is None:
            raise DownloadError(f"{directory}: a cached snapshot without {DOWNLOAD_RECORD} (downloaded by "
                                "another tool): download once online, or pass the directory as --source")
        reference = [_Listed(p, d.get("size"), d.get("sha256")) for p, d in record.get("files", {}).items()]
    else:
        reference = list(snapshot.listed)
    if not reference:
        raise DownloadError(f"{hub} lists no checkpoint files ({', '.join(ALLOW_PATTERNS)}) at this revision")
    digests: dict[str, dict[str, Any]] = {}
    for file in reference:
        path = directory / file.path
        if not path.is_file():
            raise DownloadError(f"{file.path}: listed by {hub} but missing from {directory}")
        size = path.stat().st_size
        sha = _sha256(path)
        problem = None
        if file.size is not None and size != file.size:
            problem = f"{size} bytes, the hub lists {file.size}"
        elif file.sha256 and sha != file.sha256.lower():
            problem = f"SHA-256 {sha} differs from the hub's {file.sha256}"
        elif file.git_oid and _git_blob_id(path) != file.git_oid.lower():
            problem = f"git blob id {_git_blob_id(path)} differs from the hub's {file.git_oid}"
        if problem:
            target = path.resolve()
            path.unlink(missing_ok=True)
            if target != path:
                target.unlink(missing_ok=True)
            raise DownloadError(f"{file.path}: {problem}: refused and removed from the cache ({hub}, "
                                f"{directory}); running again downloads it anew")
        digests[file.path] = {"size": size, "sha256": sha}
    return digests


def _resolve(model_id: str, revision: str | None, hub: str | None) -> tuple[str, str, str, str, bool]:
    """(model name, hub, repository id, revision, whether the revision is the pinned default)."""
    text = model_id.strip().strip("/")
    if not text:
        raise DownloadError("empty model id")
    name = text.split("/")[-1]
    pin = PINS.get(name)
    if "/" not in text and pin is None:
        raise DownloadError(f"unknown model id {model_id!r}: use one of {', '.join(MODEL_NAMES)}, or a "
                            "repository id owner/name with --hub and --revision")
    owner_hub = next((h for ids in REPO_IDS.values() for h, rid in ids.items() if rid == text), None)
    chosen = hub_name(hub) if hub else (owner_hub or (pin.hub if pin else "modelscope"))
    repo_id = text if "/" in text else REPO_IDS[name][chosen]
    if revision:
        return name, chosen, repo_id, revision, False
    if pin is not None and pin.hub == chosen and repo_id == REPO_IDS[name][chosen]:
        return name, chosen, repo_id, pin.revision, True
    return name, chosen, repo_id, DEFAULT_BRANCH[chosen], True


def _tokens(directory: Path) -> list[str] | None:
    path = directory / "tokens.txt"
    conf = directory / "configuration.json"
    try:
        metas = {}
        if conf.is_file():
            metas = json.loads(conf.read_text(encoding="utf-8")).get("file_path_metas", {})
        named = (metas.get("tokenizer_conf") or {}).get("token_list")
        if named:
            path = directory / str(named)
    except (OSError, ValueError, AttributeError):
        pass
    if not path.is_file():
        return None
    return [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]


def _check_labels(name: str, directory: Path, commit: str | None, revision: str, require: int | None,
                  progress: Progress | None) -> None:
    tokens = _tokens(directory)
    if tokens is None:
        if require:
            raise LabelCountError(f"{name}: no tokens.txt (no classifier head); --require-labels asks for "
                                  f"{require}")
        return
    warning = check_labels(name, labels_from_tokens(tokens), revision=commit or revision, require=require)
    if warning:
        log.warning("%s", warning)
        if progress is not None:
            progress(f"WARNING: {warning}")


def _materialise(directory: Path, out: Path) -> Path:
    """Real files (no cache links) in ``out``: a directory to copy to an offline machine as it is."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.endswith(".incomplete"):
            continue
        target = out / path.name
        source = path.resolve()
        tmp = target.with_name(target.name + ".copying")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return out


def download_model(
    model_id: str,
    revision: str | None = None,
    hub: str | None = None,
    settings: DownloadSettings | None = None,
    progress: Progress | None = None,
    out: Path | None = None,
    require_labels: int | None = None,
) -> Path:
    """Download ``model_id`` (a known name, or ``owner/name``) into the hub's cache; return its directory.

    ``revision`` None: the pin of a known model (:data:`PINS`), else the hub's default branch, resolved now
    and recorded. ``hub`` None: the pinned hub of a known model, else ModelScope. ``out``: also place the
    files (hard links or copies, no cache links) in ``out`` and return that. Raises DownloadError (and
    ``LabelCountError`` when fewer labels than ``require_labels`` are enabled).
    """
    settings = settings or DownloadSettings()
    name, chosen, repo_id, rev, pinned = _resolve(model_id, revision, hub)
    offline = offline_mode() if settings.offline is None else settings.offline
    fetch = _hf_download if chosen == "huggingface" else _ms_download
    endpoint = _endpoint(chosen)
    _say(progress, f"{'offline, from the cache:' if offline else 'downloading'} {chosen} {repo_id}@{rev} "
                   f"({endpoint})")
    meter = _StallMeter(settings.retries + 1, settings.timeout_s)
    attempt = failures = 0  # retries used (429/5xx, resets); failures in a row (for the backoff)
    while True:
        stalls, moved = meter.stalls, _moved_so_far(chosen, meter)
        try:
            snapshot = fetch(repo_id, rev, settings, offline, progress, meter)
            digests = _verify(snapshot, chosen)
            break
        except DownloadError:
            raise
        except Exception as exc:  # the clients raise their own types (and OSError, ValueError)
            stalled = next((c for c in _causes(exc) if isinstance(c, HubStalled)), None)
            retry = stalled is None and not offline and _retryable(exc)
            progressed = retry and _moved_so_far(chosen, meter) > moved
            if progressed:  # a drop or a stall mid-file: continued, not counted
                meter.moved()
                failures = 0
            elif retry and _timed_out(exc):
                failures += 1
                if meter.stalls == stalls:  # ModelScope's single attempt (the Hugging Face transport counts)
                    try:
                        meter.stalled(f"{type(exc).__name__}: {str(exc)[:200]}", exc)
                    except HubStalled as counted:
                        stalled = counted
            elif retry:  # a 429/5xx or a reset with nothing received
                failures += 1
                attempt += 1
                retry = attempt <= settings.retries
            if stalled is not None:
                raise DownloadError(f"{chosen} {repo_id}@{rev}: {stalled} ({_endpoint(chosen)}). Running "
                                    "again continues what was downloaded.") from exc
            if not retry:
                hint = ("" if offline else " Running again continues what was downloaded.")
                raise DownloadError(f"{chosen} {repo_id}@{rev}: {type(exc).__name__}: {str(exc)[:500]}.{hint}"
                                    ) from exc
            pause = min(settings.backoff_s * 2 ** (failures - 1), 60.0) if failures else 0.0
            _say(progress, f"{chosen} {repo_id}@{rev}: {type(exc).__name__}: {str(exc)[:200]}; "
                           f"{'received bytes, continuing' if progressed else 'retrying'} in {pause:g} s "
                           f"(retries {attempt}/{settings.retries}, stalls in a row {meter.in_a_row}/"
                           f"{meter.budget})")
            time.sleep(pause)
    directory = snapshot.directory
    previous = read_download_record(directory) or {}
    commit = snapshot.commit or previous.get("commit")
    record = {
        "hub": chosen,
        "endpoint": previous.get("endpoint") if offline else endpoint,
        "repo_id": repo_id,
        "revision": rev,
        "pinned_default": pinned,
        "commit": commit,
        "files": digests,
    }
    if not offline or not previous:
        (directory / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _say(progress, f"{len(digests)} files verified ({sum(d['size'] for d in digests.values()) / 1e6:.1f} MB) "
                   f"in {directory}, commit {commit or 'unknown'}")
    _check_labels(name, directory, commit, rev, require_labels, progress)
    return _materialise(directory, Path(out)) if out is not None else directory


def _endpoint(hub: str) -> str:
    if hub == "huggingface":
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if os.environ.get("MODELSCOPE_ENDPOINT"):
        return os.environ["MODELSCOPE_ENDPOINT"].rstrip("/")
    domain = os.environ.get("MODELSCOPE_DOMAIN", "www.modelscope.cn")
    return (domain if domain.startswith(("http://", "https://")) else f"https://{domain}").rstrip("/")

