"""EMULATED GPU (``--engine emulated-gpu``): for benchmarks and tests only. It runs no model.

Its answers are fake (fixed shapes, a label picked from the input length). It exists so that everything
above the device (the front ends, the batcher, length buckets, warm-up, out-of-memory splitting, probes,
the CPU fallback and its recovery) can be driven at GPU rates on a machine without a GPU, and so that the
front end's CPU cost per request can be measured where the device is not the bottleneck
(``benchmarks/emulated_gpu.py``).

A batch sleeps for what the cost curve says and takes no CPU (``threading.Event.wait``; outputs are
``np.zeros``, whose pages the kernel gives lazily). The curve, per batch of ``b`` items padded to ``L``
seconds (the runner pads to the length buckets, as on a real GPU):

    t(b, L) = launch_ms + ms_per_s * L * (b + half_batch)        [+ first_shape_ms for a new (b, L) shape]

- ``launch_ms`` (default 2.0): the fixed cost of one run: ONNX Runtime's CUDA run overhead and kernel launches
  of a 24-layer encoder (~500 kernels at a few microseconds each).
- ``ms_per_s`` (default 0.35): device time per padded audio second of one item once the batch saturates the
  device: 2,860 x real time at saturation. Source: an estimate, not a measurement: the large model needs
  ~40 GFLOP per audio second (300 M parameters x 2 FLOP x 50 frames/s, plus the convolutional front end),
  and an H100 sustains ~115 TFLOP/s in fp16 on it (30-40 % of its dense peak): ~0.35 ms. No GPU measurement
  exists in this repository yet (benchmarks/results/gpu/README.md); replace these numbers with
  ``python -m benchmarks.gpu_check``'s when one does.
- ``half_batch`` (default 4): the saturating batch term: an item costs ``ms_per_s * L * (1 + half_batch/b)``,
  twice the saturated cost alone, 1.25 x in a batch of 16, 1.06 x in 64 (small batches leave the device's
  SMs idle). Also an assumption, of the usual shape of GPU throughput against batch size.
- ``first_shape_ms`` (default 20): a shape run for the first time pays once more (cuDNN's algorithm choice,
  the arena's growth): what warm-up over the length buckets is for.

Memory: the emulated device holds ``weights_mb`` (default 1,300: the large model in fp32) and a batch needs
``b * (act_mb_per_s * L + attn_mb_per_s2 * L**2)`` MiB (defaults 16 and 0.5: the convolutional front end's
activations, ~6.5 MB per second per layer pair, and 16 attention heads of (50 L)^2 float32 scores with their
softmax and copy). Past the limit (``--gpu-mem-limit-mb``, else 90 % of an emulated 80 GiB card, as the real
path takes 90 % of the card) the run raises ONNX Runtime's BFC arena out-of-memory message, so the runner
raises ``RunnerOutOfMemory`` exactly as on a real GPU and the batcher splits the batch.

Device failures, for the fallback path: with ``fail_after=N`` the device fails every run (probes included)
after N batches, for ``fail_for_s`` seconds (default: for ever); the runner then falls back to CPU sessions,
which are real ONNX Runtime CPU sessions of the repository's model (the fallback computes real answers), and
probes the emulated device again after ``--gpu-cooldown-s``.

Parameters: ``--emulated-gpu "launch_ms=2,ms_per_s=0.35,half_batch=4,..."`` (``EMOTION_EMULATED_GPU``);
every run logs a warning at start that the device is emulated, and the provider is named
``EmulatedGpuExecutionProvider`` in GetModelInfo, ``/v1/model`` and the ``emotion_execution_provider`` gauge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from emotion2vec_serving.modelrepo.manifest import load_manifest
from emotion2vec_serving.server.runtime.contract import RunnerOptions, SessionLike
from emotion2vec_serving.server.runtime.engines.onnxruntime import ort_session_factory
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, EMULATED_GPU_PROVIDER

__all__ = ["ENGINE_NAME", "EmulatedGpuFactory", "EmulatedGpuParams", "parse_emulated_gpu"]

log = logging.getLogger(__name__)

ENGINE_NAME = "emulated-gpu"
_MIB = 1024 * 1024
#: The emulated card's memory, of which the arena may take 90 % when --gpu-mem-limit-mb is 0 (as on a GPU).
CARD_MB = 80 * 1024


@dataclass(frozen=True)
class EmulatedGpuParams:
    """The cost curve and memory model (module docstring: what each one is and where it comes from)."""

    launch_ms: float = 2.0
    ms_per_s: float = 0.35
    half_batch: float = 4.0
    first_shape_ms: float = 20.0
    weights_mb: float = 1300.0
    act_mb_per_s: float = 16.0
    attn_mb_per_s2: float = 0.5
    fail_after: int = 0  # batches before the device fails (0: never)
    fail_for_s: float = 0.0  # how long it stays failed (0: for ever)

    def __post_init__(self) -> None:
        bad = [f.name for f in fields(self) if getattr(self, f.name) < 0]
        if bad:
            raise ValueError(f"emulated GPU parameters must not be negative: {', '.join(bad)}")

    def run_s(self, items: int, padded_s: float) -> float:
        """Device time of a batch of ``items`` padded to ``padded_s`` seconds (no first-shape cost)."""
        return (self.launch_ms + self.ms_per_s * padded_s * (items + self.half_batch)) / 1000.0

    def batch_mb(self, items: int, padded_s: float) -> float:
        """Device memory a batch needs beyond the weights, in MiB."""
        return items * (self.act_mb_per_s * padded_s + self.attn_mb_per_s2 * padded_s ** 2)


def parse_emulated_gpu(spec: str) -> EmulatedGpuParams:
    """``--emulated-gpu``: ``key=value`` pairs, comma-separated (empty: the defaults)."""
    names = {f.name: f for f in fields(EmulatedGpuParams)}
    values: dict[str, Any] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ValueError(f"emulated GPU {part!r}: expected key=value with a key among {', '.join(names)}")
        try:
            values[key] = int(value) if key == "fail_after" else float(value)
        except ValueError:
            raise ValueError(f"emulated GPU {key}: {value!r} is not a number") from None
    return EmulatedGpuParams(**values)


class _Device:
    """The one emulated card every session of a factory shares: shapes seen, batches run, failure state."""

    def __init__(self, params: EmulatedGpuParams) -> None:
        self.params = params
        self.lock = threading.Lock()
        self.shapes: set[tuple[int, int]] = set()
        self.batches = 0
        self.failed_at: float | None = None

    def check_failed(self) -> None:
        p = self.params
        with self.lock:
            if self.failed_at is None and p.fail_after and self.batches >= p.fail_after:
                self.failed_at = time.monotonic()
                log.error("EMULATED GPU: the device fails now (after %d batches)", self.batches)
            if self.failed_at is not None:
                if p.fail_for_s and time.monotonic() - self.failed_at >= p.fail_for_s:
                    self.failed_at, self.batches = None, 0
                    log.warning("EMULATED GPU: the device works again")
                    return
                raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 999: unknown error "
                                   "(emulated GPU device failure)")


class _Handle:
    """The watchdog's handle: ``terminate()`` ends the emulated run's sleep."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def terminate(self) -> None:
        self.event.set()


