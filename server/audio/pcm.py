"""Samples to the model's input: raw PCM, float waveforms and decoded blocks -> float32 mono at 16 kHz.

- :func:`decode_pcm` / :func:`decode_pcm_any` for raw interleaved PCM (``s16le`` or ``f32le``) at any rate
  and channel count; :func:`decode_waveform_any` for a float32 mono waveform at any accepted rate.
- The shared steps: :func:`validate_pcm_format`, :func:`downmix` (channels averaged into mono block by block),
  :func:`check_samples` (NaN/Inf and absurd values refused), :func:`resample` (soxr) and :func:`finish_mono`
  (duration checks, then resampling).
- :class:`Collector`: receives decoded mono blocks (from raw PCM here, from encoded files in
  ``server/audio/decode.py``) and enforces the duration limits as they arrive, so a small input that declares
  (or really holds) hours of audio costs at most the limit of decoding work and memory. Audio longer than one
  model pass goes, when allowed, into a :class:`~server.audio.store.PcmStore`.

No protobuf types (the service converts) and no filesystem. Every failure is an ``AudioError``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soxr

from emotion2vec_serving.server.audio.errors import (
    AudioError,
    AudioLimits,
    check_rate_and_channels,
    fmt_duration,
    max_frames,
    too_long,
)
from emotion2vec_serving.server.audio.store import Decoded, FloatArray, Int16Array, PcmStore

__all__ = [
    "BLOCK_FRAMES",
    "CODEC_PADDING_S",
    "MAX_SAMPLE_MAGNITUDE",
    "ChannelCollectors",
    "Collector",
    "PcmEncoding",
    "check_samples",
    "decode_pcm",
    "decode_pcm_any",
    "decode_pcm_channels",
    "decode_waveform_any",
    "downmix",
    "finish_long",
    "finish_mono",
    "pcm_to_mono_float32",
    "resample",
    "validate_pcm_format",
]

PcmEncoding = Literal["s16le", "f32le"]

#: Frames per decoded block (a soundfile read, a raw-PCM conversion step, a long-mode flush): bounds the
#: transient multichannel buffer (32 ch x 64 Ki x 4 B = 8 MiB).
BLOCK_FRAMES = 65536
_PCM_SAMPLE_BYTES = {"s16le": 2, "f32le": 4}
#: Lossy codecs add up to a few thousand samples of priming/padding (AAC: 1024 + up to 2047 per stream,
#: i.e. up to 0.4 s at 8 kHz), so a file encoded from exactly max_duration_s decodes slightly longer.
#: Decoded audio up to this much over the limit is trimmed to the limit instead of being refused.
CODEC_PADDING_S = 0.5


def _max_decoded_frames(sample_rate_hz: int, limits: AudioLimits) -> int:
    """Decoding budget for encoded files: the limit plus room for codec padding (trimmed afterwards)."""
    return max_frames(sample_rate_hz, limits) + math.ceil(CODEC_PADDING_S * sample_rate_hz)


#: Largest sample magnitude accepted. Float audio is expected within [-1, 1] (16-bit values stored as floats
#: reach 32768); far beyond, resampling and the model's waveform normalisation overflow float32 into NaN.
MAX_SAMPLE_MAGNITUDE = 1e6


def check_samples(samples: FloatArray) -> None:
    """AudioError ``non_finite`` for NaN/Inf samples, ``out_of_range`` beyond ``MAX_SAMPLE_MAGNITUDE``."""
    if samples.size == 0:
        return
    peak = float(np.max(np.abs(samples)))  # NaN propagates through max; one pass, ~ms a minute of audio
    if not math.isfinite(peak):
        raise AudioError("audio contains NaN or infinite sample values", "non_finite")
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise AudioError(
            f"audio sample values reach {peak:.3g}, beyond +-{MAX_SAMPLE_MAGNITUDE:g} (float audio is "
            "expected within [-1, 1])", "out_of_range",
        )


def finish_mono(mono: FloatArray, sample_rate_hz: int, limits: AudioLimits) -> FloatArray:
    """Duration checks on the source-rate mono signal, then resampling to the target rate."""
    if mono.size == 0:
        raise AudioError("audio is empty: no samples decoded", "empty")
    duration_s = mono.size / sample_rate_hz
    if duration_s > limits.max_duration_s:
        raise too_long(limits, fmt_duration(duration_s))
    if duration_s < limits.min_duration_s:
        raise AudioError(
            f"audio too short: {fmt_duration(duration_s)} (minimum {fmt_duration(limits.min_duration_s)})",
            "too_short",
        )
    check_samples(mono)
    return resample(mono, sample_rate_hz, limits.target_sample_rate_hz)


def resample(samples: FloatArray, from_rate_hz: int, to_rate_hz: int) -> FloatArray:
    """Resample a mono float32 signal with soxr's high-quality filter (a no-op at equal rates)."""
    if from_rate_hz == to_rate_hz:
        return np.ascontiguousarray(samples, dtype=np.float32)
    out = soxr.resample(np.ascontiguousarray(samples, dtype=np.float32), from_rate_hz, to_rate_hz, "HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------------- decoded blocks


class Collector:
    """Receives decoded mono blocks at the source rate and enforces the duration limits.

    Audio that fits one pass (``limits.max_duration_s`` plus codec padding) stays a list of float32 blocks,
    so short audio decodes exactly as it always did. With ``max_audio_s`` given (long recordings allowed;
    ``0`` = no limit but the input size), the first block past one pass moves everything into a
    :class:`PcmStore` through soxr's streaming resampler, and later blocks follow one by one: memory stays
    at the 16 kHz int16 recording plus one block, never a float copy of the whole.
    """

    def __init__(self, limits: AudioLimits, max_audio_s: float | None = None) -> None:
        self.limits = limits
        self.long_ok = max_audio_s is not None
        self.max_s = limits.max_duration_s
        if max_audio_s is not None:
            self.max_s = math.inf if max_audio_s <= 0 else max(float(max_audio_s), limits.max_duration_s)
        self.rate = 0
        self.total = 0
        self.pass_frames = 0
        self.limit_frames = 0.0
        self.blocks: list[FloatArray] = []
        self.store: PcmStore | None = None
        self._resampler: Any = None
        # Long mode: small decoded frames (Opus: 20 ms) are gathered into ~4 s blocks before the finite
        # check, the resampler and the store, whose per-call costs dominate at 20 ms a call.
        self._pending: list[FloatArray] = []
        self._pending_size = 0

    def start(self, rate: int, channels: int = 1) -> None:
        self.rate = rate
        self.pass_frames = _max_decoded_frames(rate, self.limits)
        if not self.long_ok:
            self.limit_frames = self.pass_frames
        elif math.isinf(self.max_s):  # no limit but the input size
            self.limit_frames = math.inf
        else:
            self.limit_frames = math.floor(self.max_s * rate) + math.ceil(CODEC_PADDING_S * rate)

    def _limit_text(self) -> str:
        return f"more than {self.max_s:g} s decoded (decoding stopped)"

    def check_declared(self, declared_s: float, slack: float = 1.0, extra_s: float = 0.0) -> None:
        """Refuse early when the container header declares (clearly) more than the limit."""
        limit = self.limits.max_duration_s if not self.long_ok else self.max_s
        exact = slack == 1.0 and extra_s == 0.0
        limit_s = limit + CODEC_PADDING_S if exact else slack * limit + extra_s
        if declared_s > limit_s:
            detail = f"{fmt_duration(declared_s)} declared in the file header"
            raise too_long(self.limits, detail, self.max_s)

    def add_block(self, block: npt.NDArray[Any], channels: int) -> None:
        """A decoded block of interleaved frames (flat or ``(frames, channels)``), averaged into mono."""
        self.add(downmix(block, channels))

    def add(self, block: FloatArray) -> None:
        self.total += int(block.size)
        if self.total > self.limit_frames:
            raise too_long(self.limits, self._limit_text(), self.max_s)
        if self.store is None:
            self.blocks.append(block)
            if self.long_ok and self.total > self.pass_frames:
                self._go_long()
        else:
            self._pending.append(block)
            self._pending_size += int(block.size)
            if self._pending_size >= BLOCK_FRAMES:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            block = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
            self._pending, self._pending_size = [], 0
            self._push(block, last=False)

    def _go_long(self) -> None:
        target = self.limits.target_sample_rate_hz
        self.store = PcmStore(target)
        if self.rate != target:
            self._resampler = soxr.ResampleStream(self.rate, target, 1, "float32", "HQ")
        blocks, self.blocks = self.blocks, []
        if blocks:  # at most one pass of audio: one call
            self._push(np.concatenate(blocks), last=False)

    def _push(self, block: FloatArray, *, last: bool) -> None:
        assert self.store is not None
        if block.size:
            check_samples(block)
        if self._resampler is not None:
            block = np.asarray(self._resampler.resample_chunk(block, last=last), dtype=np.float32)
        self.store.append(block)

    def mono(self) -> FloatArray:
        """The one-pass result (float32 at the source rate); empty once the audio went to the store."""
        if self.store is not None:
            return np.zeros(0, np.float32)
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.float32)

    def finish_long(self) -> PcmStore:
        """Flush the resampler and trim codec padding beyond ``max_audio_s``."""
        assert self.store is not None
        self._flush()
        self._push(np.zeros(0, np.float32), last=True)
        store = self.store
        if math.isfinite(self.max_s):
            keep = math.floor(self.max_s * store.sample_rate_hz)
            store.truncate(keep)
        return store


