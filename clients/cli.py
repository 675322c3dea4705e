"""``emotion-client``: the command-line client.

    emotion-client --target localhost:50051 recognize clips/ --granularity frame --embedding
    emotion-client stream call.wav --realtime
    emotion-client plot call.wav --out call.png
    emotion-client merge all.parquet shard-*.parquet
    emotion-client cluster all.parquet --embeddings all.npy --k auto --out clusters/
    emotion-client health

Connection flags (``--target``, TLS, ``--token``) come before the command; each also reads an
``EMOTION_*`` environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._requests import Segmentation
from .aio import AsyncEmotionClient
from .audio import find_audio_files
from .channel import ChannelSettings, TLSConfig
from .client import SERVICE_NAME, EmotionClient
from .errors import EmotionClientError
from .results import Recognition, Segment, StreamSummary
from .retry import RetryPolicy
from .schema import recognition_json

__all__ = ["main", "make_output_dir"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# ---------------------------------------------------------------------------------------------- parser


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-client", description="Client for the emotion2vec speech emotion recognition server."
    )
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "--target",
        default=_env("EMOTION_TARGET", "localhost:50051"),
        help=(
            "server address, e.g. dns:///emotion-server-headless:50051 "
            "(env EMOTION_TARGET; default %(default)s)"
        ),
    )
    conn.add_argument(
        "--tls",
        action="store_true",
        default=_env("EMOTION_TLS") in ("1", "true"),
        help="use TLS (implied by the certificate flags; env EMOTION_TLS=1)",
    )
    conn.add_argument(
        "--root-cert", default=_env("EMOTION_ROOT_CERT"), help="CA bundle (PEM) to verify the server"
    )
    conn.add_argument(
        "--client-cert", default=_env("EMOTION_CLIENT_CERT"), help="client certificate (PEM) for mTLS"
    )
    conn.add_argument(
        "--client-key", default=_env("EMOTION_CLIENT_KEY"), help="client private key (PEM) for mTLS"
    )
    conn.add_argument(
        "--server-name", default=_env("EMOTION_SERVER_NAME"), help="name to verify in the certificate"
    )
    conn.add_argument(
        "--token",
        default=_env("EMOTION_TOKEN"),
        help="bearer token (env EMOTION_TOKEN); sent as 'authorization: Bearer <token>'",
    )
    conn.add_argument(
        "--timeout",
        type=float,
        default=float(_env("EMOTION_TIMEOUT", "60") or 60),
        help="deadline of each call in seconds, retries included; recognize and plot add one second per "
        "second of audio for long recordings (default %(default)s)",
    )
    conn.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries on UNAVAILABLE / RESOURCE_EXHAUSTED (default %(default)s)",
    )
    conn.add_argument(
        "--lb",
        choices=("round_robin", "pick_first"),
        default="round_robin",
        help="load-balancing policy over the resolved addresses (default %(default)s)",
    )

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rec = sub.add_parser("recognize", help="classify files and directories")
    rec.add_argument("inputs", nargs="*", metavar="FILE_DIR_GLOB_OR_URL")
    rec.add_argument("--granularity", choices=("utterance", "frame"), default="utterance")
    rec.add_argument(
        "--embedding", action="store_true", help="also save the utterance embedding (embedding.npy)"
    )
    rec.add_argument(
        "--smoothing-frames", type=int, default=0, help="frame granularity: moving average width"
    )
    rec.add_argument(
        "--channels", choices=("mix", "split"), default="mix",
        help="mix: channels averaged into one result (default); split: one result per channel (at most 8), "
        "written as a 'channels' list in result.json",
    )
    rec.add_argument(
        "--channel-names", type=_channel_names, default=(), metavar="NAME,NAME",
        help="with --channels split: names of the channels in order, e.g. agent,customer",
    )
    rec.add_argument(
        "--output-dir",
        default="outputs",
        help="where the per-input outputs_YYYYMMDD_HHMMSS folders go (default %(default)s)",
    )
    rec.add_argument(
        "--json", action="store_true", help="print one JSON line per input instead of writing files"
    )
    rec.add_argument("--concurrency", type=int, default=4, help="requests in flight (default %(default)s)")
    rec.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar (seconds of audio done, when known)"
    )
    from .archive.command import add_arguments as add_archive_arguments

    add_archive_arguments(rec)

    emb = sub.add_parser("embed", help="utterance (and frame) embeddings of a file")
    emb.add_argument("file")
    emb.add_argument("--frames", action="store_true", help="also return frame embeddings [T, dim]")
    emb.add_argument("--out", help="write the embedding to this .npy file (frames to <stem>.frames.npy)")

    stm = sub.add_parser(
        "stream", help="stream a file in real-time-sized chunks; print segments as they arrive"
    )
    stm.add_argument("file")
    stm.add_argument("--chunk-ms", type=float, default=100.0, help="chunk size (default %(default)s ms)")
    stm.add_argument("--realtime", action="store_true", help="send chunks at the audio's own pace")
    stm.add_argument("--segmentation", choices=("energy", "fixed"), default="energy")
    stm.add_argument("--min-segment-s", type=float)
    stm.add_argument("--max-segment-s", type=float)
    stm.add_argument("--min-silence-s", type=float)
    stm.add_argument("--energy-threshold-db", type=float)
    stm.add_argument("--window-s", type=float, help="fixed segmentation: window length")
    stm.add_argument("--hop-s", type=float, help="fixed segmentation: hop between windows")
    stm.add_argument(
        "--embedding", action="store_true", help="include each segment's embedding (JSON output)"
    )
    stm.add_argument("--json", action="store_true", help="print JSON lines")

    hl = sub.add_parser("health", help="gRPC health status (exit 0 when SERVING)")
    hl.add_argument("--service", default=SERVICE_NAME, help="service name; '' for the whole server")

    sub.add_parser("info", help="describe the served model (JSON)")

    pl = sub.add_parser("plot", help="frame-level emotion scores over time as a PNG")
    pl.add_argument("file")
    pl.add_argument("--out", default="plot.png", help="PNG path (default %(default)s)")
    pl.add_argument("--width", type=int, default=1200, help="width in pixels (default %(default)s)")
    pl.add_argument("--height", type=int, default=600, help="height in pixels (default %(default)s)")
    pl.add_argument("--dpi", type=int, default=100)
    pl.add_argument("--smoothing-frames", type=int, default=0, help="moving average over N frames")
    pl.add_argument("--title")

    mg = sub.add_parser(
        "merge", help="concatenate shard summaries (--shard I/N runs) into one; refuses duplicates"
    )
    mg.add_argument("out", metavar="OUT", help="merged summary (.csv, .jsonl or .parquet)")
    mg.add_argument("shards", nargs="+", metavar="SHARD", help="shard summaries, in any of the three formats")
    mg.add_argument("--embeddings", nargs="+", default=[], metavar="E.npy",
                    help="each shard's embeddings (with its E.index.csv), in the shards' order")
    mg.add_argument("--embeddings-out", metavar="E.npy", help="merged embeddings, aligned to OUT's rows")

    cl = sub.add_parser(
        "cluster", help="K-Means over an archive's embeddings: clusters, mean scores, PCA plot"
    )
    cl.add_argument("summary", metavar="SUMMARY", help="archive summary (.csv, .jsonl or .parquet)")
    cl.add_argument("--embeddings", required=True, metavar="E.npy", help="the summary's embeddings")
    cl.add_argument(
        "--k", default="8", help="clusters, or 'auto' to choose by silhouette (default %(default)s)"
    )
    cl.add_argument("--k-max", type=int, default=10, help="largest k tried by --k auto (default %(default)s)")
    cl.add_argument("--out", required=True, metavar="DIR", help="output folder")
    cl.add_argument("--seed", type=int, default=0, help="K-Means random state (default %(default)s)")
    cl.add_argument(
        "--no-normalize", action="store_true", help="cluster raw embeddings (default: L2-normalised)"
    )
    return parser


def _settings(args: argparse.Namespace) -> ChannelSettings:
    tls = None
    if args.tls or args.root_cert or args.client_cert or args.client_key:
        tls = TLSConfig(
            root_cert=args.root_cert,
            client_cert=args.client_cert,
            client_key=args.client_key,
            server_name=args.server_name,
        )
    return ChannelSettings(target=args.target, tls=tls, token=args.token or None, load_balancing=args.lb)


def _retry(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(max_attempts=max(1, args.retries + 1))


def _sync_client(args: argparse.Namespace) -> EmotionClient:
    return EmotionClient(settings=_settings(args), timeout_s=args.timeout, retry=_retry(args))


def _print_json(obj: Any, file: TextIO | None = None) -> None:
    # sys.stdout is looked up per call: a default argument would pin the stream seen at import time.
    print(json.dumps(obj, ensure_ascii=False), file=file or sys.stdout, flush=True)


# ---------------------------------------------------------------------------------------------- recognize


def make_output_dir(root: Path, now: datetime | None = None) -> Path:
    """Create ``root/outputs_YYYYMMDD_HHMMSS`` (``_1``, ``_2``... when taken) and return it.

    The layout of the emotion2vec WebUI, which users script against. ``mkdir`` without ``exist_ok`` makes
    the choice atomic, so concurrent writers never share a folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    n = 0
    while True:
        path = root / (f"outputs_{stamp}" if n == 0 else f"outputs_{stamp}_{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def _write_outputs(root: Path, source: Path, result: Recognition) -> Path:
    folder = make_output_dir(root)
    payload = recognition_json(result, input_name=str(source))
    (folder / "result.json").write_text(
        json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    if result.embedding is not None:
        np.save(folder / "embedding.npy", result.embedding)
    elif result.channels and all(c.embedding is not None for c in result.channels):
        # --channels split: one row per channel, in channel order.
        rows = [c.embedding for c in result.channels if c.embedding is not None]
        np.save(folder / "embedding.npy", np.stack(rows))
    return folder


def _channel_names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",")) if value.strip() else ()


