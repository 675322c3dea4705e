"""The real server through an EMULATED GPU (``--engine emulated-gpu``): what the front end costs at GPU rates.

The emulated card (server/runtime/engines/emulated_gpu.py) sleeps per batch by its cost curve and uses no
CPU, so every CPU second the server process spends is the front end's: gRPC, decoding, admission, the
batcher, padding and results. Clients send 3.75 s clips as raw PCM (s16le, 16 kHz mono: no decoding) and as
Opus (Ogg, 24 kbit/s, made by ffmpeg from the same samples: decoded and resampled by the server), closed
loop with ``--concurrency`` calls in flight from this process (the client shares the machine's cores with
the server: say so when reading the numbers). Per input type it reports requests/s sustained, mean batch
(server histogram), padding waste (buckets), p50/p99, the server's CPU per request (process CPU time /
requests) and, from that, the cores one server process needs to feed a GPU at ``--target-rt`` x real time
(= target_rt / clip_s requests/s x CPU per request)::

    python -m benchmarks.emulated_gpu --out benchmarks/results/emulated_gpu --run-s 30

Two cards by default (``--cards``), each its own server process:

- ``estimate``: the emulated card's default cost curve (an H100-class estimate, 2,860 x real time once a
  batch saturates it; engines/emulated_gpu.py). 3.75 s clips run in the 4 s bucket, and the server's default
  ``--max-batch-audio-s 60`` holds a batch to 15 of them: 2 + 0.35 x 4 x (15 + 4) = 28.6 ms per batch on the
  curve, at most ~520 requests/s, so its rows measure the card (raise ``--max-batch-audio-s`` for larger,
  more efficient batches on a real GPU);
- ``front-end-bound``: a card seven times faster (``ms_per_s=0.05,launch_ms=1``: 20,000 x real time, as
  several cards or a future one might be), never the bottleneck here, so its rows measure what one
  server process's front end sustains on these cores: the issue's ">= 1,000 requests/s with mean batch
  >= 8" is read on this card.

``runner busy`` (``device_busy`` in results.json) is the share of the wall time a batch was running: the
server's ``emotion_inference_duration_seconds`` sum over the row's wall time, which holds the card's sleep and
the runner's own work around it (padding the batch, the fake outputs, the sleep's wake-up: 4.6-7 ms per batch
of 15 in the committed run, its measured run time above the curve). Near 1, the runner (mostly the card) is
the limit; well below 1, the front end or the client is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import (
    TABLE_FLAGS,
    closed_loop,
    cpu_flags,
    load_average,
    machine_description,
    process_cpu_s,
    scrape,
    speech_like,
    summarize,
)
from benchmarks.suite.null_model import build_null_model
from benchmarks.suite.server_process import ServerProcess

CLIP_S = 3.75
RATE = 16000
#: ``--cards`` default: label=emulated-gpu spec pairs (module docstring).
DEFAULT_CARDS = "estimate=;front-end-bound=ms_per_s=0.05,launch_ms=1"


def parse_cards(text: str) -> list[tuple[str, str]]:
    """``'label=spec;label=spec'`` -> [(label, spec)]; a spec is ``--emulated-gpu``'s (empty: defaults)."""
    cards = []
    for part in (p.strip() for p in text.split(";")):
        if part:
            label, _, spec = part.partition("=")
            cards.append((label.strip(), spec.strip()))
    return cards


def _clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [speech_like(CLIP_S, rng).astype(np.float32) for _ in range(n)]


def _opus(clip: np.ndarray) -> bytes:
    cmd = ["ffmpeg", "-v", "error", "-f", "f32le", "-ar", str(RATE), "-ac", "1", "-i", "pipe:0",
           "-c:a", "libopus", "-b:a", "24k", "-f", "ogg", "pipe:1"]
    return subprocess.run(cmd, input=clip.astype("<f4").tobytes(), capture_output=True, check=True).stdout


def _requests(clips: Sequence[np.ndarray], kind: str) -> list[Any]:
    from emotion.v1 import emotion_pb2

    out = []
    for clip in clips:
        if kind == "pcm":
            pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes()
            audio = emotion_pb2.Audio(raw=emotion_pb2.RawAudio(
                data=pcm, encoding=emotion_pb2.PCM_ENCODING_S16LE, sample_rate_hz=RATE, channels=1))
        else:
            audio = emotion_pb2.Audio(encoded=_opus(clip))
        out.append(emotion_pb2.RecognizeRequest(audio=audio))
    return out


def _cpu_flags() -> str:
    flags = cpu_flags(TABLE_FLAGS)
    if flags is None:
        return "unknown"
    return " ".join(flags) or "none of avx2/avx512"


def _row(srv: ServerProcess, card: str, kind: str, requests: list[Any], concurrency: int, run_s: float,
         target_rt: float, warm_s: float = 3.0) -> dict[str, Any]:
    audio_s = [CLIP_S] * len(requests)
    # Warm the path (connections, decoder, the batcher's latency model) before measuring.
    asyncio.run(closed_loop(srv.target, requests, audio_s, concurrency, warm_s))
    load = round(load_average()[0], 2)
    before, cpu0 = scrape(srv.metrics_url), process_cpu_s(srv.pid)
    records, wall = asyncio.run(closed_loop(srv.target, requests, audio_s, concurrency, run_s))
    after, cpu1 = scrape(srv.metrics_url), process_cpu_s(srv.pid)
    result = summarize(f"{kind} {CLIP_S:g} s", "closed", concurrency, records, wall, before, after)
    row = result.to_row()
    cpu_per_request_ms = 1e3 * (cpu1 - cpu0) / max(1, result.ok)
    padded_s = after.get(("emotion_padded_audio_seconds_total", ()), 0.0) - before.get(
        ("emotion_padded_audio_seconds_total", ()), 0.0)
    need_rps = target_rt / CLIP_S
    device_s = after.get(("emotion_inference_duration_seconds_sum", ()), 0.0) - before.get(
        ("emotion_inference_duration_seconds_sum", ()), 0.0)
    row.update(card=card, input=kind, device_busy=round(device_s / wall, 3), load_1m=load,
               padded_over_real=round(padded_s / max(1e-9, result.ok * CLIP_S), 3),
               server_cpu_s=round(cpu1 - cpu0, 2),
               server_cpu_ms_per_request=round(cpu_per_request_ms, 3),
               server_cpu_cores_used=round((cpu1 - cpu0) / wall, 2),
               cores_for_target=round(need_rps * cpu_per_request_ms / 1e3, 2),
               target_rps=round(need_rps, 1))
    print(json.dumps(row), flush=True)
    return row