def finish_long(sink: Collector) -> PcmStore:
    """The long recording a collector gathered (see :meth:`Collector.finish_long`); AudioError when empty."""
    store = sink.finish_long()
    if len(store) == 0:
        raise AudioError("audio is empty: no samples decoded", "empty")
    return store


# ------------------------------------------------------------------------------------------- raw PCM


def validate_pcm_format(encoding: str, sample_rate_hz: int, channels: int, limits: AudioLimits) -> int:
    """Check a raw PCM description; return the frame size in bytes (all channels of one sample)."""
    if encoding not in _PCM_SAMPLE_BYTES:
        raise AudioError(
            f"unsupported PCM encoding {encoding!r} (accepted: s16le, f32le)", "unsupported_encoding"
        )
    check_rate_and_channels(sample_rate_hz, channels, limits)
    return _PCM_SAMPLE_BYTES[encoding] * channels


def downmix(interleaved: npt.NDArray[Any], channels: int, scale: float = 1.0) -> FloatArray:
    """Interleaved samples (flat or ``(frames, channels)``) -> float32 mono: ``scale`` x mean over channels.

    Strided per-channel adds: numpy reductions over a short inner axis are ~15x slower than this.
    Non-finite or huge float input may overflow or give NaN here, silently: ``check_samples`` refuses it.
    """
    flat = interleaved.reshape(-1)
    mono: FloatArray = flat[0::channels].astype(np.float32)  # always a fresh copy
    if channels > 1:  # np.errstate costs a few microseconds a call: none for mono, the common request
        with np.errstate(over="ignore", invalid="ignore"):
            for ch in range(1, channels):
                mono += flat[ch::channels]
    factor = scale / channels
    if factor != 1.0:
        mono *= np.float32(factor)
    return mono