class EmulatedGpuSession:
    """One session on the emulated card: sleeps by the cost curve, answers with fixed-shape fake outputs."""

    engine = ENGINE_NAME
    inference_precision: str | None = None

    def __init__(self, device: _Device, model_dir: Path, limit_bytes: int) -> None:
        m = load_manifest(model_dir)
        self._device = device
        self._limit_mb = limit_bytes / _MIB if limit_bytes > 0 else 0.9 * CARD_MB
        self._rate = m.sample_rate_hz
        self._hop = m.frame_hop_samples
        self._field = m.receptive_field_samples
        self._dim = m.embedding_dim
        self._labels = len(m.labels)
        self._enabled = np.array([i for i, label in enumerate(m.labels) if label.enabled], dtype=np.int64)

    def get_providers(self) -> list[str]:
        return [EMULATED_GPU_PROVIDER]

    def new_run_handle(self) -> _Handle:
        return _Handle()

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_handle: Any = None) -> list[Any]:
        waveform = input_feed["waveform"]
        lengths = np.asarray(input_feed["lengths"], dtype=np.int64)
        items, width = int(waveform.shape[0]), int(waveform.shape[1])
        padded_s = width / self._rate
        p = self._device.params
        self._device.check_failed()
        need_mb = p.weights_mb + p.batch_mb(items, padded_s)
        if need_mb > self._limit_mb:
            log.warning("EMULATED GPU: out of memory: a batch of %d x %.2f s needs %.0f MiB, limit %.0f MiB",
                        items, padded_s, need_mb, self._limit_mb)
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
                "MatMul node. Status Message: BFCArena::AllocateRawInternal Failed to allocate memory for "
                f"requested buffer of size {int((need_mb - p.weights_mb) * _MIB)} (emulated GPU: "
                f"{need_mb:.0f} MiB needed, limit {self._limit_mb:.0f} MiB)")
        delay = p.run_s(items, padded_s)
        with self._device.lock:
            if (items, width) not in self._device.shapes:
                self._device.shapes.add((items, width))
                delay += p.first_shape_ms / 1000.0
            self._device.batches += 1
        handle = run_handle if isinstance(run_handle, _Handle) else _Handle()
        if handle.event.wait(delay):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Exiting due to terminate flag being set to "
                               "true (emulated GPU)")
        return self._outputs(output_names or (), items, width, lengths)

    def _outputs(self, names: Sequence[str], items: int, width: int, lengths: np.ndarray) -> list[Any]:
        frames = (max(width, self._field) - self._field) // self._hop + 1
        frame_lengths = (np.maximum(lengths, self._field) - self._field) // self._hop + 1
        n = self._labels
        probs = np.zeros((items, n), dtype=np.float32)
        logits = np.full((items, n), -np.inf, dtype=np.float32)
        if len(self._enabled):
            logits[:, self._enabled] = -10.0
            top = self._enabled[lengths % len(self._enabled)]  # deterministic: a cheap hash of the length
            probs[np.arange(items), top] = 1.0
            logits[np.arange(items), top] = 0.0
        made = {
            "logits": logits, "probs": probs, "frame_lengths": frame_lengths,
            "frame_probs": np.broadcast_to(probs[:, None, :], (items, frames, n)),
            "embedding": np.zeros((items, self._dim), dtype=np.float32),
            "frame_features": np.zeros((items, frames, self._dim), dtype=np.float32),
        }  # fmt: skip
        return [made[name] for name in names]


class EmulatedGpuFactory:
    """``--engine emulated-gpu``'s session factory: emulated sessions for the emulated provider, real ONNX
    Runtime CPU sessions for the CPU fallback (the runner asks for ``[CPUExecutionProvider]`` then)."""

    def __init__(self, params: EmulatedGpuParams | None = None) -> None:
        self.params = params or EmulatedGpuParams()
        self._device = _Device(self.params)
        self._warned = False

    def __call__(self, model_path: Path, providers: Sequence[str],
                 options: RunnerOptions) -> SessionLike:
        if EMULATED_GPU_PROVIDER not in providers:
            return ort_session_factory(model_path, [CPU_PROVIDER], options)  # the real model on the CPU
        if not self._warned:
            self._warned = True
            log.warning("EMULATED GPU (--engine emulated-gpu, for benchmarks and tests only): no model runs "
                        "on it and its answers are fake; cost curve and memory model %s", self.params)
        return EmulatedGpuSession(self._device, Path(model_path).parent, options.gpu.gpu_mem_limit_bytes)
