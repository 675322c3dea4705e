"""The archive journal (append-only JSONL, fsync'ed per recording) and the summary files built from it.

See ``schema.py`` for the formats. The journal is the source of truth; the summary (CSV, JSONL or Parquet)
is rebuilt from it at the end of a run and at the start of a resumed one.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .schema import FORMATS, JOURNAL_SUFFIX, JOURNAL_VERSION, column_types, columns, row_key

__all__ = [
    "EmbeddingSink",
    "Entry",
    "Journal",
    "LiveSummary",
    "journal_path",
    "read_journal",
    "read_summary",
    "summary_rows",
    "write_embeddings",
    "write_summary",
]

_JOURNAL_ONLY = ("embedding_offset", "embedding_dim")


def journal_path(summary: str | Path) -> Path:
    return Path(str(summary) + JOURNAL_SUFFIX)


def check_format(summary: str | Path) -> str:
    suffix = Path(summary).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"--summary {summary}: the suffix picks the format, one of {', '.join(FORMATS)}")
    return suffix


def _fsync(f: IO[Any]) -> None:
    f.flush()
    os.fsync(f.fileno())


class Journal:
    """Appends one line per finished recording; each line is flushed and fsync'ed before ``append``
    returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # A torn last line (a kill mid-write) must not swallow the next record: start on a fresh line.
        torn = path.exists() and path.stat().st_size > 0 and not _ends_with_newline(path)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if torn:
            self._file.write("\n")

    def append(
        self, path: str, size: int | None, fingerprint: str | None, rows: list[dict[str, Any]]
    ) -> None:
        record = {"v": JOURNAL_VERSION, "path": path, "size": size, "fingerprint": fingerprint, "rows": rows}
        line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_json_default)
        self._file.write(line + "\n")
        _fsync(self._file)

    def close(self) -> None:
        self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass(frozen=True)
class Entry:
    """One recording's latest journal record, kept as its line (a parsed record costs ~10x the memory)."""

    line: str
    size: int | None
    fingerprint: str | None
    ok: bool

    def rows(self) -> list[dict[str, Any]]:
        """The record's rows, sorted by channel."""
        rows: list[dict[str, Any]] = json.loads(self.line)["rows"]
        return sorted(rows, key=row_key)


def read_journal(path: Path) -> dict[str, Entry]:
    """Path -> its latest journal record (later lines replace earlier ones; torn lines are skipped)."""
    records: dict[str, Entry] = {}
    if not path.exists():
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the torn last line of a killed run
            if not (isinstance(record, dict) and record.get("v") == JOURNAL_VERSION and "rows" in record):
                continue
            ok = bool(record["rows"]) and all(r.get("status") == "ok" for r in record["rows"])
            records[str(record["path"])] = Entry(line, record.get("size"), record.get("fingerprint"), ok)
    return records


