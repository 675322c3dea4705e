"""Which recordings an archive run covers: files, folders (recursive), glob patterns, ``--from-list`` files,
and object-store URLs (``s3://``, ``gs://``... through fsspec, an optional dependency); and the shard each
falls in.

A :class:`Source` is small (a path and three scalars), and listing never opens a file, so 100,000 listed
paths cost a few tens of MB.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audio import AUDIO_EXTENSIONS

__all__ = ["Source", "expand_inputs", "in_shard", "is_url", "parse_shard", "read_list", "read_source"]

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    """One recording: ``path`` as listed (local path or URL), its size, and the ``fingerprint`` that tells
    a changed file from the same one on ``--resume`` (``None`` fields: not known, e.g. the file is missing;
    reading it later gives the error row)."""

    path: str
    size: int | None
    fingerprint: str | None

    @property
    def is_url(self) -> bool:
        return is_url(self.path)


def is_url(path: str) -> bool:
    return bool(_URL.match(path)) and not path.startswith("file://")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ValueError(f"--shard wants I/N (e.g. 0/3), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return i, n


def in_shard(path: str, shard: tuple[int, int] | None) -> bool:
    """Whether ``path`` falls in shard ``(I, N)``: a stable hash of the path string (the same on every
    machine and Python run, unlike ``hash``), modulo N."""
    if shard is None:
        return True
    i, n = shard
    digest = hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n == i


def _local_source(path: str) -> Source:
    try:
        st = os.stat(path)
    except OSError:
        return Source(path, None, None)
    return Source(path, st.st_size, str(st.st_mtime_ns))


def _fs_fingerprint(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "md5Hash", "md5", "crc32c", "checksum"):
        value = info.get(key)
        if value:
            return f"{key}:{str(value).strip(chr(34))}"
    for key in ("LastModified", "mtime", "updated", "last_modified"):
        value = info.get(key)
        if value:
            return f"{key}:{value}"
    return None


def _url_sources(url: str) -> Iterator[Source]:
    import fsspec  # optional (the `archive` extra): only object-store URLs need it

    fs, _, paths = fsspec.get_fs_token_paths(url)
    protocol = url.split("://", 1)[0]

    def unstrip(p: str) -> str:
        return p if is_url(p) else f"{protocol}://{p}"

    if any(c in url for c in _GLOB_CHARS):
        infos = {p: fs.info(p) for p in paths}
    elif fs.isdir(paths[0]):
        infos = fs.find(paths[0], detail=True)
        infos = {p: i for p, i in infos.items() if os.path.splitext(p)[1].lower() in AUDIO_EXTENSIONS}
    else:
        infos = {paths[0]: fs.info(paths[0])}
    for p in sorted(infos):
        info = infos[p]
        if info.get("type") == "directory":
            continue
        size = info.get("size")
        yield Source(unstrip(p), None if size is None else int(size), _fs_fingerprint(info))


def _is_audio(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def _expand_one(item: str) -> Iterator[Source]:
    if is_url(item):
        yield from _url_sources(item)
        return
    if item.startswith("file://"):
        item = item[len("file://"):]
    if os.path.isdir(item):
        for root, dirs, files in os.walk(item):
            dirs.sort()
            for name in sorted(files):
                if _is_audio(name):
                    yield _local_source(os.path.join(root, name))
    elif not os.path.exists(item) and any(c in item for c in _GLOB_CHARS):
        for match in sorted(glob.glob(item, recursive=True)):
            if os.path.isdir(match):
                yield from _expand_one(match)
            elif _is_audio(match):
                yield _local_source(match)
    else:
        # Listed explicitly: kept even when missing or unreadable (its row then names the problem).
        yield _local_source(item)


def read_list(path: str) -> Iterator[str]:
    """The entries of a ``--from-list`` file (``-``: stdin): one path or URL a line; blank lines and
    ``#`` comments skipped."""
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    try:
        for line in stream:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield entry
    finally:
        if stream is not sys.stdin:
            stream.close()


def expand_inputs(items: Iterable[str], shard: tuple[int, int] | None = None) -> list[Source]:
    """Every recording named by ``items`` (each once, first listing wins), restricted to ``shard``.

    Listed paths are kept even when missing (they get an error row); a folder or pattern that matches
    nothing adds nothing. A missing folder given as an explicit input is an error of the whole run.
    """
    seen: set[str] = set()
    out: list[Source] = []
    for item in items:
        for source in _expand_one(item):
            if source.path in seen or not in_shard(source.path, shard):
                continue
            seen.add(source.path)
            out.append(source)
    return out


def read_source(source: Source) -> bytes:
    """The bytes of a recording (blocking: run it in a thread)."""
    if source.is_url:
        import fsspec  # optional (the `archive` extra)

        with fsspec.open(source.path, "rb") as f:
            data: bytes = f.read()
        return data
    return Path(source.path).read_bytes()
