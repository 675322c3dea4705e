"""Soak: mixed traffic against a real server process for N minutes; the server's RSS every 10 s (issue 22, 6).

Starts ``python -m emotion2vec_serving.server`` (``ServerProcess``, the real CLI) on free ports and keeps a
mix of calls going from one client process (``--concurrency`` in flight):

- emotion.v1 Recognize over gRPC: good clips of mixed lengths (0.5-8 s) as raw f32le PCM;
- ``POST /v1/recognize`` over REST: the same clips as WAV files;
- OIP: ModelInfer over gRPC (WAVEFORM raw contents) and ``/v2/.../infer`` over REST (JSON data);
- bad requests of issue 22's defects 1-2: an OIP batch of 40,000 empty items (REST and gRPC), WAVEFORM
  ``[100000, 1]`` in JSON, shapes whose product overflows int64, JSON nested 5,000 deep, SAMPLE_RATE
  2**40, a gRPC message that is not protobuf; each must be refused (4xx / INVALID_ARGUMENT);
- a StreamRecognize of a few seconds now and then.

The server's RSS (``/proc/<pid>/status``) is sampled every ``--sample-s`` (10) seconds. Written under
``--out`` (``benchmarks/results/soak/``): ``soak-<stamp>.csv`` (one row per sample), ``soak-<stamp>.json``
(samples, counts, summary, machine) and ``soak-<stamp>.md`` (the command, CPU and flags, load average,
counts, and RSS growth after the warm-up: the goal is below 5 %)::

    python -m benchmarks.soak --model demo --minutes 30 [--concurrency 4] [--warmup-minutes 3] [-- flags]

Exit status 1 when RSS grew by 5 % or more after the warm-up, or a good call failed, or a bad one was
accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import platform
import sys
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import loadgen
from emotion2vec_serving.server.process import ServerProcess

GOAL_GROWTH = 0.05  # RSS growth after the warm-up, as a fraction of the RSS at the end of the warm-up

# ------------------------------------------------------------------------------------ server process


def rss_mb(server: ServerProcess) -> float:
    """The server's resident set size in MiB (Linux /proc), NaN elsewhere."""
    rss = server.rss_bytes()
    return float("nan") if rss is None else rss / (1024.0 * 1024.0)


def make_request(audio_s: float, seed: int = 0) -> object:
    """A Recognize request with ``audio_s`` of speech-like noise bursts as raw f32le PCM at 16 kHz."""
    from emotion.v1 import emotion_pb2 as pb

    rng = np.random.default_rng(seed)
    n = int(audio_s * 16000)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * np.arange(n) / 16000)
    samples = (0.2 * envelope * rng.standard_normal(n)).astype("<f4")
    raw = pb.RawAudio(
        data=samples.tobytes(), encoding=pb.PCM_ENCODING_F32LE, sample_rate_hz=16000, channels=1
    )
    return pb.RecognizeRequest(audio=pb.Audio(raw=raw))


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {cores} usable core(s), Python {platform.python_version()}, {platform.system()}"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def slope_per_min(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per minute."""
    pts = [(t, y) for t, y in zip(ts, ys, strict=True) if np.isfinite(y)]
    if len(pts) < 3:
        return float("nan")
    t, y = np.array(pts).T
    return float(np.polyfit(t, y, 1)[0] * 60.0)


def cpu_flags() -> list[str]:
    """The CPU's instruction-set flags that matter to ONNX Runtime's kernels (``loadgen.cpu_flags``; [] when
    /proc/cpuinfo cannot be read)."""
    return loadgen.cpu_flags() or []


# ------------------------------------------------------------------------------------------- traffic


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def clip(audio_s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(audio_s * 16000)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * np.arange(n) / 16000)
    return (0.2 * envelope * rng.standard_normal(n)).astype("<f4")


@dataclass
class Counts:
    good_ok: int = 0
    good_failed: int = 0
    bad_refused: int = 0
    bad_accepted: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def note(self, kind: str, good: bool, ok: bool, detail: str = "") -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if good:
            self.good_ok += ok
            self.good_failed += not ok
        else:  # a bad request is expected to be refused
            self.bad_refused += not ok
            self.bad_accepted += ok
        if good != ok and not any(f.startswith(kind + ":") for f in self.failures):  # the first of a kind
            self.failures.append(f"{kind}: {detail[:200]}")


