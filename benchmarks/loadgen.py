"""Load generator for the emotion gRPC server: open loop (Poisson arrivals) and closed loop (N clients).

Drives the real server through the generated stubs with grpc.aio, with a seeded length mix of
speech-like synthetic audio sent as raw PCM f32le at 16 kHz (so that decoding costs nothing worth
measuring) or, optionally, as encoded WAV. It reports throughput (audio-seconds and requests per second),
latency percentiles, rejections, and, from the server's Prometheus endpoint scraped before and after the
run, padding waste and the batch-size distribution; with the server's pid it also samples its RSS.

Run against a server you started yourself::

    python -m benchmarks.loadgen --target localhost:50051 --metrics-url http://localhost:9090/metrics \\
        --mode open --rate 4 --duration 30 --mix realistic --server-pid <pid>

Latency in open loop is measured from each request's *scheduled* arrival, so a client that falls behind
does not hide queueing (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import multiprocessing
import os
import platform
import re
import threading
import time
import urllib.request
import wave
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SAMPLE_RATE_HZ = 16000

# Length mixes, in seconds: log-normal (median, sigma) clipped to [lo, hi]. "realistic" resembles
# call-centre / voice-note utterances; "short" resembles command-and-control clips.
MIXES: dict[str, tuple[float, float, float, float]] = {
    "realistic": (3.5, 0.75, 1.0, 30.0),
    "short": (1.2, 0.35, 0.5, 3.0),
}


# ---------------------------------------------------------------------------------------------- workload


def clip_lengths_s(mix: str, n: int, seed: int) -> list[float]:
    """``n`` clip durations in seconds drawn from the named mix (seeded, reproducible)."""
    if mix.startswith("fixed:"):
        return [float(mix.split(":", 1)[1])] * n
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; choose one of {sorted(MIXES)} or fixed:<seconds>")
    median, sigma, lo, hi = MIXES[mix]
    rng = np.random.default_rng(seed)
    values = np.exp(rng.normal(math.log(median), sigma, size=n))
    # Round to whole 20 ms frames: real clients send arbitrary lengths, but frame-rounding keeps
    # equal-shape batching from being *impossible* by construction (it is still rare: that is the point).
    return [round(float(v) * 50) / 50 for v in np.clip(values, lo, hi)]


def speech_like(
    duration_s: float, rng: np.random.Generator, sample_rate_hz: int = SAMPLE_RATE_HZ
) -> np.ndarray:
    """A synthetic speech-like float32 signal: voiced syllables with a moving pitch, pauses, low noise.

    Not speech, but with speech's gross statistics (syllable rate ~4 Hz, 90-250 Hz pitch with harmonics,
    silences), which is what matters for timing: the models' cost depends only on the length.
    """
    n = max(1, round(duration_s * sample_rate_hz))
    out = np.zeros(n, dtype=np.float32)
    base_f0 = rng.uniform(90.0, 220.0)
    pos = int(rng.uniform(0.0, 0.15) * sample_rate_hz)
    while pos < n:
        syl = int(rng.uniform(0.08, 0.3) * sample_rate_hz)
        end = min(n, pos + syl)
        t = np.arange(end - pos, dtype=np.float64) / sample_rate_hz
        f0 = base_f0 * (1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(1.0, 4.0) * t + rng.uniform(0, 6.28)))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate_hz
        harmonics = sum(np.sin(k * phase) / k for k in range(1, 9))
        envelope = np.hanning(end - pos) if end - pos > 1 else np.ones(1)
        out[pos:end] += (0.3 * rng.uniform(0.3, 1.0) * envelope * harmonics).astype(np.float32)
        gap = rng.uniform(0.3, 0.6) if rng.random() < 0.1 else rng.uniform(0.02, 0.12)
        pos = end + int(gap * sample_rate_hz)
    out += (0.003 * rng.standard_normal(n)).astype(np.float32)
    return np.clip(out, -1.0, 1.0)


def make_clips(mix: str, n: int, seed: int) -> list[np.ndarray]:
    """The seeded clip set that every engine and baseline is measured on."""
    rng = np.random.default_rng(seed + 1)
    return [speech_like(d, rng) for d in clip_lengths_s(mix, n, seed)]


def wav_bytes(samples: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> bytes:
    """16-bit PCM WAV encoding of a float32 signal."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate_hz)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def build_requests(clips: Sequence[np.ndarray], audio_format: str = "f32") -> list[Any]:
    """RecognizeRequest messages for the clips, built once so that the measurement excludes their cost."""
    from emotion.v1 import emotion_pb2

    requests = []
    for clip in clips:
        if audio_format == "f32":
            raw = emotion_pb2.RawAudio(
                data=clip.astype("<f4").tobytes(),
                encoding=emotion_pb2.PCM_ENCODING_F32LE,
                sample_rate_hz=SAMPLE_RATE_HZ,
                channels=1,
            )
            audio = emotion_pb2.Audio(raw=raw)
        elif audio_format == "wav":
            audio = emotion_pb2.Audio(encoded=wav_bytes(clip))
        else:
            raise ValueError(f"unknown audio format {audio_format!r} (f32 or wav)")
        requests.append(emotion_pb2.RecognizeRequest(audio=audio))
    return requests


