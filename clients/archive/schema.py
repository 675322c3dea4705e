"""The archive summary's schema: column names, types, and the journal format.

Written down once here; ``emotion-client recognize --summary`` writes it and ``emotion-client merge`` /
``cluster`` read it. Change it only by adding columns (readers must ignore columns they do not know).

One row per recording and channel. In mix mode (the default: the server mixes every channel to mono) a
recording has exactly one row, ``channel == "mix"``; with ``--channels split`` (server-side channel
splitting) a recording has one row per channel, ``channel == "0"``, ``"1"``... and ``channel_name`` the name
given with ``--channel-names`` (else ``""``). ``(path, channel)`` is the key of a row: a summary (and a merge
of shard summaries) holds each key once.

A recording that could not be recognised (unreadable, empty, undecodable, refused after the retries) has one
row with ``channel == "mix"`` (there are no channels to tell apart), ``status`` the error text (never
``"ok"``), and empty result columns (null in JSONL/Parquet, an empty cell in CSV).

Columns, in order (``SCORE_PREFIX`` columns are inserted where ``{scores}`` stands, one per model label in
the model's label order, e.g. ``score_angry``):

================  ========  ===========================================================================
column            type      meaning
================  ========  ===========================================================================
path              string    the recording as listed: a local path (as given, not resolved) or a URL
channel           string    ``"mix"``, or the channel index ``"0"``, ``"1"``... (split mode)
channel_name      string    the channel's name (split mode with names), else ``""``
size              int64     bytes of the file (null when it could not be read)
fingerprint       string    what ``--resume`` compares: ``mtime_ns`` of a local file, the ETag (or other
                            content hash, else mtime) of an object-store URL
duration_s        float64   audio duration in seconds
voiced_s          float64   seconds of voiced audio (long recordings; 0 for a single-pass answer)
label             string    the top emotion (English name)
confidence        float64   its probability
{scores}          float64   ``score_<label>``: each label's probability
segments          int64     segments of a long recording (0 when answered in one pass)
model_name        string    the model that answered
model_version     string    its short checkpoint hash
model_precision   string    fp32, fp16, int8...
flags             string    the ``--flag`` rules the row met, ``;``-separated (``""`` when none)
status            string    ``"ok"``, or the error text
finished_at       string    ISO 8601 UTC time the row was written, e.g. ``2025-01-31T12:00:00.123456Z``
================  ========  ===========================================================================

Files (``SUMMARY`` is the ``--summary`` path; its suffix picks the format):

- ``SUMMARY`` (``.csv``, ``.jsonl`` or ``.parquet``): the rows above, sorted by ``(path, channel)``; CSV
  with a header line (UTF-8, ``csv`` module's excel dialect); JSONL one object per line; Parquet one table
  with the types above. Rebuilt from the journal at the end of a run and at the start of a resumed one;
  CSV and JSONL summaries are also appended to as each recording finishes (a torn last line after a kill is
  repaired by the rebuild).
- ``SUMMARY + ".journal.jsonl"`` (``JOURNAL_SUFFIX``): the source of truth. One JSON object per line, one line
  per finished recording: ``{"v": 1, "path": ..., "size": ..., "fingerprint": ..., "rows": [row, ...]}``
  where each row is a dict of the columns above. Appended, flushed and fsync'ed as each recording finishes, so
  a ``kill -9`` loses at most the recordings in flight. A later line for the same path replaces the earlier
  one (a retried failure); a torn last line is ignored.
- ``--embeddings E.npy``: float32 ``[rows, dim]``, row ``i`` the utterance embedding of summary row ``i``
  (NaN for rows without one: errors), and ``E.index.csv`` (``row,path,channel,status``) aligned to it. While
  running, embeddings are appended to ``E.npy.journal.f32`` and each journal row names its byte offset there
  (``embedding_offset``, ``embedding_dim``; journal-only keys, not summary columns).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FORMATS",
    "JOURNAL_SUFFIX",
    "JOURNAL_VERSION",
    "MIX",
    "SCORE_PREFIX",
    "column_types",
    "columns",
    "row_key",
]

#: The ``channel`` of a mix-mode row (and of every error row).
MIX = "mix"
SCORE_PREFIX = "score_"
JOURNAL_SUFFIX = ".journal.jsonl"
JOURNAL_VERSION = 1
FORMATS = (".csv", ".jsonl", ".parquet")

_HEAD: tuple[tuple[str, str], ...] = (
    ("path", "string"),
    ("channel", "string"),
    ("channel_name", "string"),
    ("size", "int64"),
    ("fingerprint", "string"),
    ("duration_s", "float64"),
    ("voiced_s", "float64"),
    ("label", "string"),
    ("confidence", "float64"),
)
_TAIL: tuple[tuple[str, str], ...] = (
    ("segments", "int64"),
    ("model_name", "string"),
    ("model_version", "string"),
    ("model_precision", "string"),
    ("flags", "string"),
    ("status", "string"),
    ("finished_at", "string"),
)


def column_types(labels: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Column name -> type (``string``, ``int64``, ``float64``), in order, for a model's labels."""
    return {**dict(_HEAD), **{SCORE_PREFIX + label: "float64" for label in labels}, **dict(_TAIL)}


def columns(labels: tuple[str, ...] | list[str]) -> list[str]:
    """The summary's column names, in order, for a model's labels."""
    return list(column_types(labels))


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    """The key of a summary row: ``(path, channel)``."""
    return (str(row["path"]), str(row["channel"]))
