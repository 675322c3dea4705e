"""Markdown report and PNG plots from the suite's results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = [
    ("label", "configuration", "{}"),
    ("loadavg_1m", "load 1m", "{:.2f}"),
    ("offered", "offered", "{:g}"),
    ("ok", "ok", "{}"),
    ("rejected", "rejected", "{}"),
    ("errors", "errors", "{}"),
    ("audio_s_per_s", "audio-s/s", "{:.2f}"),
    ("rps", "req/s", "{:.1f}"),
    ("p50_ms", "p50 ms", "{:.0f}"),
    ("p95_ms", "p95 ms", "{:.0f}"),
    ("p99_ms", "p99 ms", "{:.0f}"),
    ("mean_batch_size", "mean batch", "{:.2f}"),
    ("padding_waste", "padding waste", "{:.1%}"),
    ("server_peak_rss_mb", "server peak RSS MB", "{:.0f}"),
    ("batch_sizes", "batches by size", "{}"),
]
SECTION_TITLES = {
    "offline": "Offline limit (ONNX Runtime, clips sorted by length, no server)",
    "funasr": "FunASR AutoModel.generate, one clip at a time (PyTorch)",
    "inprocess": "Batching policies in-process (one runner, same clips; backlog = saturated)",
    "server": "Through the gRPC server, closed loop (saturated)",
    "load": "Offered load against latency (open loop, Poisson, this batcher)",
    "config": "Batcher settings sweep (closed loop)",
    "threads": "Intra-op threads x runner instances",
    "null": "Null model: gRPC + batcher overhead (short clips)",
    "int8": "int8 against fp32",
}


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def table(rows: Sequence[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if any(not _is_empty(r.get(c[0])) for r in rows)]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(key), spec) for key, _, spec in cols) + " |")
    return "\n".join(lines)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _first(rows: Sequence[dict[str, Any]], section: str, label: str | None = None) -> dict[str, Any] | None:
    for r in rows:
        if r["section"] == section and (label is None or r["label"] == label):
            return r
    return None


def targets(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of issue 7 that this run measured."""
    out: list[tuple[str, str, str]] = []
    ours = _first(rows, "server", "this batcher (defaults)")
    offline = max((r["audio_s_per_s"] for r in rows if r["section"] == "offline"), default=float("nan"))
    funasr = _first(rows, "funasr")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    if ours and not math.isnan(offline):
        f = ours["audio_s_per_s"] / offline
        out.append(
            (
                "saturated throughput >= 0.9 x offline limit",
                f"{ours['audio_s_per_s']:.2f} / {offline:.2f} audio-s/s = {f:.2f} x",
                verdict(f >= 0.9),
            )
        )
    if ours and funasr:
        f = ours["audio_s_per_s"] / funasr["audio_s_per_s"]
        out.append(
            (
                ">= 2 x FunASR sequential",
                f"{ours['audio_s_per_s']:.2f} / {funasr['audio_s_per_s']:.2f} audio-s/s = {f:.2f} x",
                verdict(f >= 2.0),
            )
        )
    if ours and not _is_empty(ours.get("padding_waste")):
        out.append(
            ("padding waste <= 10 %", f"{ours['padding_waste']:.1%}", verdict(ours["padding_waste"] <= 0.10))
        )
    null = _first(rows, "null", "null model, this batcher")
    if null:
        out.append(
            (">= 2,000 RPC/s with a null model", f"{null['rps']:.0f} req/s", verdict(null["rps"] >= 2000))
        )
    if ours and not _is_empty(ours.get("server_peak_rss_mb")):
        out.append(
            (
                "server RSS <= 1.6 GB",
                f"peak {ours['server_peak_rss_mb']:.0f} MB",
                verdict(ours["server_peak_rss_mb"] <= 1600),
            )
        )
    int8_offline = max(
        (r["audio_s_per_s"] for r in rows if r["section"] == "int8" and r["mode"] == "offline"),
        default=float("nan"),
    )
    if not math.isnan(int8_offline) and not math.isnan(offline):
        f = int8_offline / offline
        out.append(
            (
                "int8 >= 1.8 x fp32 throughput (offline, best batch size)",
                f"{int8_offline:.2f} / {offline:.2f} audio-s/s = {f:.2f} x",
                verdict(f >= 1.8),
            )
        )
    int8 = _first(rows, "int8", "int8, this batcher (defaults)")
    if ours and int8:
        f = int8["audio_s_per_s"] / ours["audio_s_per_s"]
        out.append(
            (
                "int8 >= 1.8 x fp32 throughput (server)",
                f"{int8['audio_s_per_s']:.2f} / {ours['audio_s_per_s']:.2f} audio-s/s = {f:.2f} x",
                verdict(f >= 1.8),
            )
        )
    return out