def summary_rows(records: dict[str, Entry]) -> Iterator[dict[str, Any]]:
    """Every row of the journal's records, sorted by ``(path, channel)`` (parsed one record at a time)."""
    for path in sorted(records):
        yield from records[path].rows()


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _public(row: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {name: row.get(name) for name in names}


def _atomic(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp")


def write_summary(path: Path, rows: Iterable[dict[str, Any]], labels: list[str]) -> int:
    """Write the whole summary (atomically: a temporary file renamed over ``path``)."""
    suffix = check_format(path)
    names = columns(labels)
    tmp = _atomic(path)
    if suffix == ".parquet":
        count = _write_parquet(tmp, rows, labels)
    else:
        count = 0
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            sink = LiveSummary(f, suffix, names, header=True)
            for row in rows:
                sink.write(row)
                count += 1
            _fsync(f)
    os.replace(tmp, path)
    return count


def _write_parquet(path: Path, rows: Iterable[dict[str, Any]], labels: list[str], batch: int = 10_000) -> int:
    import pyarrow as pa  # optional (the `archive` extra): only Parquet summaries need it
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    schema = pa.schema([(name, types[kind]) for name, kind in column_types(labels).items()])
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        pending: list[dict[str, Any]] = []
        for row in rows:
            pending.append(_public(row, schema.names))
            if len(pending) >= batch:
                writer.write_table(pa.Table.from_pylist(pending, schema=schema))
                count += len(pending)
                pending = []
        # Always one batch, even empty, so that a summary of no rows still has its schema.
        writer.write_table(pa.Table.from_pylist(pending, schema=schema))
        count += len(pending)
    return count


class LiveSummary:
    """A CSV or JSONL summary appended to as each recording finishes (flushed, not fsync'ed: the journal
    is what survives a crash; the rebuild at the end repairs a torn line)."""

    @classmethod
    def append_to(cls, path: Path, labels: list[str]) -> LiveSummary:
        suffix = check_format(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = not path.exists() or path.stat().st_size == 0
        f = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
        return cls(f, suffix, columns(labels), header)

    def __init__(self, f: IO[str], suffix: str, names: list[str], header: bool) -> None:
        self._file = f
        self._suffix = suffix
        self._names = names
        self._csv = csv.DictWriter(f, fieldnames=names, extrasaction="ignore") if suffix == ".csv" else None
        if self._csv is not None and header:
            self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        public = _public(row, self._names)
        if self._csv is not None:
            self._csv.writerow({k: _cell(v) for k, v in public.items()})
        else:
            self._file.write(json.dumps(public, ensure_ascii=False, default=_json_default) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_summary(path: Path) -> list[dict[str, Any]]:
    """The rows of a summary file in any of the three formats (CSV cells are strings; empty = missing)."""
    suffix = check_format(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # optional (the `archive` extra)

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    with open(path, encoding="utf-8", newline="") as f:
        if suffix == ".csv":
            return list(csv.DictReader(f))
        return [json.loads(line) for line in f if line.strip()]


class EmbeddingSink:
    """Appends float32 embeddings to ``E.npy.journal.f32``; returns each one's byte offset."""

    def __init__(self, npy: Path) -> None:
        npy.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(str(npy) + ".journal.f32")
        self._file = open(self.path, "ab")  # noqa: SIM115 (closed by close())

    def append(self, vector: np.ndarray[Any, Any]) -> int:
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(vector, dtype="<f4").tobytes())
        _fsync(self._file)
        return offset

    def close(self) -> None:
        self._file.close()


def _embedding_rows(rows: Iterable[dict[str, Any]], raw: Path) -> Iterator[np.ndarray[Any, Any] | None]:
    data = np.memmap(raw, dtype="<f4", mode="r") if raw.exists() and raw.stat().st_size else None
    for row in rows:
        offset, dim = row.get("embedding_offset"), row.get("embedding_dim")
        if data is None or offset is None or dim is None or (offset + 4 * dim) > data.size * 4:
            yield None
        else:
            yield np.asarray(data[offset // 4 : offset // 4 + dim])


def write_embeddings(npy: Path, records: dict[str, Entry]) -> int:
    """Write ``E.npy`` (row i = summary row i; NaN where a row has no embedding) and ``E.index.csv``;
    return the embedding dimension (0 when no row has one)."""
    raw = Path(str(npy) + ".journal.f32")
    keep = ("path", "channel", "status", *_JOURNAL_ONLY)
    rows = [{k: r.get(k) for k in keep} for r in summary_rows(records)]
    dim = max((int(r.get("embedding_dim") or 0) for r in rows), default=0)
    out = np.full((len(rows), dim), math.nan, dtype=np.float32)
    for i, vector in enumerate(_embedding_rows(rows, raw)):
        if vector is not None and vector.size == dim:
            out[i] = vector
    tmp = _atomic(npy)
    with open(tmp, "wb") as f:
        np.save(f, out)
    os.replace(tmp, npy)
    index = npy.with_name(npy.stem + ".index.csv")
    tmp = _atomic(index)
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path", "channel", "status"])
        for i, row in enumerate(rows):
            writer.writerow([i, row["path"], row["channel"], row["status"]])
    os.replace(tmp, index)
    return dim