def _result_line(result: Recognition) -> str:
    """The label of a result for the progress line (each channel's with --channels split)."""
    if result.channels:
        return ", ".join(f"{c.name or f'ch{c.channel}'}: {c.label} ({c.confidence:.3f})"
                         for c in result.channels)
    return f"{result.label} ({result.confidence:.3f})"


def probe_duration_s(path: Path) -> float | None:
    """The audio duration of a file read from its header (WAV by the standard library, other formats with
    PyAV when installed), or None when it cannot be told cheaply."""
    try:
        import wave

        with wave.open(str(path), "rb") as w:
            return w.getnframes() / float(w.getframerate())
    except Exception:
        pass
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(path)) as container:
            if container.duration is not None:
                return float(container.duration) / 1_000_000.0
    except Exception:
        return None
    return None


#: Encoded audio is at least this many bytes per second (64 kbit/s): bounds a file's duration from its
#: size when its header cannot be read here.
_MIN_BYTES_PER_S = 8000


def call_timeout_s(base_s: float, path: Path, duration_s: float | None) -> float:
    """Deadline of one recognize call: ``base_s`` plus one second per second of audio (long recordings are
    segmented and run in the server; one second per second is slower than any server should be)."""
    if duration_s is None:
        try:
            duration_s = path.stat().st_size / _MIN_BYTES_PER_S
        except OSError:
            duration_s = 0.0
    return base_s + max(0.0, duration_s)