class Traffic:
    """One kind of call after another, from a weighted cycle; every outcome noted in ``counts``."""

    LENGTHS_S = (0.5, 1.0, 2.0, 3.75, 5.0, 8.0)

    def __init__(self, server: ServerProcess, model: str) -> None:
        self.server = server
        self.model = model
        self.counts = Counts()
        self.clips = [clip(s, i) for i, s in enumerate(self.LENGTHS_S)]
        self.wavs = [wav_bytes(c) for c in self.clips]
        self.http = f"http://127.0.0.1:{server.http_port}"
        good = ["v1_grpc"] * 6 + ["v1_rest"] * 3 + ["oip_grpc"] * 3 + ["oip_rest"] * 2 + ["stream"]
        bad = ["bad_rest_items", "bad_rest_rows", "bad_grpc_items", "bad_shape", "bad_deep", "bad_rate",
               "bad_proto"]
        self.plan = good * 2 + bad  # about one bad request in five

    async def run(self, stop_at: float, concurrency: int) -> None:
        import aiohttp
        import grpc.aio

        options = [("grpc.max_send_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(self.server.target, options=options) as channel, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            self.channel, self.session = channel, session

            async def worker(w: int) -> None:
                i = w
                while time.monotonic() < stop_at:
                    kind = self.plan[i % len(self.plan)]
                    i += concurrency
                    try:
                        await getattr(self, kind)(i)
                    except Exception as exc:  # a client-side error is a failed call
                        self.counts.note(kind, kind.startswith(("v1", "oip", "stream")), False, repr(exc))

            await asyncio.gather(*(worker(w) for w in range(concurrency)))

    # ------------------------------------------------------------------ good calls

    async def _grpc(self, kind: str, good: bool, call: Any) -> None:
        import grpc.aio

        try:
            await call
        except grpc.aio.AioRpcError as exc:
            ok = exc.code() == grpc.StatusCode.OK
            detail = f"{exc.code().name} {exc.details()}"
            if not good and exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                ok, detail = True, f"refused with {exc.code().name}, not INVALID_ARGUMENT: {detail}"
            self.counts.note(kind, good, ok, detail)
            return
        self.counts.note(kind, good, True, "accepted")

    async def _rest(self, kind: str, good: bool, path: str, body: bytes,
                    content_type: str = "application/json") -> None:
        async with self.session.post(self.http + path, data=body,
                                     headers={"Content-Type": content_type}) as r:
            text = await r.text()
            ok = r.status == 200
            if not good and r.status != 400:
                ok = True  # refused with the wrong status counts as accepted (a defect)
            self.counts.note(kind, good, ok, f"{r.status} {text}")

    async def v1_grpc(self, i: int) -> None:
        from emotion.v1 import emotion_pb2_grpc

        request = make_request(self.LENGTHS_S[i % len(self.clips)], seed=i % len(self.clips))
        stub = emotion_pb2_grpc.EmotionRecognizerStub(self.channel)
        await self._grpc("v1_grpc", True, stub.Recognize(request, timeout=60))

    async def v1_rest(self, i: int) -> None:
        await self._rest("v1_rest", True, "/v1/recognize", self.wavs[i % len(self.wavs)], "audio/wav")

    async def oip_grpc(self, i: int) -> None:
        from emotion.oip import grpc_service_pb2 as pb
        from emotion.oip import grpc_service_pb2_grpc as pb_grpc

        wave_ = self.clips[i % len(self.clips)]
        request = pb.ModelInferRequest(model_name=self.model)
        request.inputs.add(name="WAVEFORM", datatype="FP32", shape=[1, len(wave_)])
        request.raw_input_contents.append(wave_.tobytes())
        stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        await self._grpc("oip_grpc", True, stub.ModelInfer(request, timeout=60))

    async def oip_rest(self, i: int) -> None:
        wave_ = self.clips[i % 3]  # JSON is large: the shorter clips
        body = {"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": [1, len(wave_)],
                            "data": wave_.tolist()}]}
        await self._rest("oip_rest", True, f"/v2/models/{self.model}/infer", json.dumps(body).encode())

    async def stream(self, i: int) -> None:
        from emotion.v1 import emotion_pb2 as pb
        from emotion.v1 import emotion_pb2_grpc

        audio = np.concatenate([self.clips[3], np.zeros(8000, "<f4"), self.clips[2]])

        async def requests() -> Any:
            yield pb.StreamRecognizeRequest(config=pb.StreamConfig(
                encoding=pb.PCM_ENCODING_F32LE, sample_rate_hz=16000, channels=1))
            for k in range(0, len(audio), 3200):
                yield pb.StreamRecognizeRequest(audio=audio[k:k + 3200].tobytes())

        stub = emotion_pb2_grpc.EmotionRecognizerStub(self.channel)

        async def consume() -> None:
            async for _ in stub.StreamRecognize(requests(), timeout=60):
                pass

        await self._grpc("stream", True, consume())

    # ------------------------------------------------------------------ bad calls (issue 22)

    async def bad_rest_items(self, i: int) -> None:
        doc = {"inputs": [{"name": "AUDIO", "datatype": "BYTES", "shape": [40000], "data": [""] * 40000}]}
        await self._rest("bad_rest_items", False, f"/v2/models/{self.model}/infer", json.dumps(doc).encode())

    async def bad_rest_rows(self, i: int) -> None:
        doc = {"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": [100000, 1],
                           "data": [[0.0]] * 100000}]}
        await self._rest("bad_rest_rows", False, f"/v2/models/{self.model}/infer", json.dumps(doc).encode())

    async def bad_grpc_items(self, i: int) -> None:
        from emotion.oip import grpc_service_pb2 as pb
        from emotion.oip import grpc_service_pb2_grpc as pb_grpc

        request = pb.ModelInferRequest(model_name=self.model)
        request.inputs.add(name="AUDIO", datatype="BYTES", shape=[40000]).contents.bytes_contents.extend(
            [b""] * 40000)
        stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        await self._grpc("bad_grpc_items", False, stub.ModelInfer(request, timeout=60))

    async def bad_shape(self, i: int) -> None:
        shape = ([4294967296, 4294967296], [2**62 + 1, 4], [10**30, 1])[i % 3]
        doc = {"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": shape, "data": [0.0]}]}
        await self._rest("bad_shape", False, f"/v2/models/{self.model}/infer", json.dumps(doc).encode())

    async def bad_deep(self, i: int) -> None:
        body = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        await self._rest("bad_deep", False, f"/v2/models/{self.model}/infer", body)

    async def bad_rate(self, i: int) -> None:
        doc = {"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": [1, 1600], "data": [0.0] * 1600},
                          {"name": "SAMPLE_RATE", "datatype": "INT32", "shape": [1], "data": [2**40]}]}
        await self._rest("bad_rate", False, f"/v2/models/{self.model}/infer", json.dumps(doc).encode())

    async def bad_proto(self, i: int) -> None:
        call = self.channel.unary_unary("/emotion.v1.EmotionRecognizer/Recognize",
                                        request_serializer=lambda b: b, response_deserializer=lambda b: b)
        await self._grpc("bad_proto", False, call(b"\xff\xff\xff\xff not a protobuf", timeout=10))


