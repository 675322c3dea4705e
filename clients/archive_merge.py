"""``emotion-client merge OUT SHARD...``: one summary from the summaries of ``--shard I/N`` runs.

The summaries (and their columns) are those of ``clients/archive/schema.py``; each shard may be in any of
the three formats (``.csv``, ``.jsonl``, ``.parquet``) and so may ``OUT``. A row's key is ``(path, channel)``:
a key found in two shards (overlapping shards, or the same shard given twice) is refused with an error naming
the keys and the files, and nothing is written. The merged rows are sorted by key, as a summary's rows are.

With ``--embeddings`` (one ``E.npy`` per shard, in the shards' order, each with its ``E.index.csv``) and
``--embeddings-out``, the shards' embedding matrices are merged too, row ``i`` the embedding of merged summary
row ``i``, with the merged ``.index.csv`` beside it (what ``emotion-client cluster`` reads).

Also the summary reader and writer of ``cluster``: typed rows (CSV cells converted by the schema's column
types; an empty cell is missing) in any format. Parquet needs pyarrow (the ``archive`` extra).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .archive.schema import FORMATS, SCORE_PREFIX, column_types, row_key

__all__ = [
    "DuplicateRowsError",
    "MergeReport",
    "Summary",
    "embedding_index_path",
    "merge_summaries",
    "read_embeddings",
    "read_summary",
    "write_embeddings",
    "write_summary",
]

Row = dict[str, Any]
Key = tuple[str, str]
#: Keys named in a duplicates error (the count says how many more there are).
_NAMED = 5


class DuplicateRowsError(ValueError):
    """The same ``(path, channel)`` in two shards (or twice in one)."""

    def __init__(self, duplicates: list[tuple[Key, str, str]]) -> None:
        self.duplicates = duplicates
        shown = "; ".join(f"{p} (channel {c}) in {a} and {b}" for (p, c), a, b in duplicates[:_NAMED])
        more = f"; and {len(duplicates) - _NAMED} more" if len(duplicates) > _NAMED else ""
        super().__init__(
            f"{len(duplicates)} recording(s) appear in more than one shard, refusing to merge "
            f"(were the shards run with the same --shard I/N?): {shown}{more}"
        )


@dataclass
class Summary:
    """A summary file's column names (in order) and its typed rows."""

    path: Path
    columns: list[str]
    rows: list[Row]

    @property
    def labels(self) -> list[str]:
        """The model's labels, from the ``score_<label>`` columns."""
        return [c[len(SCORE_PREFIX):] for c in self.columns if c.startswith(SCORE_PREFIX)]

    def types(self) -> dict[str, str]:
        """Column -> ``string``/``int64``/``float64``; columns the schema does not know are strings
        (``cluster`` is ``int64``)."""
        known = {**column_types(self.labels), "cluster": "int64"}
        return {c: known.get(c, "string") for c in self.columns}


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: a summary is one of {', '.join(FORMATS)} (got {suffix or 'no suffix'!r})")
    return suffix


#: String columns that are null on error rows (an empty CSV cell reads back as null there; elsewhere as
#: ``""``, a value: ``channel_name`` and ``flags`` are ``""`` when there is none).
_NULLABLE_STRINGS = frozenset({"label", "model_name", "model_version", "model_precision"})


def _typed(value: Any, kind: str, column: str) -> Any:
    """A cell as its column's type (CSV cells are strings; an empty cell is missing)."""
    if value is None or value == "":
        return "" if kind == "string" and column not in _NULLABLE_STRINGS else None
    if kind == "int64":
        return int(float(value)) if isinstance(value, str) else int(value)
    if kind == "float64":
        return float(value)
    return str(value)


def read_summary(path: str | os.PathLike[str]) -> Summary:
    """Read a summary in any of the three formats, cells converted to their column's type."""
    p = Path(path)
    suffix = _format(p)
    columns: list[str]
    raw: list[Row]
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # optional (the `archive` extra): only Parquet summaries need it

        table = pq.read_table(p)
        columns, raw = list(table.column_names), table.to_pylist()
    else:
        with open(p, encoding="utf-8", newline="") as f:
            if suffix == ".csv":
                reader = csv.DictReader(f)
                raw = list(reader)
                columns = list(reader.fieldnames or [])
            else:
                raw, seen = [], {}
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{p}:{n}: not a JSON line ({exc.msg})") from None
                    raw.append(row)
                    seen.update(dict.fromkeys(row))
                columns = list(seen)
    for needed in ("path", "channel"):
        if raw and needed not in columns:
            raise ValueError(f"{p}: not an archive summary (no {needed!r} column)")
    summary = Summary(p, columns, [])
    types = summary.types()
    summary.rows = [{c: _typed(r.get(c), types[c], c) for c in columns} for r in raw]
    return summary


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def write_summary(path: str | os.PathLike[str], summary: Summary) -> Path:
    """Write ``summary``'s rows to ``path`` (its suffix picks the format) through a temporary file renamed
    over it, so a reader never sees half a file."""
    p = Path(path)
    suffix = _format(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    if suffix == ".parquet":
        import pyarrow as pa  # optional (the `archive` extra)
        import pyarrow.parquet as pq

        arrow = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
        schema = pa.schema([(c, arrow[t]) for c, t in summary.types().items()])
        pq.write_table(pa.Table.from_pylist(summary.rows, schema=schema), tmp)
    else:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if suffix == ".csv":
                writer = csv.DictWriter(f, fieldnames=summary.columns, extrasaction="ignore")
                writer.writeheader()
                for row in summary.rows:
                    writer.writerow({c: _cell(row.get(c)) for c in summary.columns})
            else:
                for row in summary.rows:
                    f.write(json.dumps({c: row.get(c) for c in summary.columns}, ensure_ascii=False) + "\n")
    os.replace(tmp, p)
    return p


# ------------------------------------------------------------------------------------------------ embeddings


def embedding_index_path(npy: str | os.PathLike[str]) -> Path:
    """``E.npy`` -> ``E.index.csv`` (``row,path,channel,status``, aligned to the matrix's rows)."""
    p = Path(npy)
    return p.with_name(p.stem + ".index.csv")


def read_embeddings(npy: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], list[Key] | None]:
    """An embeddings matrix ``[rows, dim]`` and the ``(path, channel)`` of each row from its index file
    (None when there is no index file)."""
    matrix = np.load(Path(npy), allow_pickle=False)
    if matrix.ndim != 2:
        raise ValueError(f"{npy}: embeddings are a [rows, dim] matrix, got shape {matrix.shape}")
    index = embedding_index_path(npy)
    if not index.exists():
        return matrix.astype(np.float32, copy=False), None
    with open(index, encoding="utf-8", newline="") as f:
        keys = [(r["path"], r["channel"]) for r in csv.DictReader(f)]
    if len(keys) != matrix.shape[0]:
        raise ValueError(f"{index}: {len(keys)} rows, but {npy} has {matrix.shape[0]}")
    return matrix.astype(np.float32, copy=False), keys