async def _recognize_files(args: argparse.Namespace, files: list[Path]) -> int:
    from tqdm import tqdm

    root = Path(args.output_dir)
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for path in files:
        queue.put_nowait(path)
    failures = 0
    durations = {path: probe_duration_s(path) for path in files}
    # Progress in seconds of audio when every duration is known (one long file is most of the work),
    # else in files.
    by_audio = all(d is not None for d in durations.values())
    total: float = sum(d or 0.0 for d in durations.values()) if by_audio else len(files)
    bar = tqdm(
        total=round(total, 1) if by_audio else total, unit="s audio" if by_audio else "file",
        disable=args.no_progress, file=sys.stderr, dynamic_ncols=True,
    )
    running: dict[Path, float] = {}

    async def ticker() -> None:
        # A long recording is one call: show which ones are running and for how long.
        while True:
            await asyncio.sleep(1.0)
            if running:
                now = time.monotonic()
                bar.set_postfix_str(
                    ", ".join(f"{p.name} {now - t0:.0f} s" for p, t0 in list(running.items())[:3]),
                    refresh=True,
                )

    async def worker(client: AsyncEmotionClient) -> None:
        nonlocal failures
        while True:
            try:
                path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.monotonic()
            running[path] = started
            try:
                data = await asyncio.to_thread(path.read_bytes)
                result = await client.recognize(
                    data,
                    granularity=args.granularity,
                    embedding=args.embedding,
                    smoothing_frames=args.smoothing_frames,
                    channels=args.channels,
                    channel_names=args.channel_names,
                    timeout=call_timeout_s(args.timeout, path, durations[path]),
                )
            except (EmotionClientError, OSError, ValueError) as exc:
                failures += 1
                bar.write(f"error: {path}: {exc}", file=sys.stderr)
            else:
                if args.json:
                    payload = recognition_json(result, input_name=str(path), embedding=True)
                    bar.clear()
                    _print_json(payload)
                else:
                    folder = await asyncio.to_thread(_write_outputs, root, path, result)
                    long_note = ""
                    n_segments = len(result.segments) + sum(len(c.segments) for c in result.channels)
                    if n_segments:
                        took = time.monotonic() - started
                        long_note = (
                            f" [{n_segments} segments, {result.duration_s:.0f} s audio in "
                            f"{took:.1f} s]"
                        )
                    bar.write(
                        f"{path}: {_result_line(result)}{long_note} -> {folder}",
                        file=sys.stderr,
                    )
            finally:
                running.pop(path, None)
                bar.update(round(durations[path] or 0.0, 1) if by_audio else 1)

    tick = asyncio.create_task(ticker()) if not args.no_progress else None
    try:
        async with AsyncEmotionClient(
            settings=_settings(args), timeout_s=args.timeout, retry=_retry(args)
        ) as client:
            await asyncio.gather(*(worker(client) for _ in range(max(1, min(args.concurrency, len(files))))))
    finally:
        if tick is not None:
            tick.cancel()
        bar.close()
    if failures:
        print(f"{failures} of {len(files)} inputs failed", file=sys.stderr)
    return EXIT_FAILED if failures else EXIT_OK


