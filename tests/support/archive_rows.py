"""Archive summary rows (``clients/archive/schema.py``) made from real answers of a real server.

The tests of ``emotion-client merge`` and ``cluster`` need summaries and embeddings; these helpers build them
from ``EmotionClient.recognize`` answers, column for column as the schema says, so those tests do not depend
on the archive mode of ``recognize`` (tested on its own).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.clients import EmotionClient, EmotionClientError
from emotion2vec_serving.clients.archive.schema import MIX, SCORE_PREFIX, columns
from emotion2vec_serving.clients.archive_merge import Summary, write_embeddings, write_summary


def recognize_rows(
    client: EmotionClient, paths: Iterable[Path]
) -> tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32]]:
    """Recognise each file (embedding on): the summary's columns, one mix row per file (an error row for
    a file the server refuses) and the embeddings aligned to the rows (NaN for error rows)."""
    rows: list[dict[str, Any]] = []
    vectors: list[npt.NDArray[np.float32] | None] = []
    labels: tuple[str, ...] = ()
    for path in paths:
        base = {"path": str(path), "channel": MIX, "channel_name": "", "size": path.stat().st_size,
                "fingerprint": str(path.stat().st_mtime_ns),
                "finished_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")}
        try:
            r = client.recognize(path, embedding=True)
        except EmotionClientError as exc:
            rows.append({**base, "status": str(exc), "flags": ""})
            vectors.append(None)
            continue
        labels = r.labels
        rows.append({
            **base, "duration_s": r.duration_s, "voiced_s": r.voiced_s, "label": r.label,
            "confidence": r.confidence, **{SCORE_PREFIX + k: v for k, v in r.scores.items()},
            "segments": len(r.segments), "model_name": r.model.name, "model_version": r.model.version,
            "model_precision": r.model.precision, "flags": "", "status": "ok",
        })
        vectors.append(r.embedding)
    dim = max((v.size for v in vectors if v is not None), default=0)
    matrix = np.full((len(rows), dim), np.nan, np.float32)
    for i, v in enumerate(vectors):
        if v is not None:
            matrix[i] = v
    names = columns(list(labels))
    return names, [{c: row.get(c) for c in names} for row in rows], matrix


def shard_of(path: str, n: int) -> int:
    """A stable shard of a path (what ``--shard I/N`` does: a hash, not the listing order)."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") % n


def write_archive(
    summary: Path, names: list[str], rows: list[dict[str, Any]], matrix: npt.NDArray[np.float32] | None = None
) -> Path:
    """Write a summary (rows sorted by key, as recognize writes them) and, with ``matrix``, ``<stem>.npy`` and
    its index file beside it; returns the summary path."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["path"], rows[i]["channel"]))
    write_summary(summary, Summary(summary, names, [rows[i] for i in order]))
    if matrix is not None:
        write_embeddings(summary.with_suffix(".npy"), matrix[order], [rows[i] for i in order])
    return summary