def _table(rows: Sequence[dict[str, Any]], target_rt: float) -> list[str]:
    lines = [
        "| card | input | load 1m | concurrency | ok | errors | req/s | audio-s/s (x real time) | "
        "mean batch (server) | padding waste | padded / real audio | p50 ms | p99 ms | runner busy | "
        "server CPU ms/req | server cores busy | "
        f"cores for {target_rt:,.0f} x |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.get('card', 'estimate')} | {r['input']} {CLIP_S:g} s | {r['load_1m']:.2f} | "
            f"{r['offered']:g} | {r['ok']} | "
            f"{r['errors'] + r['rejected']} | {r['rps']:.1f} | {r['audio_s_per_s']:.0f} | "
            f"{r.get('server_mean_batch_size', float('nan')):.2f} | {100 * r['padding_waste']:.1f}% | "
            f"{r['padded_over_real']:.3f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r.get('device_busy', float('nan')):.2f} | "
            f"{r['server_cpu_ms_per_request']:.2f} | "
            f"{r['server_cpu_cores_used']:.2f} | {r['cores_for_target']:.2f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/emulated_gpu")
    parser.add_argument("--run-s", type=float, default=30.0, help="seconds per row")
    parser.add_argument("--warm-s", type=float, default=3.0, help="unmeasured seconds before each row")
    parser.add_argument("--concurrency", type=int, default=128, help="calls in flight")
    parser.add_argument("--clips", type=int, default=32, help="distinct clips per input type")
    parser.add_argument("--target-rt", type=float, default=2000.0, help="GPU rate to feed, x real time")
    parser.add_argument("--inputs", default="pcm,opus")
    parser.add_argument("--cards", default=DEFAULT_CARDS,
                        help="emulated cards, 'label=spec;label=spec' (spec: --emulated-gpu's key=value "
                        "list)")
    parser.add_argument("--server-args", default="--max-batch-size 64",
                        help="extra server flags (after --engine emulated-gpu)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = tuple(round(x, 2) for x in load_average())
    clips = _clips(args.clips)
    server_args = ["--engine", "emulated-gpu", "--warmup", "--warmup-max-s", "4", *args.server_args.split()]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="null-model-") as tmp:
        repo = build_null_model(tmp)
        requests = {kind: _requests(clips, kind) for kind in args.inputs.split(",")}
        for card, spec in parse_cards(args.cards):
            card_args = [*server_args, *(["--emulated-gpu", spec] if spec else [])]
            with ServerProcess(repo, card_args) as srv:
                for kind, reqs in requests.items():
                    rows.append(_row(srv, card, kind, reqs, args.concurrency, args.run_s, args.target_rt,
                                     args.warm_s))
    ended = tuple(round(x, 2) for x in load_average())
    command = "python -m benchmarks.emulated_gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_description()
    meta = {"command": command, "server_args": server_args, "cards": dict(parse_cards(args.cards)),
            "machine": machine, "cpu_flags": _cpu_flags(),
            "load_start": started, "load_end": ended}
    (out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=2, default=str) + "\n")
    report = [
        "# The server through an emulated GPU (issue 24)", "",
        f"- command: `{command}`",
        f"- server: `python -m emotion2vec_serving.server <null model> {' '.join(server_args)}` with "
        "`--emulated-gpu SPEC` per card: "
        + "; ".join(f"{label}: `{spec or '(defaults)'}`" for label, spec in parse_cards(args.cards))
        + " (the default curve is an estimate, see server/runtime/engines/emulated_gpu.py; "
        "benchmarks/emulated_gpu.py says what each card is for)",
        f"- machine: {machine['cpu']}, {machine['cores']} cores ({os.cpu_count()} usable), "
        f"{machine['memory_gb']} GB; CPU flags: {_cpu_flags()}; {platform.platform()}; Python "
        f"{machine['python']}, grpcio {machine['grpc']}, numpy {machine['numpy']}",
        f"- load average at start {started}, at end {ended}; the client runs on the same cores as the server"
        + (", and the machine was shared with other work during the run, so these are lower bounds on what "
           "the server alone would sustain" if max(started[0], ended[0]) > (os.cpu_count() or 1) else ""),
        f"- each row: {args.run_s:g} s closed loop after {args.warm_s:g} s of warm-up, {args.clips} "
        "distinct clips of "
        f"{CLIP_S:g} s; CPU per request = server process CPU time (user + system) / requests answered; "
        f"cores for {args.target_rt:,.0f} x real time = {args.target_rt:g} / {CLIP_S:g} requests/s x CPU "
        "per request; padding waste is the batcher's (between items of one batch), padded / real audio adds "
        "the length buckets' own padding (every clip runs at its bucket's length)", "",
        *_table(rows, args.target_rt), "",
    ]
    (out / "report.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