# ------------------------------------------------------------------------------------------- soak


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    good_ok: int
    good_failed: int
    bad_refused: int
    bad_accepted: int


async def soak(server: ServerProcess, model: str, minutes: float, sample_s: float,
               concurrency: int) -> tuple[list[Sample], Counts]:
    traffic = Traffic(server, model)
    start = time.monotonic()
    stop_at = start + 60.0 * minutes
    samples: list[Sample] = []

    async def sampler() -> None:
        while True:
            c = traffic.counts
            samples.append(Sample(round(time.monotonic() - start, 1), round(rss_mb(server), 1), c.good_ok,
                                  c.good_failed, c.bad_refused, c.bad_accepted))
            if time.monotonic() >= stop_at:
                return
            await asyncio.sleep(min(sample_s, max(0.0, stop_at - time.monotonic())))

    task = asyncio.ensure_future(sampler())
    await traffic.run(stop_at, concurrency)
    await task
    c = traffic.counts
    samples.append(Sample(round(time.monotonic() - start, 1), round(rss_mb(server), 1), c.good_ok,
                          c.good_failed, c.bad_refused, c.bad_accepted))
    return samples, traffic.counts


def growth(samples: list[Sample], warmup_s: float) -> dict[str, float]:
    """RSS after the warm-up: the median of the first and of the last tenth of the steady samples."""
    steady = [s for s in samples if s.t_s >= warmup_s] or samples[-1:]
    tenth = max(1, len(steady) // 10)
    first = float(np.median([s.rss_mb for s in steady[:tenth]]))
    last = float(np.median([s.rss_mb for s in steady[-tenth:]]))
    return {"rss_start_mb": samples[0].rss_mb, "rss_after_warmup_mb": first, "rss_end_mb": last,
            "rss_peak_mb": max(s.rss_mb for s in samples), "growth_after_warmup": (last - first) / first,
            "steady_samples": len(steady)}


def model_name(server: ServerProcess) -> str:
    import grpc
    from emotion.oip import grpc_service_pb2 as pb
    from emotion.oip import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    return str(index.models[0].name)


def write_results(out: Path, command: str, samples: list[Sample], counts: Counts, summary: dict[str, float],
                  minutes: float, concurrency: int, sample_s: float) -> Path:
    from benchmarks.loadgen import machine_description

    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    with stem.with_suffix(".csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(list(asdict(samples[0])))
        w.writerows([list(asdict(s).values()) for s in samples])
    described = machine_description()
    flags = cpu_flags()
    doc = {"command": command, "machine": described, "cpu_flags": flags, "minutes": minutes,
           "concurrency": concurrency, "summary": summary, "counts": asdict(counts),
           "samples": [asdict(s) for s in samples]}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    verdict = "met" if summary["growth_after_warmup"] < GOAL_GROWTH else "NOT met"
    md = [
        f"# Soak: {minutes:g} min of mixed traffic, {concurrency} in flight",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {described['cpu']}, {described['cores']} cores, {described['memory_gb']} GB; CPU flags: "
        f"{' '.join(flags) or 'n/a'}; load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        f"; onnxruntime {described.get('onnxruntime')}, Python {platform.python_version()}.",
        "",
        f"Calls: good {counts.good_ok} OK, {counts.good_failed} failed; bad {counts.bad_refused} refused, "
        f"{counts.bad_accepted} accepted or wrongly answered. By kind: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.by_kind.items())) + ".",
        "",
        f"RSS (MiB, sampled every {sample_s:g} s): at start "
        f"{summary['rss_start_mb']:.1f}, after the warm-up {summary['rss_after_warmup_mb']:.1f}, at the end "
        f"{summary['rss_end_mb']:.1f}, peak {summary['rss_peak_mb']:.1f}. Growth after the warm-up: "
        f"{100 * summary['growth_after_warmup']:+.1f} % (goal < {100 * GOAL_GROWTH:.0f} %: {verdict}).",
        "",
        f"Samples: `{stem.with_suffix('.csv').name}`, everything: `{stem.with_suffix('.json').name}`.",
    ]
    if counts.failures:
        md += ["", "First failures:", "", *[f"- `{f}`" for f in counts.failures[:10]]]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return stem


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="what emotion-server --model serves (default: demo)")
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of traffic (default 30)")
    p.add_argument("--warmup-minutes", type=float, default=None,
                   help="minutes left out of the growth (default: a tenth of the run, at most 3)")
    p.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period (default 10 s)")
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight (default 4)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/soak"), help="results folder")
    p.add_argument("server_args", nargs="*", help="extra emotion-server flags, after --")
    args = p.parse_args(argv)
    command = " ".join(["python", "-m", "benchmarks.soak", *(sys.argv[1:] if argv is None else argv)])
    warmup_min = args.warmup_minutes if args.warmup_minutes is not None else min(3.0, args.minutes / 10)
    print("command:", command)
    print("machine:", machine(), "flags:", " ".join(cpu_flags()))
    flags = ["--log-level", "WARNING", *args.server_args]
    with ServerProcess(args.model, flags, metrics=False, startup_timeout_s=600.0) as server:
        try:
            print(f"server pid {server.pid}; RSS at SERVING {rss_mb(server):.1f} MiB")
            samples, counts = asyncio.run(soak(server, model_name(server), args.minutes, args.sample_s,
                                               args.concurrency))
        finally:
            rc = server.terminate(60.0)
    summary = growth(samples, 60.0 * warmup_min)
    stem = write_results(args.out, command, samples, counts, summary, args.minutes, args.concurrency,
                         args.sample_s)
    print(stem.with_suffix(".md").read_text(encoding="utf-8"))
    print(f"server exit code {rc}")
    bad = summary["growth_after_warmup"] >= GOAL_GROWTH or counts.good_failed or counts.bad_accepted
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