# ---------------------------------------------------------------------------------------------- drivers


@dataclass
class RequestRecord:
    """One request as the client saw it; times are client monotonic seconds."""

    scheduled: float
    end: float
    audio_s: float
    code: str  # grpc StatusCode name, "OK" on success
    batch_size: int = 0
    queue_ms: float = 0.0
    inference_ms: float = 0.0

    @property
    def latency_s(self) -> float:
        return self.end - self.scheduled


async def _call(stub: Any, request: Any, audio_s: float, scheduled: float, timeout_s: float) -> RequestRecord:
    import grpc

    try:
        response = await stub.Recognize(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        return RequestRecord(scheduled, time.monotonic(), audio_s, exc.code().name)
    timing = response.timing
    return RequestRecord(
        scheduled, time.monotonic(), audio_s, "OK", timing.batch_size, timing.queue_ms, timing.inference_ms
    )


def _channel(target: str) -> Any:
    import grpc

    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    return grpc.aio.insecure_channel(target, options=options)


async def open_loop(
    target: str,
    requests: Sequence[Any],
    audio_s: Sequence[float],
    rate_rps: float,
    duration_s: float,
    seed: int = 0,
    timeout_s: float = 60.0,
) -> tuple[list[RequestRecord], float]:
    """Poisson arrivals at ``rate_rps`` for ``duration_s``, cycling through ``requests``.

    Returns the records and the wall time from the first arrival to the last completion.
    """
    from emotion.v1 import emotion_pb2_grpc

    rng = np.random.default_rng(seed + 7)
    async with _channel(target) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        await channel.channel_ready()
        tasks: list[asyncio.Task[RequestRecord]] = []
        start = time.monotonic()
        t = 0.0
        i = 0
        while True:
            t += float(rng.exponential(1.0 / rate_rps))
            if t > duration_s:
                break
            delay = start + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            k = i % len(requests)
            tasks.append(asyncio.create_task(_call(stub, requests[k], audio_s[k], start + t, timeout_s)))
            i += 1
        records = list(await asyncio.gather(*tasks))
    wall = (max(r.end for r in records) - start) if records else duration_s
    return records, wall


async def closed_loop(
    target: str,
    requests: Sequence[Any],
    audio_s: Sequence[float],
    concurrency: int,
    duration_s: float,
    offset: int = 0,
    timeout_s: float = 60.0,
    max_requests: int | None = None,
) -> tuple[list[RequestRecord], float]:
    """``concurrency`` clients, each sending its next request as soon as the previous one returns.

    New requests stop after ``duration_s`` (or once ``max_requests`` were sent); the wall time runs until
    the last one returns.
    """
    from emotion.v1 import emotion_pb2_grpc

    records: list[RequestRecord] = []
    async with _channel(target) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        await channel.channel_ready()
        start = time.monotonic()
        stop_at = start + duration_s

        async def client(c: int) -> None:
            i = offset + c
            while time.monotonic() < stop_at and (max_requests is None or i - offset < max_requests):
                k = i % len(requests)
                records.append(await _call(stub, requests[k], audio_s[k], time.monotonic(), timeout_s))
                i += concurrency

        await asyncio.gather(*(client(c) for c in range(concurrency)))
    wall = (max(r.end for r in records) - start) if records else duration_s
    return records, wall


def _closed_loop_worker(
    args: tuple[str, str, str, int, int, int, float, int],
) -> tuple[list[dict[str, Any]], float]:
    target, mix, audio_format, n_clips, seed, concurrency, duration_s, offset = args
    clips = make_clips(mix, n_clips, seed)
    requests = build_requests(clips, audio_format)
    audio_s = [len(c) / SAMPLE_RATE_HZ for c in clips]
    records, _ = asyncio.run(closed_loop(target, requests, audio_s, concurrency, duration_s, offset))
    # Monotonic clocks are system-wide on Linux, so records from several processes can be merged.
    return [asdict(r) for r in records], 0.0


def closed_loop_processes(
    target: str,
    mix: str,
    audio_format: str,
    n_clips: int,
    seed: int,
    concurrency: int,
    duration_s: float,
    processes: int,
) -> tuple[list[RequestRecord], float]:
    """Closed loop spread over several client processes, for loads one Python client cannot generate."""
    per = [concurrency // processes + (1 if p < concurrency % processes else 0) for p in range(processes)]
    jobs = [
        (target, mix, audio_format, n_clips, seed, c, duration_s, sum(per[:p]))
        for p, c in enumerate(per)
        if c > 0
    ]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(jobs)) as pool:
        parts = pool.map(_closed_loop_worker, jobs)
    records = [RequestRecord(**d) for part, _ in parts for d in part]
    if not records:
        return records, duration_s
    return records, max(r.end for r in records) - min(r.scheduled for r in records)


# ---------------------------------------------------------------------------------------------- server side


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    """Every sample of a Prometheus text endpoint, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _sum(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return _sum(after, name, **labels) - _sum(before, name, **labels)


def _histogram_delta(before: Samples, after: Samples, name: str) -> dict[str, float]:
    """Per-bucket (non-cumulative) counts added between two scrapes, keyed by upper bound."""
    cumulative: dict[float, float] = {}
    for (n, lab), v in after.items():
        if n == f"{name}_bucket":
            le = dict(lab)["le"]
            cumulative[float(le)] = v - before.get((n, lab), 0.0)
    out: dict[str, float] = {}
    prev = 0.0
    for le in sorted(cumulative):
        out["+Inf" if math.isinf(le) else f"{le:g}"] = cumulative[le] - prev
        prev = cumulative[le]
    return out


class RssSampler:
    """Samples VmRSS and PSS of a process every ``interval_s`` on a thread; reports the peaks seen.

    PSS (``Pss`` in ``/proc/PID/smaps_rollup``) counts a page mapped twice once; VmRSS counts it per mapping
    (the adaptive runner maps its one pre-packed copy of the weights in two sessions).
    """

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.peak_pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read_mb(pid: int, field_name: str = "VmRSS") -> float:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(field_name + ":"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return 0.0

    @staticmethod
    def read_pss_mb(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return 0.0

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, self.read_mb(self.pid))
        self.peak_pss_mb = max(self.peak_pss_mb, self.read_pss_mb(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _stat_cpu_s(path: str) -> tuple[str, float] | None:
    """(name, user + system CPU seconds) from a /proc ``stat`` file (a process's or one of its threads');
    None when it cannot be read (the process or thread has ended)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    # Fields after the command name: state is [0], utime [11], stime [12] (in clock ticks).
    fields = text.rsplit(")", 1)[1].split()
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by a process (all its threads), from /proc/<pid>/stat."""
    stat = _stat_cpu_s(f"/proc/{pid}/stat")
    return float("nan") if stat is None else stat[1]


def thread_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (thread name, user + system CPU seconds so far) for every thread of a process, from
    /proc/<pid>/task/<tid>/stat; threads that end while being read are left out."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        stat = _stat_cpu_s(f"/proc/{pid}/task/{tid}/stat")
        if stat is not None:
            out[int(tid)] = stat
    return out


#: How ``thread_groups`` names a server's threads: its main thread runs the event loop; gRPC's C core names
#: its own threads; the rest are Python threads (model runners, grpc.aio's completion-queue poller).
THREAD_GROUPS = ("event loop thread", "gRPC core threads", "other Python threads")


def thread_groups(pid: int, before: dict[int, tuple[str, float]],
                  after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per group of ``THREAD_GROUPS`` between two ``thread_cpu_s`` readings of ``pid``."""
    groups = dict.fromkeys(THREAD_GROUPS, 0.0)
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        if tid == pid:
            groups[THREAD_GROUPS[0]] += used
        elif name.startswith(("event_engine", "grpc")):
            groups[THREAD_GROUPS[1]] += used
        else:
            groups[THREAD_GROUPS[2]] += used
    return groups


# ---------------------------------------------------------------------------------------------- results


@dataclass
class LoadResult:
    """Summary of one load run; ``to_row`` flattens it for the tables."""

    label: str
    mode: str  # "open" | "closed" | "inprocess" | "offline" | "funasr"
    offered: float  # open: requests/s offered; closed: concurrency
    requests: int
    ok: int
    rejected: int  # RESOURCE_EXHAUSTED (queue full) + UNAVAILABLE
    errors: int  # anything else (DEADLINE_EXCEEDED included)
    wall_s: float
    audio_s_per_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch_size: float = float("nan")
    batch_sizes: dict[str, float] = field(default_factory=dict)  # batch size -> number of batches
    padding_waste: float = float("nan")  # 1 - useful/padded audio
    server_rss_mb: float = float("nan")
    server_peak_rss_mb: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("extra")
        row["batch_sizes"] = " ".join(f"{k}:{v:g}" for k, v in self.batch_sizes.items() if v)
        row.update(self.extra)
        return row


def percentile_ms(values_s: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values_s) * 1e3, q)) if len(values_s) else float("nan")


