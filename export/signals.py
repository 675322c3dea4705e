"""Seeded speech-like test signals: voiced harmonic sounds with a moving pitch, formants, syllable rhythm,
pauses and background noise. Random white noise is a poor probe for quantisation error (its activations
look nothing like speech), so deviations are measured on these.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEVIATION_LENGTHS_S", "speech_like", "speech_like_set"]

SAMPLE_RATE_HZ = 16000
#: Clip durations of the fixed set used to measure precision deviations.
DEVIATION_LENGTHS_S = (0.5, 1.3, 2.0, 3.7, 6.0)


def speech_like(n_samples: int, seed: int, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """A float32 vowel-like signal of ``n_samples``: deterministic for a given ``seed``."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples, dtype=np.float64) / sample_rate_hz
    f0_base = rng.uniform(90.0, 240.0)
    # Pitch: slow drift + vibrato; phase is the integral of the instantaneous frequency.
    f0 = f0_base * (1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 6.3)))
    f0 *= 1.0 + 0.01 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate_hz
    formants = np.array([rng.uniform(300, 900), rng.uniform(900, 2200), rng.uniform(2200, 3200)])
    voiced = np.zeros(n_samples)
    for h in range(1, 30):
        freq = h * f0
        gain = sum(1.0 / (1.0 + ((freq - f) / 120.0) ** 2) for f in formants) / h**0.5
        voiced += gain * np.sin(h * phase) * (freq < sample_rate_hz / 2)
    # Syllables at ~4 Hz with pauses, and breath noise.
    syllable = np.clip(np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t + rng.uniform(0, 6.3)), 0.0, None) ** 0.7
    envelope = syllable * (0.4 + 0.6 * (np.sin(2 * np.pi * 0.35 * t + rng.uniform(0, 6.3)) > -0.6))
    signal = voiced * envelope
    signal /= max(float(np.abs(signal).max()), 1e-9)
    signal = 0.3 * signal + 0.01 * rng.standard_normal(n_samples)
    return signal.astype(np.float32)


def speech_like_set(
    lengths_s: tuple[float, ...] = DEVIATION_LENGTHS_S, seed: int = 1234
) -> list[np.ndarray]:
    """The fixed deviation set: one clip per duration, seeds ``seed + i``."""
    return [speech_like(round(s * SAMPLE_RATE_HZ), seed + i) for i, s in enumerate(lengths_s)]
