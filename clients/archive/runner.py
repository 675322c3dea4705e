"""The archive run: recognise every listed recording with ``concurrency`` calls in flight, write one journal
line per recording as it finishes, and rebuild the summary (and embeddings) from the journal at the end.

Failures never stop the run: an unreadable, empty or undecodable recording, or one the server still refuses
after the client's retries (``clients/retry.py``: backoff, honouring the server's ``retry-after-ms``), gets an
error row and ``--resume`` tries it again.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..aio import AsyncEmotionClient
from ..errors import EmotionClientError
from ..results import ModelInfo, Recognition
from .flags import Flag, row_flags
from .journal import (
    EmbeddingSink,
    Entry,
    Journal,
    LiveSummary,
    check_format,
    journal_path,
    read_journal,
    summary_rows,
    write_embeddings,
    write_summary,
)
from .schema import MIX, SCORE_PREFIX
from .sources import Source, read_source

__all__ = ["ArchiveOptions", "ArchiveReport", "channel_results", "request_options", "run_archive"]

#: Encoded audio is at least this many bytes per second (64 kbit/s): bounds a call's deadline by the size.
_MIN_BYTES_PER_S = 8000


@dataclass
class ArchiveOptions:
    summary: Path | None = None
    resume: bool = False
    flags: tuple[Flag, ...] = ()
    embeddings: Path | None = None
    concurrency: int = 4
    timeout_s: float = 60.0
    progress: bool = True
    #: ``mix`` (the server mixes channels down) or ``split`` (one row per channel; needs a server with
    #: channel splitting, issue 21).
    channels: str = "mix"
    channel_names: tuple[str, ...] = ()
    #: Called with each successful (path, result): the per-file ``outputs_*`` folders. Returns a note.
    write_outputs: Callable[[str, Recognition], str] | None = None


@dataclass
class ArchiveReport:
    listed: int = 0
    skipped: int = 0  # done in an earlier run (--resume)
    ok: int = 0
    failed: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    flagged: list[tuple[str, str, str]] = field(default_factory=list)  # (path, channel, flags)
    rows: int = 0

    @property
    def audio_s_per_s(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


# ------------------------------------------------------------------------------------- channel wiring


def request_options(mode: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Extra ``recognize`` arguments for the channel mode: none for ``mix``. The names stay here: an archive
    mixes mono and stereo recordings, and the server refuses more names than a recording has channels, so
    ``channel_results`` names each channel the recording really has (a mono file: the first name)."""
    if mode == "mix":
        return {}
    return {"channels": mode}


