"""Helpers shared by the client tests (a uniquely named module: tests/ directories are not packages)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SR = 16000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