def cmd_recognize(args: argparse.Namespace) -> int:
    from .archive.command import is_archive_run, run_command

    if is_archive_run(args) or not args.inputs:
        root = Path(args.output_dir)

        def write_outputs(source: str, result: Recognition) -> str:
            return str(_write_outputs(root, Path(source), result))

        return run_command(args, _settings(args), _retry(args), write_outputs)
    files = find_audio_files(args.inputs)
    if not files:
        print("no audio files found", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_recognize_files(args, files))


# ---------------------------------------------------------------------------------------------- others


def cmd_embed(args: argparse.Namespace) -> int:
    source = Path(args.file)
    timeout = call_timeout_s(args.timeout, source, probe_duration_s(source))
    with _sync_client(args) as client:
        result = client.embed(args.file, frames=args.frames, timeout=timeout)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, result.embedding)
        written = [str(out)]
        if result.frames is not None:
            frames_path = out.with_name(out.stem + ".frames.npy")
            np.save(frames_path, result.frames)
            written.append(str(frames_path))
        print(f"dim {result.dim}: wrote {', '.join(written)}", file=sys.stderr)
    else:
        payload: dict[str, Any] = {
            "input": args.file,
            "dim": result.dim,
            "embedding": result.embedding.tolist(),
            "duration_s": result.duration_s,
            "model": result.model.to_dict(),
        }
        if result.frames is not None:
            payload["frames"] = result.frames.tolist()
        _print_json(payload)
    return EXIT_OK


def _segment_json(item: Segment) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "segment",
        "segment_id": item.segment_id,
        "start_s": item.start_s,
        "end_s": item.end_s,
        "emotion": item.label,
        "confidence": item.confidence,
        "scores": item.scores,
        "timing": item.timing.to_dict(),
    }
    if item.embedding is not None:
        out["embedding"] = item.embedding.tolist()
    return out


def _summary_json(item: StreamSummary) -> dict[str, Any]:
    return {
        "type": "summary",
        "segments": item.segments,
        "duration_s": item.duration_s,
        "voiced_s": item.voiced_s,
        "emotion": item.label,
        "confidence": item.confidence,
        "scores": item.scores,
        "label_seconds": item.label_seconds,
        "model": item.model.to_dict() if item.model else None,
    }