def summarize(
    label: str,
    mode: str,
    offered: float,
    records: Sequence[RequestRecord],
    wall_s: float,
    before: Samples | None = None,
    after: Samples | None = None,
) -> LoadResult:
    """Client-side numbers from the records, server-side numbers from two metric scrapes."""
    ok = [r for r in records if r.code == "OK"]
    rejected = sum(r.code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE") for r in records)
    latencies = [r.latency_s for r in ok]
    # Per-request batch sizes from the responses' Timing; a batch of b contributes b requests.
    per_request = Counter(r.batch_size for r in ok if r.batch_size > 0)
    batches = {str(b): per_request[b] / b for b in sorted(per_request)}
    n_batches = sum(batches.values())
    result = LoadResult(
        label=label,
        mode=mode,
        offered=offered,
        requests=len(records),
        ok=len(ok),
        rejected=rejected,
        errors=len(records) - len(ok) - rejected,
        wall_s=wall_s,
        audio_s_per_s=sum(r.audio_s for r in ok) / wall_s if wall_s > 0 else 0.0,
        rps=len(ok) / wall_s if wall_s > 0 else 0.0,
        p50_ms=percentile_ms(latencies, 50),
        p95_ms=percentile_ms(latencies, 95),
        p99_ms=percentile_ms(latencies, 99),
        mean_batch_size=(len(ok) / n_batches) if n_batches else float("nan"),
        batch_sizes=batches,
    )
    if before is not None and after is not None:
        padded = _delta(before, after, "emotion_padded_audio_seconds_total")
        useful = _delta(before, after, "emotion_useful_audio_seconds_total")
        if padded > 0:
            # Both counters sum float seconds in different orders: no padding can come out as -2e-16.
            result.padding_waste = max(0.0, 1.0 - useful / padded)
        count = _delta(before, after, "emotion_batch_size_count")
        if count > 0:
            result.extra["server_batches"] = count
            result.extra["server_mean_batch_size"] = _delta(before, after, "emotion_batch_size_sum") / count
            result.extra["server_batch_size_buckets"] = " ".join(
                f"le{k}:{v:g}" for k, v in _histogram_delta(before, after, "emotion_batch_size").items() if v
            )
        inf_count = _delta(before, after, "emotion_inference_duration_seconds_count")
        if inf_count > 0:
            result.extra["server_mean_inference_ms"] = (
                1e3 * _delta(before, after, "emotion_inference_duration_seconds_sum") / inf_count
            )
        qw = _delta(before, after, "emotion_queue_wait_seconds_count")
        if qw > 0:
            result.extra["server_mean_queue_wait_ms"] = (
                1e3 * _delta(before, after, "emotion_queue_wait_seconds_sum") / qw
            )
        rejections = {
            dict(lab).get("reason", ""): v - before.get((n, lab), 0.0)
            for (n, lab), v in after.items()
            if n == "emotion_rejections_total"
        }
        result.extra["server_rejections"] = " ".join(f"{k}:{v:g}" for k, v in rejections.items() if v)
    return result


#: The instruction-set flags that matter to ONNX Runtime's kernels, in the order reports list them.
FLAGS_OF_INTEREST = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                     "amx_bf16", "amx_int8", "f16c")
#: The shorter set the performance tables print.
TABLE_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile")


