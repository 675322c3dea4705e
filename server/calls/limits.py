"""The limits every call is held to, built from ``Settings``: per call (:class:`CoreLimits`) and for long
recordings (:class:`LongformSettings`, with the submission window of :func:`window_for`).

Their defaults are not written here: they come from ``server/defaults.py`` and ``batching.BatchPolicy``
(the same places ``Settings`` takes its own from), so a core built without ``Settings`` behaves like the
default server (tests/server/test_defaults.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from emotion2vec_serving.batching import BatchPolicy
from emotion2vec_serving.server import defaults
from emotion2vec_serving.server.audio.errors import AudioLimits
from emotion2vec_serving.server.config import Settings

__all__ = ["MAX_SPLIT_CHANNELS", "CoreLimits", "LongformSettings", "window_for"]

#: Most channels one recording may be split into (``channels=split``; more is INVALID_ARGUMENT / 400).
MAX_SPLIT_CHANNELS = 8


def window_for(max_batch_size: int, max_batch_audio_s: float, instances: int) -> tuple[int, float, int]:
    """The submission window of a long recording: at most about two batches per runner instance (one
    running, one forming); at first two segments per runner (see ``longform.run_segments``). Returns
    (segments, audio_s, initial)."""
    most = max(2, 2 * max_batch_size * instances)
    return most, max(1.0, 2.0 * max_batch_audio_s * instances), min(most, 2 * instances)


#: The window of the default server: the default batch policy on the default number of runners.
_POLICY = BatchPolicy()
_DEFAULT_WINDOW = window_for(_POLICY.max_batch_size, _POLICY.max_batch_cost / defaults.SAMPLE_RATE_HZ,
                             Settings().runner_concurrency)


@dataclass(frozen=True)
class LongformSettings:
    """How long recordings are cut and submitted (server settings; defaults equal the default server's)."""

    max_audio_s: float = defaults.MAX_AUDIO_S  # longest recording (0 = no limit but the message size)
    max_segment_s: float = defaults.MAX_DURATION_S  # longest segment = longest single model pass
    min_segment_s: float = defaults.SEGMENT_MIN_S  # energy end-pointing, as StreamRecognize's defaults
    min_silence_s: float = defaults.SEGMENT_MIN_SILENCE_S
    energy_threshold_db: float = defaults.SEGMENT_ENERGY_THRESHOLD_DB
    window_segments: int = _DEFAULT_WINDOW[0]  # most segments of one call queued or running at once
    window_audio_s: float = _DEFAULT_WINDOW[1]  # most audio of one call queued or running at once
    initial_window: int = _DEFAULT_WINDOW[2]  # segments queued or running at first (grows while batches fill)

    def __post_init__(self) -> None:
        if self.max_audio_s < 0:
            raise ValueError("max_audio_s must not be negative")
        if not self.max_segment_s > 0:
            raise ValueError("max_segment_s must be positive")
        if self.window_segments < 1 or self.initial_window < 1 or not self.window_audio_s > 0:
            raise ValueError("the submission window must hold at least one segment")

    @classmethod
    def from_settings(cls, settings: Settings) -> LongformSettings:
        """How a server run with ``settings`` handles long recordings."""
        window_segments, window_audio_s, initial_window = window_for(
            settings.max_batch_size, settings.max_batch_audio_s, settings.runner_concurrency
        )
        return cls(max_audio_s=settings.max_audio_s, max_segment_s=settings.max_duration_s,
                   window_segments=window_segments, window_audio_s=window_audio_s,
                   initial_window=initial_window)


@dataclass(frozen=True)
class CoreLimits:
    """Per-call limits enforced by the core (audio limits live in ``AudioLimits``).

    No defaults: built from ``Settings`` (the one place defaults live), see ``CoreLimits.from_settings``.
    """

    audio: AudioLimits
    default_timeout_s: float
    max_concurrent_streams: int
    max_stream_duration_s: float  # audio seconds of one stream
    stream_idle_timeout_s: float  # a stream that receives no audio this long is ended
    stream_max_open_s: float  # wall-clock seconds one stream may stay open
    #: Long recordings (Recognize/Embed audio beyond ``audio.max_duration_s``, see ``longform``); None
    #: refuses such audio as too long.
    longform: LongformSettings | None = None

    @classmethod
    def from_settings(cls, settings: Settings, sample_rate_hz: int) -> CoreLimits:
        """Limits of a server run with ``settings``."""
        audio = AudioLimits(max_duration_s=settings.max_duration_s, min_duration_s=settings.min_duration_s,
                            max_encoded_bytes=settings.max_message_bytes,
                            target_sample_rate_hz=sample_rate_hz)
        return cls(audio=audio, default_timeout_s=settings.default_timeout_s,
                   max_concurrent_streams=settings.max_concurrent_streams,
                   max_stream_duration_s=settings.max_stream_duration_s,
                   stream_idle_timeout_s=settings.stream_idle_timeout_s,
                   stream_max_open_s=settings.stream_max_open_s,
                   longform=LongformSettings.from_settings(settings))