def pcm_to_mono_float32(
    data: bytes | bytearray | memoryview, encoding: PcmEncoding, channels: int
) -> FloatArray:
    """Interleaved PCM bytes (a whole number of frames) -> float32 mono by the mean over channels.

    No validation beyond what numpy needs; ``s16le`` is scaled by 1/32768 into [-1, 1).
    """
    if encoding == "s16le":
        # Sums of int16 are exact in float32 (< 2**24 for up to 256 channels), so scale once at the end.
        return downmix(np.frombuffer(data, dtype="<i2"), channels, 1.0 / 32768.0)
    if encoding == "f32le":
        return downmix(np.frombuffer(data, dtype="<f4"), channels)
    raise AudioError(
        f"unsupported PCM encoding {encoding!r} (accepted: s16le, f32le)", "unsupported_encoding"
    )


def decode_pcm(
    data: bytes | bytearray | memoryview,
    encoding: PcmEncoding,
    sample_rate_hz: int,
    channels: int,
    limits: AudioLimits | None = None,
) -> FloatArray:
    """Raw interleaved little-endian PCM -> float32 mono at ``limits.target_sample_rate_hz``.

    ``channels`` must be >= 1 (the proto's "0 means 1" is the service's conversion). Raises
    :class:`AudioError` for an unknown encoding, absurd rate or channel count, a byte count that is not
    a whole number of frames, empty/too short/too long audio, and NaN/Inf samples.
    """
    limits = limits or AudioLimits()
    frame_bytes = validate_pcm_format(encoding, sample_rate_hz, channels, limits)
    n_bytes = len(data)
    if n_bytes == 0:
        raise AudioError("audio is empty: 0 bytes of PCM", "empty")
    if n_bytes % frame_bytes:
        raise AudioError(
            f"raw PCM length {n_bytes} bytes is not a whole number of frames of {frame_bytes} bytes "
            f"({channels} channel(s) x {_PCM_SAMPLE_BYTES[encoding]} bytes of {encoding})",
            "bad_length",
        )
    n_frames = n_bytes // frame_bytes
    # Refuse before converting anything: the byte count already tells the duration.
    if n_frames > max_frames(sample_rate_hz, limits):
        raise too_long(limits, fmt_duration(n_frames / sample_rate_hz))
    mono = pcm_to_mono_float32(data, encoding, channels)
    return finish_mono(mono, sample_rate_hz, limits)