def cpu_flags(wanted: Sequence[str] | None = FLAGS_OF_INTEREST) -> list[str] | None:
    """The CPU's flags from /proc/cpuinfo: those of ``wanted`` it has, in ``wanted``'s order (``None``:
    every flag, in /proc/cpuinfo's order); ``None`` when /proc/cpuinfo cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((ln for ln in f if ln.startswith("flags")), None)
    except OSError:
        return None
    if line is None:
        return None
    have = line.split(":", 1)[1].split()
    if wanted is None:
        return have
    present = set(have)
    return [flag for flag in wanted if flag in present]


def machine_description() -> dict[str, Any]:
    """Where the numbers were measured: CPU model, cores, memory, load average, library versions."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            match = re.search(r"model name\s*:\s*(.+)", f.read())
            if match:
                cpu = match.group(1).strip()
    except OSError:
        pass
    mem_gb = 0.0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem_gb = int(f.readline().split()[1]) / 1024 / 1024
    except OSError:
        pass
    versions: dict[str, str] = {}
    for mod in ("onnxruntime", "grpc", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = "n/a"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": load_average(),
        **versions,
    }


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat (busy: every state
    but idle and iowait). Two readings give the share of the machine a run kept busy."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    total = sum(ticks[:8])  # guest time is already counted in user
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load average: numbers measured under a high load are noise, so report it."""
    return os.getloadavg()


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="localhost:50051", help="server host:port")
    parser.add_argument("--metrics-url", default="", help="e.g. http://localhost:9090/metrics (optional)")
    parser.add_argument("--server-pid", type=int, default=0, help="sample this process's RSS (optional)")
    parser.add_argument("--mode", choices=("open", "closed"), default="closed")
    parser.add_argument("--rate", type=float, default=2.0, help="open loop: offered requests per second")
    parser.add_argument("--concurrency", type=int, default=4, help="closed loop: concurrent clients")
    parser.add_argument("--processes", type=int, default=1, help="closed loop: client processes")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of offered load")
    parser.add_argument("--mix", default="realistic", help=f"{sorted(MIXES)} or fixed:<seconds>")
    parser.add_argument("--clips", type=int, default=200, help="distinct clips, cycled")
    parser.add_argument("--format", dest="audio_format", choices=("f32", "wav"), default="f32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    before = scrape(args.metrics_url) if args.metrics_url else None
    sampler = RssSampler(args.server_pid) if args.server_pid else None
    if sampler:
        sampler.__enter__()
    try:
        if args.mode == "closed" and args.processes > 1:
            records, wall = closed_loop_processes(
                args.target,
                args.mix,
                args.audio_format,
                args.clips,
                args.seed,
                args.concurrency,
                args.duration,
                args.processes,
            )
            offered = float(args.concurrency)
        else:
            clips = make_clips(args.mix, args.clips, args.seed)
            requests = build_requests(clips, args.audio_format)
            audio_s = [len(c) / SAMPLE_RATE_HZ for c in clips]
            if args.mode == "open":
                records, wall = asyncio.run(
                    open_loop(args.target, requests, audio_s, args.rate, args.duration, args.seed)
                )
                offered = args.rate
            else:
                records, wall = asyncio.run(
                    closed_loop(args.target, requests, audio_s, args.concurrency, args.duration)
                )
                offered = float(args.concurrency)
    finally:
        if sampler:
            sampler.__exit__()
    after = scrape(args.metrics_url) if args.metrics_url else None
    result = summarize(f"{args.mode}@{offered:g}", args.mode, offered, records, wall, before, after)
    if sampler:
        result.server_peak_rss_mb = sampler.peak_mb
        result.server_rss_mb = RssSampler.read_mb(args.server_pid)
    result.extra["loadavg_after"] = " ".join(f"{x:.2f}" for x in load_average())
    if args.json:
        print(json.dumps(result.to_row(), default=str))
    else:
        for k, v in result.to_row().items():
            print(f"{k:>28}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