def cmd_stream(args: argparse.Namespace) -> int:
    segmentation = Segmentation(
        mode=args.segmentation,
        min_segment_s=args.min_segment_s,
        max_segment_s=args.max_segment_s,
        min_silence_s=args.min_silence_s,
        energy_threshold_db=args.energy_threshold_db,
        window_s=args.window_s,
        hop_s=args.hop_s,
    )
    start = time.monotonic()
    with _sync_client(args) as client:
        # A stream lasts as long as its audio: the per-call timeout does not apply to it.
        for item in client.stream(
            args.file,
            segmentation=segmentation,
            embedding=args.embedding,
            chunk_ms=args.chunk_ms,
            realtime=args.realtime,
        ):
            if isinstance(item, Segment):
                if args.json:
                    _print_json(_segment_json(item))
                else:
                    print(
                        f"[{item.start_s:7.2f} - {item.end_s:7.2f}] #{item.segment_id:<3d} "
                        f"{item.label:<10s} {item.confidence:.3f}   (+{time.monotonic() - start:.2f} s)",
                        flush=True,
                    )
            elif args.json:
                _print_json(_summary_json(item))
            else:
                share = "".join(f"; {k} {v:.1f} s" for k, v in item.label_seconds.items() if v > 0)
                print(
                    f"summary: {item.segments} segments, {item.duration_s:.2f} s audio, "
                    f"{item.voiced_s:.2f} s voiced; overall {item.label} ({item.confidence:.3f}){share}",
                    flush=True,
                )
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    with _sync_client(args) as client:
        status = client.health(args.service)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_FAILED


def cmd_info(args: argparse.Namespace) -> int:
    with _sync_client(args) as client:
        info = client.model_info()
    _print_json(
        {
            "model": info.model.to_dict(),
            "labels": [{"index": x.index, "name": x.name, "name_zh": x.name_zh} for x in info.labels],
            "sample_rate_hz": info.sample_rate_hz,
            "frame_rate_hz": info.frame_rate_hz,
            "embedding_dim": info.embedding_dim,
            "execution_provider": info.execution_provider,
            "min_duration_s": info.min_duration_s,
            "max_duration_s": info.max_duration_s,
            "max_segment_s": info.max_segment_s,
            "max_audio_s": info.max_audio_s,
            "warnings": list(info.warnings),
            "max_abs_prob_vs_fp32": info.max_abs_prob_vs_fp32,
            "max_abs_prob_batch_vs_alone": info.max_abs_prob_batch_vs_alone,
        }
    )
    for warning in info.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_frame_scores

    source = Path(args.file)
    timeout = call_timeout_s(args.timeout, source, probe_duration_s(source))
    with _sync_client(args) as client:
        result = client.recognize(
            args.file, granularity="frame", smoothing_frames=args.smoothing_frames, timeout=timeout
        )
    path = plot_frame_scores(
        result, args.out, width_px=args.width, height_px=args.height, dpi=args.dpi, title=args.title
    )
    extra = f", {len(result.segments)} segments" if result.segments else ""
    print(f"wrote {path} ({args.width}x{args.height}, {len(result.frames)} frames{extra})", file=sys.stderr)
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from .archive_merge import merge_summaries

    report = merge_summaries(
        args.out, args.shards, embeddings=args.embeddings, embeddings_out=args.embeddings_out
    )
    emb = f", embeddings -> {report.embeddings_out}" if report.embeddings_out else ""
    print(f"merged {report.shards} shards: {report.rows} rows ({report.failed} failed) -> {report.out}{emb}",
          file=sys.stderr)
    return EXIT_OK


def cmd_cluster(args: argparse.Namespace) -> int:
    from .archive_cluster import cluster_summary

    if args.k != "auto" and not args.k.isdigit():
        raise ValueError(f"--k is a number or 'auto' (got {args.k!r})")
    report = cluster_summary(
        args.summary, args.embeddings, args.out, k=args.k if args.k == "auto" else int(args.k),
        k_max=args.k_max, seed=args.seed, normalize=not args.no_normalize,
    )
    print(f"k={report.k}: {report.clustered} rows clustered (sizes {report.sizes}), {report.excluded} "
          f"without an embedding; wrote {', '.join(str(p) for p in report.files)}", file=sys.stderr)
    return EXIT_OK


_COMMANDS = {
    "recognize": cmd_recognize,
    "embed": cmd_embed,
    "stream": cmd_stream,
    "health": cmd_health,
    "info": cmd_info,
    "plot": cmd_plot,
    "merge": cmd_merge,
    "cluster": cmd_cluster,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``emotion-client``; returns the exit status (0 ok, 1 failed, 2 usage)."""
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except EmotionClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