def decode_pcm_any(
    data: bytes | bytearray | memoryview,
    encoding: PcmEncoding,
    sample_rate_hz: int,
    channels: int,
    limits: AudioLimits | None = None,
    *,
    max_audio_s: float = 0.0,
) -> Decoded:
    """Like :func:`decode_pcm`, but PCM longer than one pass is accepted up to ``max_audio_s``.

    16 kHz mono ``s16le`` is wrapped without a copy; anything else is converted block by block.
    """
    limits = limits or AudioLimits()
    frame_bytes = validate_pcm_format(encoding, sample_rate_hz, channels, limits)
    n_bytes = len(data)
    if n_bytes == 0 or n_bytes % frame_bytes or n_bytes // frame_bytes <= max_frames(sample_rate_hz, limits):
        return decode_pcm(data, encoding, sample_rate_hz, channels, limits)
    n_frames = n_bytes // frame_bytes
    if max_audio_s > 0 and n_frames > math.floor(max(max_audio_s, limits.max_duration_s) * sample_rate_hz):
        raise too_long(limits, fmt_duration(n_frames / sample_rate_hz), max_audio_s)
    view = memoryview(data).cast("B")
    if encoding == "s16le" and channels == 1 and sample_rate_hz == limits.target_sample_rate_hz:
        samples: Int16Array = np.frombuffer(view, dtype="<i2").astype(np.int16, copy=False)
        return PcmStore.from_int16(samples, sample_rate_hz)
    sink = Collector(limits, max_audio_s)
    sink.start(sample_rate_hz)
    step = BLOCK_FRAMES * frame_bytes
    for a in range(0, n_bytes, step):
        sink.add(pcm_to_mono_float32(view[a : a + step], encoding, channels))
    return finish_long(sink)


def decode_waveform_any(
    samples: FloatArray, sample_rate_hz: int, limits: AudioLimits | None = None, *, max_audio_s: float = 0.0
) -> Decoded:
    """A float32 mono waveform at any accepted rate: resampled to 16 kHz; long ones go to a PcmStore."""
    limits = limits or AudioLimits()
    check_rate_and_channels(sample_rate_hz, 1, limits)
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if x.size <= max_frames(sample_rate_hz, limits):
        return finish_mono(x, sample_rate_hz, limits)
    if max_audio_s > 0 and x.size > math.floor(max(max_audio_s, limits.max_duration_s) * sample_rate_hz):
        raise too_long(limits, fmt_duration(x.size / sample_rate_hz), max_audio_s)
    sink = Collector(limits, max_audio_s)
    sink.start(sample_rate_hz)
    for a in range(0, x.size, BLOCK_FRAMES):
        sink.add(x[a : a + BLOCK_FRAMES])
    return finish_long(sink)


# ------------------------------------------------------------------------------------------- channels apart


def split_limit_error(channels: int, max_channels: int) -> AudioError:
    return AudioError(
        f"the recording has {channels} channels; channel splitting answers at most {max_channels} (send it "
        "with channels mixed, or split it into files of fewer channels)", "too_many_channels",
    )


