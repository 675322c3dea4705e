"""RSS of one ONNX Runtime session under the memory options the server exposes (no server, no batcher).

    python -m benchmarks.suite.ort_memory ARENA SHRINK SECONDS...   # e.g. 1 1 10 16 30 10
    python -m benchmarks.suite.ort_memory 1 1 10 10.7 9.8+9.3 7.6+7.1+6.9+6.3   # "+": one padded batch

Loads ``~/.cache/emotion2vec-bench/repo_large`` (or ``$ORT_MEMORY_MODEL``), runs one item of each length
and prints run time, VmRSS after the run and VmHWM (peak). ARENA: ``--ort-cpu-arena``; SHRINK:
``--ort-arena-shrinkage``. Run each configuration in its own process: VmHWM never goes down.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np


def _mb(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) // 1024
    return -1


def main(argv: list[str]) -> None:
    import onnxruntime as ort

    arena, shrink = argv[0] == "1", argv[1] == "1"
    default = Path.home() / ".cache" / "emotion2vec-bench" / "repo_large" / "model.onnx"
    model = os.environ.get("ORT_MEMORY_MODEL", str(default))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    t = time.time()
    session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    print(f"arena={arena} shrink={shrink} load {time.time() - t:.1f}s rss {_mb('VmRSS')} hwm {_mb('VmHWM')}")
    names = [o.name for o in session.get_outputs()]
    for item in argv[2:]:  # "10" is one 10-s item; "7.6+7.1" a padded batch of two (lengths as given)
        lengths = [int(float(x) * 16000) for x in item.split("+")]
        n = max(lengths)
        wave = (0.01 * np.random.default_rng(0).standard_normal((len(lengths), n))).astype(np.float32)
        run_options = ort.RunOptions()
        if shrink and arena:
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        t = time.time()
        session.run(names, {"waveform": wave, "lengths": np.array(lengths, np.int64)}, run_options)
        print(f"  {item}s: {time.time() - t:.2f}s rss {_mb('VmRSS')} hwm {_mb('VmHWM')}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
