"""``emotion-client recognize`` in archive mode: from parsed arguments to an exit status."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ..aio import AsyncEmotionClient
from ..channel import ChannelSettings
from ..results import Recognition
from ..retry import RetryPolicy
from .flags import parse_flag
from .runner import ArchiveOptions, print_report, run_archive
from .sources import expand_inputs, is_url, parse_shard, read_list

__all__ = ["add_arguments", "is_archive_run", "run_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(rec: argparse.ArgumentParser) -> None:
    """The archive options of ``recognize``."""
    g = rec.add_argument_group("archive mode (any of these options, a URL or a glob pattern selects it)")
    g.add_argument("--from-list", metavar="FILE",
                   help="also recognise the paths or URLs listed in FILE, one a line ('-': stdin)")
    g.add_argument("--summary", metavar="PATH",
                   help="write one row per recording (and channel) to PATH: .csv, .jsonl or .parquet; "
                   "a journal PATH.journal.jsonl is kept beside it")
    g.add_argument("--resume", action="store_true",
                   help="with --summary: skip the recordings an earlier run finished (same path, size and "
                   "mtime or ETag) and retry the failed ones")
    g.add_argument("--flag", action="append", default=[], metavar="LABEL>=VALUE",
                   help="mark rows whose score meets the rule, e.g. angry>=0.75 (repeatable)")
    g.add_argument("--embeddings", metavar="PATH.npy",
                   help="collect utterance embeddings into PATH.npy, aligned to the summary rows "
                   "(PATH.index.csv names each row)")
    g.add_argument("--shard", metavar="I/N",
                   help="only the recordings whose stable path hash falls in shard I of N (0-based)")
    g.add_argument("--keep-outputs", action="store_true",
                   help="with --summary: also write the per-file outputs_* folders")  # fmt: skip


def is_archive_run(args: argparse.Namespace) -> bool:
    """Archive mode: an archive option, an object-store URL or a glob pattern among the inputs."""
    if args.summary or args.from_list or args.resume or args.flag or args.embeddings or args.shard:
        return True
    return any(is_url(item) or (not Path(item).exists() and any(c in item for c in "*?["))
               for item in args.inputs)  # fmt: skip


def _items(args: argparse.Namespace) -> Iterator[str]:
    listed: Iterator[str] = read_list(args.from_list) if args.from_list else iter(())
    return itertools.chain(args.inputs, listed)


def run_command(
    args: argparse.Namespace,
    settings: ChannelSettings,
    retry: RetryPolicy,
    write_outputs: Callable[[str, Recognition], str],
) -> int:
    if args.resume and not args.summary:
        print("error: --resume needs --summary (the journal is kept beside it)", file=sys.stderr)
        return EXIT_USAGE
    if args.embeddings and not args.summary:
        print("error: --embeddings needs --summary (its rows are aligned to the summary's)", file=sys.stderr)
        return EXIT_USAGE
    if not args.inputs and not args.from_list:
        print("error: give files, folders, patterns, URLs or --from-list", file=sys.stderr)
        return EXIT_USAGE
    shard = parse_shard(args.shard) if args.shard else None
    sources = expand_inputs(_items(args), shard)
    opts = ArchiveOptions(
        summary=Path(args.summary) if args.summary else None,
        resume=args.resume,
        embeddings=Path(args.embeddings) if args.embeddings else None,
        concurrency=max(1, args.concurrency),
        timeout_s=args.timeout,
        progress=not args.no_progress,
        write_outputs=write_outputs if (args.keep_outputs or not args.summary) else None,
        channels=args.channels,  # recognize's --channels / --channel-names: one row per channel with split
        channel_names=tuple(args.channel_names),
    )

    async def go() -> int:
        async with AsyncEmotionClient(settings=settings, timeout_s=args.timeout, retry=retry) as client:
            info = await client.model_info(timeout=args.timeout)
            labels = [label.name for label in info.labels]
            opts.flags = tuple(parse_flag(text, labels) for text in args.flag)
            report = await run_archive(sources, client, opts, info)
        print_report(report, opts.flags)
        return EXIT_FAILED if report.failed else EXIT_OK

    return asyncio.run(go())