class ChannelCollectors:
    """Like :class:`Collector`, but each channel of the decoded blocks goes into its own collector, so every
    channel is decoded exactly as a mono file holding only that channel would be (channel splitting)."""

    def __init__(self, limits: AudioLimits, max_audio_s: float | None, max_channels: int) -> None:
        self.limits = limits
        self.max_audio_s = max_audio_s
        self.max_channels = max_channels
        self.sinks: list[Collector] = []
        self.rate = 0
        self.total = 0

    def start(self, rate: int, channels: int = 1) -> None:
        if channels > self.max_channels:
            raise split_limit_error(channels, self.max_channels)
        self.rate = rate
        self.sinks = [Collector(self.limits, self.max_audio_s) for _ in range(channels)]
        for sink in self.sinks:
            sink.start(rate)

    def check_declared(self, declared_s: float, slack: float = 1.0, extra_s: float = 0.0) -> None:
        Collector(self.limits, self.max_audio_s).check_declared(declared_s, slack, extra_s)

    @property
    def store(self) -> PcmStore | None:
        return self.sinks[0].store if self.sinks else None

    def add_block(self, block: npt.NDArray[Any], channels: int) -> None:
        """Interleaved frames (flat or ``(frames, channels)``): channel c is ``flat[c::channels]``."""
        flat = block.reshape(-1)
        self.add_channels([flat[c::channels] for c in range(channels)])

    def add_channels(self, planes: list[npt.NDArray[Any]]) -> None:
        """One float32-convertible array per channel, all the same length."""
        if len(planes) != len(self.sinks):
            raise AudioError(f"the channel count changes mid-stream ({len(self.sinks)} -> {len(planes)})",
                             "undecodable")
        for sink, plane in zip(self.sinks, planes, strict=True):
            sink.add(plane.astype(np.float32))  # a fresh copy, as downmix makes for one channel
        self.total = self.sinks[0].total if self.sinks else 0

    def mono(self) -> FloatArray:
        """Channel 0's one-pass samples (what a caller checking for emptiness needs)."""
        return self.sinks[0].mono() if self.sinks else np.zeros(0, np.float32)

    def finish(self) -> list[Decoded]:
        """Every channel as the one-pass decoders return it: a float32 waveform or a long ``PcmStore``."""
        out: list[Decoded] = []
        for sink in self.sinks:
            if sink.store is not None:
                out.append(finish_long(sink))
            else:
                mono = sink.mono()[: max_frames(self.rate, self.limits)]  # codec padding
                out.append(finish_mono(mono, self.rate, self.limits))
        return out


def decode_pcm_channels(
    data: bytes | bytearray | memoryview,
    encoding: PcmEncoding,
    sample_rate_hz: int,
    channels: int,
    limits: AudioLimits | None = None,
    *,
    max_audio_s: float | None = None,
    max_channels: int = 8,
) -> list[Decoded]:
    """Raw interleaved PCM, each channel apart: exactly :func:`decode_pcm` (``max_audio_s`` None) or
    :func:`decode_pcm_any` of that channel's samples sent as mono PCM."""
    limits = limits or AudioLimits()
    frame_bytes = validate_pcm_format(encoding, sample_rate_hz, channels, limits)
    if channels > max_channels:
        raise split_limit_error(channels, max_channels)
    if channels == 1 or len(data) == 0 or len(data) % frame_bytes:
        planes = [data]  # one channel, or the mono path's own error for a bad length
    else:
        n_frames = len(data) // frame_bytes
        if n_frames > max_frames(sample_rate_hz, limits) and max_audio_s is None:
            raise too_long(limits, fmt_duration(n_frames / sample_rate_hz))
        dtype = "<i2" if encoding == "s16le" else "<f4"
        flat = np.frombuffer(data, dtype=dtype)
        planes = [np.ascontiguousarray(flat[c::channels]).tobytes() for c in range(channels)]
    if max_audio_s is None:
        return [decode_pcm(p, encoding, sample_rate_hz, 1 if len(planes) > 1 else channels, limits)
                for p in planes]
    return [decode_pcm_any(p, encoding, sample_rate_hz, 1 if len(planes) > 1 else channels, limits,
                           max_audio_s=max_audio_s) for p in planes]
