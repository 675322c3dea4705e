"""ONNX Runtime CPU latency and throughput of a model repository.

    python benchmarks/bench_onnx.py --repo REPO_DIR [--threads N] [--repeats 5]

Latency: one 10 s speech-like clip at batch 1 (median of ``--repeats`` runs after a warm-up).
Throughput: batches of 8 clips of 5 s, in audio-seconds processed per wall-clock second.
Prints the command, the machine and the numbers (and a JSON line for scripts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion2vec_serving.export.ort_run import pad_batch
from emotion2vec_serving.export.signals import speech_like
from emotion2vec_serving.modelrepo.manifest import load_manifest


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} logical CPUs, {system}, onnxruntime {ort.__version__}"


def _timed(
    session: ort.InferenceSession, waveform: np.ndarray, lengths: np.ndarray, repeats: int
) -> list[float]:
    feeds = {"waveform": waveform, "lengths": lengths}
    session.run(None, feeds)  # warm-up: allocations and kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-seconds", type=float, default=5.0)
    args = parser.parse_args()

    manifest = load_manifest(args.repo)
    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    started = time.perf_counter()
    session = ort.InferenceSession(str(manifest.onnx_path), options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - started
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", _machine())
    print(f"model:   {manifest.model_name} {manifest.precision} (D={manifest.embedding_dim}), "
          f"providers {session.get_providers()}, session load {load_s:.2f} s")

    clip = speech_like(int(args.latency_seconds * 16000), seed=1)
    latency = _timed(session, *pad_batch([clip]), args.repeats)
    clips = [speech_like(int(args.batch_seconds * 16000), seed=10 + i) for i in range(args.batch)]
    batch_times = _timed(session, *pad_batch(clips), max(2, args.repeats // 2))
    lat_med = statistics.median(latency)
    thr = args.batch * args.batch_seconds / statistics.median(batch_times)
    print(f"latency, batch 1, {args.latency_seconds:g} s clip: median {lat_med:.3f} s "
          f"(min {min(latency):.3f}, max {max(latency):.3f}; RTF {lat_med / args.latency_seconds:.3f})")
    print(f"throughput, batch {args.batch} x {args.batch_seconds:g} s: {thr:.2f} audio-s/s "
          f"(median batch {statistics.median(batch_times):.3f} s)")
    print(json.dumps({"model": manifest.model_name, "precision": manifest.precision,
                      "latency_s": lat_med, "throughput_audio_s_per_s": thr}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
