"""ONNX Runtime helpers for the export tests: a one-thread session, a padded batch of noise, and the peak
memory of one batch measured in a fresh process (tests/export/test_front_end_chunks.py,
tests/export/test_attention_chunks.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(model: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def padded_batch(lengths: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``waveform`` (noise, zero past each length) and ``lengths`` for the model's inputs."""
    waveform = np.zeros((len(lengths), max(lengths)), np.float32)
    for i, n in enumerate(lengths):
        waveform[i, :n] = rng.standard_normal(n).astype(np.float32) * 0.1
    return {"waveform": waveform, "lengths": np.asarray(lengths, np.int64)}


_PEAK = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime as ort
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_cpu_mem_arena = False  # every tensor freed at once: the peak is what is live together
    so.enable_mem_pattern = False
    s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    def run(batch, n):
        w = (rng.standard_normal((batch, n)) * 0.1).astype(np.float32)
        s.run(["probs"], {"waveform": w, "lengths": np.full(batch, n, np.int64)})
    run(1, 16000)
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    before = status("VmRSS")
    run(int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps((status("VmHWM") - before) / 2**20))
""")


def peak_mib(model: Path, batch: int, samples: int) -> float:
    """MiB the process's peak RSS rose by while running ``batch`` clips of ``samples`` (after a warm-up)."""
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}  # large blocks unmapped when freed
    out = subprocess.run([sys.executable, "-c", _PEAK, str(model), str(batch), str(samples)], check=True,
                         env=env, capture_output=True, text=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


def worst_differences(model_a: Path, model_b: Path, cases: list[list[int]],
                      seed: int = 0) -> dict[str, float]:
    """Per float output, the largest |a - b| of two models over padded batches of ``cases`` (lengths);
    shapes must agree, integer outputs must be equal and ``model_b``'s floats finite."""
    a_session, b_session = session(model_a), session(model_b)
    rng = np.random.default_rng(seed)
    names = [o.name for o in a_session.get_outputs()]
    worst: dict[str, float] = {}
    for lengths in cases:
        feed = padded_batch(lengths, rng)
        for name, a, b in zip(names, a_session.run(None, feed), b_session.run(None, feed), strict=True):
            assert a.shape == b.shape, (name, lengths)
            if a.dtype.kind == "f":
                assert np.all(np.isfinite(b)), (name, lengths)
                worst[name] = max(worst.get(name, 0.0), float(np.max(np.abs(a - b))))
            else:
                np.testing.assert_array_equal(a, b)
    return worst


def alone_vs_padded(model: Path, length: int = 37_000, mate: int = 90_000) -> float:
    """Largest |Δ| on probs and embedding: a clip alone against the same clip padded beside a longer one."""
    sess = session(model)
    rng = np.random.default_rng(1)
    clip = rng.standard_normal(length).astype(np.float32) * 0.1
    alone = sess.run(["probs", "embedding"], {"waveform": clip[None], "lengths": np.array([length])})
    feed = padded_batch([length, mate], rng)
    feed["waveform"][0, :length] = clip
    batched = sess.run(["probs", "embedding"], feed)
    return max(float(np.max(np.abs(a[0] - b[0]))) for a, b in zip(alone, batched, strict=True))