def draw_plots(out: Path, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Small PNGs: throughput and latency against offered load; throughput of every configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    load = sorted((r for r in rows if r["section"] == "load"), key=lambda r: r["offered"])
    if load:
        x = [r["offered"] for r in load]
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
        ax.plot(x, [r["rps"] for r in load], "o-", label="served req/s")
        ax.plot(x, x, ":", color="grey", label="offered")
        ax.set_xlabel("offered load, req/s")
        ax.set_ylabel("req/s")
        ax.set_title("Throughput against offered load")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_load.png")
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            ax.plot(x, [r[key] for r in load], "o-", label=key.split("_")[0])
        ax.set_yscale("log")
        ax.set_xlabel("offered load, req/s")
        ax.set_ylabel("latency, ms")
        ax.set_title("Latency percentiles against offered load")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency_vs_load.png")
        plt.close(fig)
        written += ["throughput_vs_load.png", "latency_vs_load.png"]
    bars = [
        r
        for r in rows
        if r["section"] in ("offline", "funasr", "inprocess", "server", "int8") and "req/s," not in r["label"]
    ]
    if bars:
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(bars) + 1.2), dpi=80)
        ax.barh([r["label"] for r in bars], [r["audio_s_per_s"] for r in bars])
        ax.invert_yaxis()
        ax.set_xlabel("audio-seconds per second")
        ax.set_title("Saturated throughput")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "throughput_by_config.png")
        plt.close(fig)
        written.append("throughput_by_config.png")
    return written


def write_report(out: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]], plots: bool = True) -> Path:
    """Write ``report.md`` (and, with ``plots``, the PNGs) into ``out``; return the report's path."""
    m = meta["machine"]
    lines = [
        "# Benchmark report",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {m['platform']};"
        f" Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, grpcio {m['grpc']}",
        f"- load average at start {tuple(round(x, 2) for x in m['loadavg'])}, at end "
        f"{tuple(round(x, 2) for x in meta['loadavg_end'])} (each row has the 1-minute load before it)",
        f"- model: `{meta['model_repo']}`; clips: {meta['clips']} ({meta['mix']} mix, "
        f"{meta['clip_audio_s']} s of audio, speech-like synthetic, raw f32le 16 kHz);"
        f" elapsed {meta['elapsed_s']} s",
        "",
    ]
    goals = targets(rows)
    if goals:
        lines += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {ok} |" for t, v, ok in goals]
        lines.append("")
    for section, title in SECTION_TITLES.items():
        part = [r for r in rows if r["section"] == section]
        if part:
            lines += [f"## {title}", "", table(part), ""]
    server_rows = [r for r in rows if r.get("server_args") is not None]
    if server_rows:
        lines += [
            "## Server-side detail (from /metrics deltas)",
            "",
            "| configuration | server args | batches | mean batch | batch-size buckets | mean inference ms"
            " | mean queue wait ms | server CPU ms/req | rejections |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in server_rows:
            lines.append(
                f"| {r['label']} | `{r.get('server_args') or '(defaults)'}`"
                f" | {_fmt(r.get('server_batches'), '{:g}')}"
                f" | {_fmt(r.get('server_mean_batch_size'), '{:.2f}')}"
                f" | {r.get('server_batch_size_buckets', '')}"
                f" | {_fmt(r.get('server_mean_inference_ms'), '{:.1f}')}"
                f" | {_fmt(r.get('server_mean_queue_wait_ms'), '{:.1f}')}"
                f" | {_fmt(r.get('server_cpu_ms_per_req'), '{:.2f}')}"
                f" | {r.get('server_rejections', '')} |"
            )
        lines.append("")
    if plots:
        written = draw_plots(out, rows)
        if written:
            lines += ["## Plots", ""] + [f"![{p}]({p})" for p in written] + [""]
    if meta.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