def channel_results(result: Any, mode: str, names: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """``(channel, channel_name, per-channel result)`` of a recognition: one ``("mix", "", result)`` in mix
    mode; in split mode one per ``result.channels`` item (``channel``, ``name``, ``label``, ``confidence``,
    ``scores``, ``segments``, ``embedding``, ``duration_s``, ``voiced_s``)."""
    if mode == "mix":
        return [(MIX, "", result)]
    out = []
    for item in result.channels:
        index = int(item.channel)
        name = item.name or (names[index] if index < len(names) else "")
        out.append((str(index), name, item))
    return out


# ---------------------------------------------------------------------------------------------- rows


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _empty_row(source: Source, labels: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": source.path, "channel": MIX, "channel_name": "", "size": source.size,
        "fingerprint": source.fingerprint, "duration_s": None, "voiced_s": None, "label": None,
        "confidence": None,
    }
    row.update({SCORE_PREFIX + label: None for label in labels})
    row.update({"segments": None, "model_name": None, "model_version": None, "model_precision": None,
                "flags": "", "status": "", "finished_at": ""})  # fmt: skip
    return row


def error_text(exc: BaseException) -> str:
    """The ``status`` of an error row: what went wrong, in a few words."""
    if isinstance(exc, EmotionClientError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, FileNotFoundError):
        return f"not found: {exc.filename or exc}"
    if isinstance(exc, OSError):
        return f"unreadable: {exc}"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------- run


class _Sinks:
    """Where finished recordings go; ``record`` is called under one lock, so lines never interleave."""

    def __init__(self, opts: ArchiveOptions, labels: list[str]) -> None:
        self.opts = opts
        self.labels = labels
        self.journal: Journal | None = None
        self.live: LiveSummary | None = None
        self.embeddings: EmbeddingSink | None = None
        if opts.summary is not None:
            self.journal = Journal(journal_path(opts.summary))
            if opts.summary.suffix.lower() != ".parquet":
                self.live = LiveSummary.append_to(opts.summary, labels)
        if opts.embeddings is not None:
            self.embeddings = EmbeddingSink(opts.embeddings)

    def record(self, source: Source, rows: list[dict[str, Any]], vectors: list[Any]) -> None:
        if self.embeddings is not None:
            for row, vector in zip(rows, vectors, strict=True):
                if vector is not None:
                    row["embedding_offset"] = self.embeddings.append(vector)
                    row["embedding_dim"] = int(vector.size)
        if self.journal is not None:
            self.journal.append(source.path, source.size, source.fingerprint, rows)
        if self.live is not None:
            for row in rows:
                self.live.write(row)
            self.live.flush()

    def close(self) -> None:
        for sink in (self.journal, self.live, self.embeddings):
            if sink is not None:
                sink.close()


def _start_fresh(opts: ArchiveOptions) -> None:
    """Without --resume, an earlier run's files are replaced."""
    paths: list[Path] = []
    if opts.summary is not None:
        paths += [opts.summary, journal_path(opts.summary)]
    if opts.embeddings is not None:
        paths.append(Path(str(opts.embeddings) + ".journal.f32"))
    for path in paths:
        path.unlink(missing_ok=True)


def _plan(sources: list[Source], opts: ArchiveOptions, report: ArchiveReport) -> list[Source]:
    if opts.summary is None or not opts.resume:
        return sources
    done = read_journal(journal_path(opts.summary))
    todo = []
    for source in sources:
        entry = done.get(source.path)
        same = entry is not None and (entry.size, entry.fingerprint) == (source.size, source.fingerprint)
        if entry is not None and entry.ok and same:
            report.skipped += 1
        else:
            todo.append(source)
    return todo


def _finish(opts: ArchiveOptions, labels: list[str], report: ArchiveReport) -> None:
    if opts.summary is None:
        return
    records: dict[str, Entry] = read_journal(journal_path(opts.summary))
    report.rows = write_summary(opts.summary, summary_rows(records), labels)
    if opts.embeddings is not None:
        write_embeddings(opts.embeddings, records)


async def run_archive(
    sources: list[Source], client: AsyncEmotionClient, opts: ArchiveOptions, info: ModelInfo | None = None
) -> ArchiveReport:
    """Recognise ``sources``; see the module docstring. ``info``: the server's model (asked when None)."""
    from tqdm import tqdm

    if opts.summary is not None:
        check_format(opts.summary)
    info = info or await client.model_info(timeout=opts.timeout_s)
    labels = [label.name for label in info.labels]
    report = ArchiveReport(listed=len(sources))
    if not opts.resume:
        _start_fresh(opts)
    todo = _plan(sources, opts, report)
    if opts.resume:
        _finish(opts, labels, report)  # the summary of what was done, before anything else happens
    sinks = _Sinks(opts, labels)
    lock = asyncio.Lock()
    queue: asyncio.Queue[Source] = asyncio.Queue()
    for source in todo:
        queue.put_nowait(source)
    extra = request_options(opts.channels, opts.channel_names)
    bar = tqdm(total=len(todo), unit="rec", disable=not opts.progress, file=sys.stderr, dynamic_ncols=True,
               desc="recordings")  # fmt: skip
    started = time.monotonic()

    def progress() -> None:
        took = max(1e-9, time.monotonic() - started)
        bar.set_postfix_str(f"{report.audio_s / 3600:.2f} h audio, {report.audio_s / took:.1f} audio-s/s,"
                            f" {report.failed} failed", refresh=False)  # fmt: skip

    async def one(source: Source) -> tuple[list[dict[str, Any]], list[Any]]:
        base = _empty_row(source, labels)
        try:
            data = await asyncio.to_thread(read_source, source)
            if not data:
                raise ValueError("empty file (0 bytes)")
            size = len(data)
            base["size"] = size
            result = await client.recognize(
                data, embedding=opts.embeddings is not None,
                timeout=opts.timeout_s + size / _MIN_BYTES_PER_S, **extra,
            )  # fmt: skip
        except (EmotionClientError, OSError, ValueError) as exc:
            base.update(status=error_text(exc), finished_at=_now())
            return [base], [None]
        if opts.write_outputs is not None:
            await asyncio.to_thread(opts.write_outputs, source.path, result)
        rows, vectors = [], []
        finished = _now()
        for channel, name, item in channel_results(result, opts.channels, opts.channel_names):
            row = dict(base)
            row.update(channel=channel, channel_name=name, duration_s=float(item.duration_s),
                       voiced_s=float(item.voiced_s), label=item.label, confidence=float(item.confidence),
                       segments=len(item.segments), model_name=result.model.name,
                       model_version=result.model.version, model_precision=result.model.precision,
                       flags=row_flags(opts.flags, item.scores), status="ok",
                       finished_at=finished)  # fmt: skip
            scores = {SCORE_PREFIX + k: float(v) for k, v in item.scores.items()}
            row.update({k: v for k, v in scores.items() if k in row})
            rows.append(row)
            vectors.append(item.embedding)
        report.audio_s += float(result.duration_s)
        return rows, vectors

    async def worker() -> None:
        while True:
            try:
                source = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            rows, vectors = await one(source)
            async with lock:
                await asyncio.to_thread(sinks.record, source, rows, vectors)
            if rows[0]["status"] == "ok":
                report.ok += 1
            else:
                report.failed += 1
                bar.write(f"error: {source.path}: {rows[0]['status']}", file=sys.stderr)
            report.flagged += [(r["path"], r["channel"], r["flags"]) for r in rows if r["flags"]]
            progress()
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(opts.concurrency, len(todo) or 1)))))
    finally:
        report.wall_s = time.monotonic() - started
        bar.close()
        sinks.close()
    _finish(opts, labels, report)
    return report


def print_report(report: ArchiveReport, flags: tuple[Flag, ...], file: Any = None) -> None:
    """The end of a run: the flagged recordings, then one line of counts and audio-s/s."""
    out = file or sys.stderr
    if flags:
        for path, channel, hit in report.flagged:
            where = "" if channel == MIX else f" [channel {channel}]"
            print(f"flagged: {path}{where}: {hit}", file=out)
        print(f"{len(report.flagged)} flagged ({', '.join(f.text for f in flags)})", file=out)
    skipped = f", {report.skipped} already done" if report.skipped else ""
    print(
        f"{report.ok + report.failed} recordings ({report.ok} ok, {report.failed} failed{skipped}), "
        f"{report.audio_s / 3600:.3f} h audio in {report.wall_s:.1f} s: {report.audio_s_per_s:.1f} audio-s/s",
        file=out, flush=True,
    )  # fmt: skip


