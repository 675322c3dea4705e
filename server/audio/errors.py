"""What audio the server refuses, and how: :class:`AudioError`, the :class:`AudioLimits` it is judged by, and
the limit checks every decoder shares (sample rate and channel count, duration).

Every decoding failure is an :class:`AudioError` (a ``ValueError``) with a message a person understands and a
short ``reason`` code for metrics; library exceptions never escape the decoders. Standard library only (and
the server's defaults): the call layer classifies audio errors without loading numpy or a decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from emotion2vec_serving.server import defaults

__all__ = [
    "AudioError",
    "AudioLimits",
    "check_rate_and_channels",
    "fmt_duration",
    "max_frames",
    "too_long",
]


class AudioError(ValueError):
    """The request's audio cannot be used. ``str(exc)`` is meant for the caller; ``reason`` for metrics.

    Reasons: ``empty``, ``too_large``, ``undecodable``, ``unsupported_encoding``, ``no_audio_stream``,
    ``too_short``, ``too_long``, ``non_finite``, ``out_of_range``, ``bad_sample_rate``, ``bad_channels``,
    ``bad_length``.
    """

    def __init__(self, message: str, reason: str = "invalid_audio") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AudioLimits:
    """What audio the server accepts.

    Defaults are the server's (``server.defaults``, shared with ``Settings``). ``min_duration_s`` must
    stay at least 25 ms, the model's receptive field (400 samples at 16 kHz): the shortest input that
    yields one frame; the default refuses anything under 100 ms.
    Sample-rate bounds apply to the *source* rate (raw PCM and decoded files); the proto documents
    8 kHz..384 kHz.
    """

    max_duration_s: float = defaults.MAX_DURATION_S
    min_duration_s: float = defaults.MIN_DURATION_S
    max_encoded_bytes: int = defaults.MAX_MESSAGE_BYTES
    target_sample_rate_hz: int = defaults.SAMPLE_RATE_HZ
    min_sample_rate_hz: int = 8000
    max_sample_rate_hz: int = 384000
    max_channels: int = 32

    def __post_init__(self) -> None:
        if not (0 <= self.min_duration_s < self.max_duration_s):
            raise ValueError("AudioLimits needs 0 <= min_duration_s < max_duration_s")
        if self.max_encoded_bytes <= 0 or self.max_channels < 1 or self.target_sample_rate_hz <= 0:
            raise ValueError("AudioLimits sizes must be positive")
        if not (0 < self.min_sample_rate_hz <= self.max_sample_rate_hz):
            raise ValueError("AudioLimits needs 0 < min_sample_rate_hz <= max_sample_rate_hz")



def fmt_duration(seconds: float) -> str:
    """A duration for messages: ``250 ms`` under a second, else ``2.50 s``."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1.0 else f"{seconds:.2f} s"


def too_long(limits: AudioLimits, detail: str, max_s: float | None = None) -> AudioError:
    """The ``too_long`` refusal (``max_s``: the limit that applies, if not ``limits.max_duration_s``)."""
    limit = limits.max_duration_s if max_s is None else max_s
    return AudioError(f"audio too long: {detail} (maximum {limit:g} s)", "too_long")


def check_rate_and_channels(sample_rate_hz: int, channels: int, limits: AudioLimits) -> None:
    """AudioError ``bad_sample_rate`` / ``bad_channels`` outside the limits."""
    if not (limits.min_sample_rate_hz <= sample_rate_hz <= limits.max_sample_rate_hz):
        raise AudioError(
            f"unsupported sample rate {sample_rate_hz} Hz (accepted: {limits.min_sample_rate_hz}.."
            f"{limits.max_sample_rate_hz} Hz)",
            "bad_sample_rate",
        )
    if not (1 <= channels <= limits.max_channels):
        raise AudioError(
            f"unsupported channel count {channels} (accepted: 1..{limits.max_channels})", "bad_channels"
        )


def max_frames(sample_rate_hz: int, limits: AudioLimits) -> int:
    """The most frames at ``sample_rate_hz`` that one model pass (``limits.max_duration_s``) accepts."""
    return math.floor(limits.max_duration_s * sample_rate_hz)
