"""Helpers shared by the client tests (a uniquely named module: tests/ directories are not packages)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from emotion.v1 import emotion_pb2_grpc

from emotion2vec_serving.server.process import ServerProcess
from emotion2vec_serving.server.process import free_port as free_port  # re-exported for the tests
from tests.support.servers import server_process

SERVICE = "emotion.v1.EmotionRecognizer"
SR = 16000


def speech_like(duration_s: float, rate: int = SR, seed: int = 0, bursts: int = 3) -> npt.NDArray[np.float32]:
    """Voiced bursts (harmonics of a gliding pitch, amplitude-modulated, plus noise) between silences.

    Deterministic for a seed; the silences give energy segmentation real pauses to find.
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * rate)
    t = np.arange(n) / rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum((0.5 / k) * np.sin(k * phase) for k in range(1, 6))
    voiced = voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t)) + 0.02 * rng.standard_normal(n)
    gate = np.zeros(n)
    span = n / bursts
    for b in range(bursts):
        start, stop = int(b * span), int(b * span + 0.7 * span)
        gate[start:stop] = 1.0
    return (0.3 * voiced * gate + 1e-4 * rng.standard_normal(n)).astype(np.float32)


@dataclass(frozen=True)
class AudioSet:
    directory: Path
    wav: Path  # 16 kHz mono, 6 s
    flac: Path  # 44.1 kHz stereo, 4 s
    mp3: Path  # 22.05 kHz mono, 3 s
    ogg: Path  # 16 kHz mono, 2 s
    wav_samples: npt.NDArray[np.float32]


@contextlib.contextmanager
def running_server(
    model_repo: Path, log_path: Path, *extra: str, metrics: bool = True
) -> Iterator[ServerProcess]:
    """Run ``python -m server`` on free ports for the block (SIGTERM at the end)."""
    # With warm-up (base without --no-warmup), as a deployed server starts.
    with server_process(model_repo, "--drain-grace-s", "2", *extra, base=("--intra-op-threads", "1"),
                        metrics=metrics, startup_timeout_s=90.0, log_path=log_path) as srv:
        yield srv


class SheddingProxy(emotion_pb2_grpc.EmotionRecognizerServicer):
    """Refuses the first ``refuse`` calls, then forwards to ``upstream``; records what it saw."""

    def __init__(self, upstream: str) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self._stub = emotion_pb2_grpc.EmotionRecognizerStub(self._channel)
        self._lock = threading.Lock()
        self.refuse = 0
        self.code = grpc.StatusCode.RESOURCE_EXHAUSTED
        self.retry_after_ms: int | None = None
        self.delay_s = 0.0
        self.calls = 0
        self.call_times: list[float] = []
        self.metadata: list[dict[str, str]] = []

    def reset(self, refuse: int, code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED,
              retry_after_ms: int | None = None, delay_s: float = 0.0) -> None:  # fmt: skip
        with self._lock:
            self.refuse, self.code, self.retry_after_ms, self.delay_s = refuse, code, retry_after_ms, delay_s
            self.calls, self.call_times, self.metadata = 0, [], []

    def _admit(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls += 1
            self.call_times.append(time.monotonic())
            self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
            refusing = self.calls <= self.refuse
        if self.delay_s:
            time.sleep(self.delay_s)
        if refusing:
            if self.retry_after_ms is not None:
                context.set_trailing_metadata((("retry-after-ms", str(self.retry_after_ms)),))
            context.abort(self.code, f"scripted refusal {self.calls} of {self.refuse}")

    @staticmethod
    def _timeout(context: grpc.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        # A call without a deadline reports an "infinite" remainder, which overflows as a timeout.
        return None if remaining is None or remaining > 1e6 else remaining

    def _forward(self, method: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(request, timeout=self._timeout(context))
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")

    def Recognize(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._admit(context)
        return self._forward(self._stub.Recognize, request, context)

    def Embed(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._admit(context)
        return self._forward(self._stub.Embed, request, context)

    def GetModelInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._admit(context)
        return self._forward(self._stub.GetModelInfo, request, context)

    def StreamRecognize(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        self._admit(context)
        yield from self._stub.StreamRecognize(request_iterator, timeout=self._timeout(context))

    def close(self) -> None:
        self._channel.close()