def write_embeddings(
    npy: str | os.PathLike[str], matrix: npt.NDArray[np.float32], rows: Sequence[Row]
) -> Path:
    """Write ``E.npy`` and its ``E.index.csv`` (``row,path,channel,status`` of each matrix row)."""
    p = Path(npy)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(matrix, np.float32))
    os.replace(tmp, p)
    with open(embedding_index_path(p), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path", "channel", "status"])
        for i, row in enumerate(rows):
            writer.writerow([i, row.get("path"), row.get("channel"), row.get("status")])
    return p


# ------------------------------------------------------------------------------------------------ merge


@dataclass
class MergeReport:
    out: Path
    rows: int
    shards: int
    failed: int
    embeddings_out: Path | None = None


def merge_summaries(
    out: str | os.PathLike[str],
    shards: Sequence[str | os.PathLike[str]],
    *,
    embeddings: Sequence[str | os.PathLike[str]] = (),
    embeddings_out: str | os.PathLike[str] | None = None,
) -> MergeReport:
    """Concatenate shard summaries into ``out``, sorted by ``(path, channel)``; refuse duplicates.

    Raises :class:`DuplicateRowsError` when a key is in two shards, ``ValueError`` when the shards' columns
    differ (summaries of different models) or the embeddings do not line up with their summaries.
    Nothing is written unless the whole merge is valid.
    """
    if not shards:
        raise ValueError("merge needs at least one shard summary")
    if bool(embeddings) != (embeddings_out is not None):
        raise ValueError("--embeddings (one per shard) and --embeddings-out go together")
    if embeddings and len(embeddings) != len(shards):
        raise ValueError(f"{len(shards)} shard summaries but {len(embeddings)} embeddings files")
    out_path = Path(out)
    _format(out_path)
    if any(Path(s).resolve() == out_path.resolve() for s in shards):
        raise ValueError(f"{out_path} is one of the shards: write the merge to a new file")
    parts = [read_summary(s) for s in shards]
    columns = parts[0].columns
    for part in parts[1:]:
        if set(part.columns) != set(columns):
            only = sorted(set(part.columns) ^ set(columns))
            raise ValueError(
                f"{part.path} and {parts[0].path} have different columns ({', '.join(only)}): "
                "summaries of different models or versions do not merge"
            )
    owner: dict[Key, str] = {}
    duplicates: list[tuple[Key, str, str]] = []
    entries: list[tuple[Key, int, int]] = []  # key, shard, row in shard
    for s, part in enumerate(parts):
        for r, row in enumerate(part.rows):
            key = row_key(row)
            if key in owner:
                duplicates.append((key, owner[key], str(part.path)))
            else:
                owner[key] = str(part.path)
                entries.append((key, s, r))
    if duplicates:
        raise DuplicateRowsError(duplicates)
    entries.sort(key=lambda e: e[0])
    merged = Summary(out_path, list(columns), [parts[s].rows[r] for _, s, r in entries])

    matrix: npt.NDArray[np.float32] | None = None
    if embeddings:
        mats = []
        for part, npy in zip(parts, embeddings, strict=True):
            m, keys = read_embeddings(npy)
            expected = [row_key(row) for row in part.rows]
            if (keys if keys is not None else expected) != expected or m.shape[0] != len(expected):
                raise ValueError(f"{npy} is not aligned to {part.path} (its index file lists other rows)")
            mats.append(m)
        dims = {m.shape[1] for m in mats if m.shape[0]}
        if len(dims) > 1:
            raise ValueError(f"the embeddings have different dimensions: {sorted(dims)}")
        dim = dims.pop() if dims else 0
        matrix = np.full((len(entries), dim), np.nan, np.float32)
        for i, (_, s, r) in enumerate(entries):
            matrix[i] = mats[s][r]

    write_summary(out_path, merged)
    emb_out = None
    if matrix is not None and embeddings_out is not None:
        emb_out = write_embeddings(embeddings_out, matrix, merged.rows)
    failed = sum(1 for row in merged.rows if row.get("status") not in (None, "ok"))
    return MergeReport(out_path, len(merged.rows), len(parts), failed, emb_out)
