"""Audio decoding, validation, downmixing and resampling for the server.

Everything here turns request bytes into what the model eats: a float32 mono waveform at 16 kHz. No
protobuf types (the service converts) and no filesystem: request bytes are only ever read from memory.

Two entry points:

- :func:`decode_encoded` for encoded files (WAV, MP3, M4A/AAC, FLAC, OGG Vorbis/Opus). The container is
  detected from the leading bytes (never from a name). WAV/FLAC/OGG go through libsndfile (``soundfile``,
  fast); everything else, and anything libsndfile refuses, goes through FFmpeg (``av``) with the
  demuxer named explicitly, so that FFmpeg never probes for playlist-like formats (HLS, concat) that
  could open other files or URLs.
- :func:`decode_pcm` for raw interleaved PCM (``s16le`` or ``f32le``) at any rate and channel count.

Both decode incrementally and stop as soon as the decoded duration passes ``max_duration_s``, so a small
file that declares (or really holds) hours of audio costs at most ``max_duration_s`` of decoding work
and memory: a decompression bomb is refused, not expanded. Channels are averaged into mono block by
block, so memory stays at one mono copy of at most ``max_duration_s`` of audio at the source rate.

Every failure is an :class:`AudioError` (a ``ValueError``) with a message a person understands and a
short ``reason`` code for metrics; library exceptions never escape.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soxr

from emotion2vec_serving.server import defaults

__all__ = [
    "SUPPORTED_FORMATS",
    "AudioError",
    "AudioLimits",
    "Decoded",
    "PcmEncoding",
    "PcmStore",
    "decode_encoded",
    "decode_encoded_any",
    "decode_pcm",
    "decode_pcm_any",
    "decode_waveform_any",
    "pcm_to_mono_float32",
    "resample",
    "sniff_format",
    "validate_pcm_format",
]

FloatArray = npt.NDArray[np.float32]
PcmEncoding = Literal["s16le", "f32le"]

#: Container formats :func:`sniff_format` recognises, with the names used in error messages.
SUPPORTED_FORMATS: dict[str, str] = {
    "wav": "WAV",
    "flac": "FLAC",
    "ogg": "OGG (Vorbis/Opus)",
    "mp3": "MP3",
    "mp4": "M4A/MP4 (AAC)",
    "aac": "AAC (ADTS)",
}

# FFmpeg demuxer for each sniffed format. Naming the demuxer turns off FFmpeg's probing.
_AV_DEMUXER = {"wav": "wav", "flac": "flac", "ogg": "ogg", "mp3": "mp3", "mp4": "mov", "aac": "aac"}
# Formats libsndfile reads natively; it is tried first for these because it is faster than FFmpeg.
_SNDFILE_FORMATS = frozenset({"wav", "flac", "ogg"})
# Frames per soundfile read: bounds the transient multichannel buffer (32 ch x 64 Ki x 4 B = 8 MiB).
_SNDFILE_BLOCK_FRAMES = 65536
_PCM_SAMPLE_BYTES = {"s16le": 2, "f32le": 4}
# Lossy codecs add up to a few thousand samples of priming/padding (AAC: 1024 + up to 2047 per stream,
# i.e. up to 0.4 s at 8 kHz), so a file encoded from exactly max_duration_s decodes slightly longer.
# Decoded audio up to this much over the limit is trimmed to the limit instead of being refused.
_CODEC_PADDING_S = 0.5


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


# ------------------------------------------------------------------------------------------- helpers


def _fmt_duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1.0 else f"{seconds:.2f} s"


def _too_long(limits: AudioLimits, detail: str, max_s: float | None = None) -> AudioError:
    limit = limits.max_duration_s if max_s is None else max_s
    return AudioError(f"audio too long: {detail} (maximum {limit:g} s)", "too_long")


def _check_rate_and_channels(sample_rate_hz: int, channels: int, limits: AudioLimits) -> None:
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


def _max_frames(sample_rate_hz: int, limits: AudioLimits) -> int:
    return math.floor(limits.max_duration_s * sample_rate_hz)


def _max_decoded_frames(sample_rate_hz: int, limits: AudioLimits) -> int:
    """Decoding budget for encoded files: the limit plus room for codec padding (trimmed afterwards)."""
    return _max_frames(sample_rate_hz, limits) + math.ceil(_CODEC_PADDING_S * sample_rate_hz)


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


def _finish(mono: FloatArray, sample_rate_hz: int, limits: AudioLimits) -> FloatArray:
    """Duration checks on the source-rate mono signal, then resampling to the target rate."""
    if mono.size == 0:
        raise AudioError("audio is empty: no samples decoded", "empty")
    duration_s = mono.size / sample_rate_hz
    if duration_s > limits.max_duration_s:
        raise _too_long(limits, _fmt_duration(duration_s))
    if duration_s < limits.min_duration_s:
        raise AudioError(
            f"audio too short: {_fmt_duration(duration_s)} (minimum {_fmt_duration(limits.min_duration_s)})",
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


# ------------------------------------------------------------------------------------------- long audio

#: Samples per chunk of a :class:`PcmStore` (~16 s at 16 kHz, 512 KiB of int16).
_STORE_CHUNK = 1 << 18
Int16Array = npt.NDArray[np.int16]


class PcmStore:
    """A long recording as 16-bit mono samples at the model's rate, held in fixed-size chunks.

    Long recordings are kept as int16 (2 bytes a sample: a 2-hour recording at 16 kHz is 230 MB, half of
    float32) and converted to float32 one segment at a time by :meth:`take`. Samples are appended in
    place into preallocated chunks, so growing never copies what is already held and the peak is one
    chunk above the samples themselves. A 16-bit source (WAV/FLAC s16, raw s16le) at 16 kHz is stored
    exactly (``take`` returns the same floats as the one-pass decoder); other sources are rounded to
    16 bits (quantisation noise at -96 dBFS; samples beyond [-1, 1) are clipped).
    """

    def __init__(self, sample_rate_hz: int = 16000, chunk_samples: int = _STORE_CHUNK) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._chunk = chunk_samples
        self._chunks: list[Int16Array] = []
        self._size = 0

    @classmethod
    def from_int16(cls, samples: Int16Array, sample_rate_hz: int = 16000) -> PcmStore:
        """Wrap an int16 array as one chunk (no copy; the store keeps a reference)."""
        store = cls(sample_rate_hz, max(1, int(samples.size)))
        if samples.size:
            store._chunks.append(samples)
            store._size = int(samples.size)
        return store

    def __len__(self) -> int:
        return self._size

    @property
    def duration_s(self) -> float:
        return self._size / self.sample_rate_hz

    @property
    def nbytes(self) -> int:
        """Bytes held (allocated chunk capacity)."""
        return sum(int(c.nbytes) for c in self._chunks)

    def append(self, samples: FloatArray) -> None:
        """Append float samples (nominally in [-1, 1)), rounded to 16 bits."""
        x = np.asarray(samples, dtype=np.float32)
        pos = 0
        while pos < x.size:
            used = self._size % self._chunk
            if used == 0 and (not self._chunks or self._size == len(self._chunks) * self._chunk):
                self._chunks.append(np.empty(self._chunk, np.int16))
                used = 0
            room = self._chunk - used
            n = min(room, x.size - pos)
            part = x[pos : pos + n] * np.float32(32768.0)
            np.rint(part, out=part)
            np.clip(part, -32768.0, 32767.0, out=part)
            self._chunks[-1][used : used + n] = part
            self._size += n
            pos += n

    def take(self, start: int, end: int) -> FloatArray:
        """A fresh float32 copy of samples ``[start, end)`` (clamped), scaled into [-1, 1)."""
        start, end = max(0, start), min(end, self._size)
        out = np.empty(max(0, end - start), np.float32)
        if end <= start:
            return out
        filled = 0
        base = 0
        for chunk in self._chunks:
            n = min(chunk.size, self._size - base)
            lo, hi = max(start, base), min(end, base + n)
            if lo < hi:
                out[filled : filled + hi - lo] = chunk[lo - base : hi - base]
                filled += hi - lo
            base += n
            if base >= end:
                break
        out *= np.float32(1.0 / 32768.0)
        return out

    def blocks(self, block_samples: int) -> Iterator[FloatArray]:
        """The whole recording as consecutive float32 blocks of ``block_samples`` (the last shorter)."""
        for start in range(0, self._size, block_samples):
            yield self.take(start, start + block_samples)


#: What the ``*_any`` decoders return: a float32 waveform for audio that fits one model pass (exactly what
#: ``decode_encoded``/``decode_pcm`` return), a :class:`PcmStore` for a longer recording.
Decoded = FloatArray | PcmStore


class _Collector:
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

    def start(self, rate: int) -> None:
        self.rate = rate
        self.pass_frames = _max_decoded_frames(rate, self.limits)
        if not self.long_ok:
            self.limit_frames = self.pass_frames
        elif math.isinf(self.max_s):  # no limit but the input size
            self.limit_frames = math.inf
        else:
            self.limit_frames = math.floor(self.max_s * rate) + math.ceil(_CODEC_PADDING_S * rate)

    def _limit_text(self) -> str:
        return f"more than {self.max_s:g} s decoded (decoding stopped)"

    def check_declared(self, declared_s: float, slack: float = 1.0, extra_s: float = 0.0) -> None:
        """Refuse early when the container header declares (clearly) more than the limit."""
        limit = self.limits.max_duration_s if not self.long_ok else self.max_s
        exact = slack == 1.0 and extra_s == 0.0
        limit_s = limit + _CODEC_PADDING_S if exact else slack * limit + extra_s
        if declared_s > limit_s:
            detail = f"{_fmt_duration(declared_s)} declared in the file header"
            raise _too_long(self.limits, detail, self.max_s)

    def add(self, block: FloatArray) -> None:
        self.total += int(block.size)
        if self.total > self.limit_frames:
            raise _too_long(self.limits, self._limit_text(), self.max_s)
        if self.store is None:
            self.blocks.append(block)
            if self.long_ok and self.total > self.pass_frames:
                self._go_long()
        else:
            self._pending.append(block)
            self._pending_size += int(block.size)
            if self._pending_size >= _SNDFILE_BLOCK_FRAMES:
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
            if len(store) > keep:
                store._size = keep
        return store


# ------------------------------------------------------------------------------------------- raw PCM


def validate_pcm_format(encoding: str, sample_rate_hz: int, channels: int, limits: AudioLimits) -> int:
    """Check a raw PCM description; return the frame size in bytes (all channels of one sample)."""
    if encoding not in _PCM_SAMPLE_BYTES:
        raise AudioError(
            f"unsupported PCM encoding {encoding!r} (accepted: s16le, f32le)", "unsupported_encoding"
        )
    _check_rate_and_channels(sample_rate_hz, channels, limits)
    return _PCM_SAMPLE_BYTES[encoding] * channels


def _downmix(interleaved: npt.NDArray[Any], channels: int, scale: float = 1.0) -> FloatArray:
    """Interleaved samples (flat or ``(frames, channels)``) -> float32 mono: ``scale`` x mean over channels.

    Strided per-channel adds: numpy reductions over a short inner axis are ~15x slower than this.
    Non-finite or huge float input may overflow or give NaN here, silently: ``check_samples`` refuses it.
    """
    flat = interleaved.reshape(-1)
    mono: FloatArray = flat[0::channels].astype(np.float32)  # always a fresh copy
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
        return _downmix(np.frombuffer(data, dtype="<i2"), channels, 1.0 / 32768.0)
    if encoding == "f32le":
        return _downmix(np.frombuffer(data, dtype="<f4"), channels)
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
    if n_frames > _max_frames(sample_rate_hz, limits):
        raise _too_long(limits, _fmt_duration(n_frames / sample_rate_hz))
    mono = pcm_to_mono_float32(data, encoding, channels)
    return _finish(mono, sample_rate_hz, limits)


# ------------------------------------------------------------------------------------------- sniffing


def _skip_id3(data: bytes) -> int:
    """Offset just after a leading ID3v2 tag (0 without one). The tag size is a 28-bit syncsafe int."""
    if len(data) >= 10 and data[:3] == b"ID3" and all(b < 0x80 for b in data[6:10]):
        size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
        footer = 10 if data[5] & 0x10 else 0
        return 10 + size + footer
    return 0


def sniff_format(data: bytes) -> str | None:
    """Container format from the leading bytes: a key of :data:`SUPPORTED_FORMATS`, or ``None``."""
    head = data[:16]
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mp4"
    offset = _skip_id3(data)
    body = data[offset : offset + 4]
    if body[:4] == b"fLaC":
        return "flac"
    if len(body) >= 2 and body[0] == 0xFF:
        b1 = body[1]
        if b1 & 0xF6 == 0xF0:  # 12-bit sync + layer 00: ADTS AAC
            return "aac"
        if b1 & 0xE0 == 0xE0 and (b1 >> 1) & 0x3 != 0:  # 11-bit sync + layer I/II/III: MPEG audio
            return "mp3"
    if offset and len(data) > offset:
        # An ID3 tag followed by something we could not place: let FFmpeg's mp3 demuxer resync.
        return "mp3"
    return None


# ------------------------------------------------------------------------------------------- decoders


def _decode_sndfile(
    data: bytes, limits: AudioLimits, sink: _Collector | None = None
) -> tuple[FloatArray, int]:
    import soundfile as sf

    sink = sink or _Collector(limits)
    with sf.SoundFile(io.BytesIO(data)) as f:
        rate, channels = int(f.samplerate), int(f.channels)
        _check_rate_and_channels(rate, channels, limits)
        sink.start(rate)
        declared = int(f.frames)
        # libsndfile reports the header's frame count; trust it only to refuse early (it can be wrong
        # in the other direction, e.g. streamed WAV headers), and count what is really decoded.
        if 0 < declared < 2**62:
            sink.check_declared(declared / rate, slack=1.0)
        while True:
            block = f.read(_SNDFILE_BLOCK_FRAMES, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            sink.add(_downmix(block, channels))
    return sink.mono(), rate


def _refuse_nested_open(url: str, flags: int, options: dict[str, Any]) -> Any:
    # Request bytes must never make FFmpeg open another file or URL (playlists, mov data references).
    raise PermissionError(f"opening {url!r} from audio data is not allowed")


_AV_SAMPLE_SCALE = {
    "u8": 1 / 128.0,
    "s16": 1 / 32768.0,
    "s32": 1 / 2147483648.0,
    "s64": 1 / 2.0**63,
    "flt": 1.0,
    "dbl": 1.0,
}


def _frame_to_mono(frame: Any) -> FloatArray:
    """One decoded PyAV AudioFrame -> float32 mono, whatever its sample format and layout."""
    fmt_name: str = frame.format.name
    planar: bool = frame.format.is_planar
    base = fmt_name[:-1] if planar else fmt_name
    if base not in _AV_SAMPLE_SCALE:
        raise AudioError(f"unsupported decoded sample format {fmt_name!r}", "unsupported_encoding")
    arr: npt.NDArray[Any] = np.asarray(frame.to_ndarray())
    n = int(frame.samples)
    if arr.size == 0 or n == 0:
        return np.zeros(0, np.float32)
    channels = arr.shape[0] if planar else max(1, arr.size // n)
    # Planar (channels, n) transposed is the interleaved layout _downmix expects.
    mono = _downmix(np.ascontiguousarray(arr.T) if planar else arr, channels)
    if base == "u8":
        mono -= np.float32(128.0)
    scale = _AV_SAMPLE_SCALE[base]
    if scale != 1.0:
        mono *= np.float32(scale)
    return mono


def _iter_av_frames(container: Any, stream: Any) -> Iterator[Any]:
    for packet in container.demux(stream):
        yield from packet.decode()


def _decode_av(
    data: bytes, fmt: str, limits: AudioLimits, sink: _Collector | None = None
) -> tuple[FloatArray, int]:
    import av

    sink = sink or _Collector(limits)
    container = av.open(
        io.BytesIO(data),
        mode="r",
        format=_AV_DEMUXER[fmt],
        io_open=_refuse_nested_open,
        # Belt and braces against external references, whatever the demuxer.
        options={"protocol_whitelist": "none", "enable_drefs": "0"},
    )
    try:
        if not container.streams.audio:
            raise AudioError("no audio stream found in the file", "no_audio_stream")
        stream = container.streams.audio[0]
        declared_s = None
        if stream.duration is not None and stream.time_base is not None:
            declared_s = float(stream.duration * stream.time_base)
        # Durations FFmpeg estimates from bit rate (headerless VBR MP3) can be off by tens of percent,
        # so only a clear excess is refused before decoding; the decoded-sample count below is exact.
        if declared_s is not None:
            sink.check_declared(declared_s, slack=1.5, extra_s=1.0)
        rate: int | None = None
        for frame in _iter_av_frames(container, stream):
            if rate is None:
                rate = int(frame.sample_rate)
                _check_rate_and_channels(rate, max(1, len(frame.layout.channels)), limits)
                sink.start(rate)
            elif frame.sample_rate != rate:
                raise AudioError(
                    f"sample rate changes mid-stream ({rate} Hz -> {frame.sample_rate} Hz)", "undecodable"
                )
            sink.add(_frame_to_mono(frame))
    finally:
        container.close()
    if rate is None:
        raise AudioError("audio is empty: the file holds no decodable audio frames", "empty")
    return sink.mono(), rate


def _check_encoded(data: bytes, limits: AudioLimits) -> str:
    """The container format of encoded bytes; AudioError when empty, too large or unrecognised."""
    if not data:
        raise AudioError("audio is empty: 0 bytes", "empty")
    if len(data) > limits.max_encoded_bytes:
        raise AudioError(
            f"encoded audio is {len(data)} bytes (maximum {limits.max_encoded_bytes} bytes)", "too_large"
        )
    fmt = sniff_format(data)
    if fmt is None:
        names = ", ".join(SUPPORTED_FORMATS.values())
        raise AudioError(
            f"could not decode audio: unrecognised format (first bytes {data[:8].hex()}; accepted: {names})",
            "undecodable",
        )
    return fmt


def decode_encoded(data: bytes, limits: AudioLimits | None = None) -> FloatArray:
    """Encoded audio file bytes -> float32 mono at ``limits.target_sample_rate_hz``.

    Accepts WAV, MP3, M4A/AAC (MP4 or ADTS), FLAC and OGG Vorbis/Opus, recognised from the bytes.
    Raises :class:`AudioError` for empty, oversized, unrecognised or undecodable bytes, absurd rates or
    channel counts, too short or too long audio (decoding stops at the limit), and NaN/Inf samples.
    Blocking and CPU-bound: call it from a worker thread.
    """
    limits = limits or AudioLimits()
    data = bytes(data)
    fmt = _check_encoded(data, limits)
    try:
        # NaN/Inf in float payloads are reported once by check_samples, not as numpy warnings.
        with np.errstate(invalid="ignore", over="ignore"):
            mono, rate, _ = _decode_any(data, fmt, limits)
            mono = mono[: _max_frames(rate, limits)]  # codec padding within _CODEC_PADDING_S
    except AudioError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # any library failure on bad bytes is the caller's problem, not a crash
        # FFmpeg errors carry errno noise and a '<none>' filename; their strerror is the readable part.
        detail = str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__
        raise AudioError(
            f"could not decode audio as {SUPPORTED_FORMATS[fmt]}: {detail}", "undecodable"
        ) from exc
    return _finish(mono, rate, limits)


def _decode_any(
    data: bytes, fmt: str, limits: AudioLimits, max_audio_s: float | None = None,
    sinks: list[_Collector] | None = None,
) -> tuple[FloatArray, int, _Collector]:
    record = sinks if sinks is not None else []

    def new_sink() -> _Collector:
        record.append(_Collector(limits, max_audio_s))
        return record[-1]

    # libsndfile decodes Opus about twice as slowly as FFmpeg (measured: 30 s stereo, 370 vs 200 ms).
    is_opus = fmt == "ogg" and data[28:36] == b"OpusHead"
    if fmt not in _SNDFILE_FORMATS or is_opus:
        sink = new_sink()
        mono, rate = _decode_av(data, fmt, limits, sink)
        return mono, rate, sink
    sink = new_sink()
    try:
        mono, rate = _decode_sndfile(data, limits, sink)
    except AudioError:
        raise
    except Exception:
        # libsndfile lacks some codecs FFmpeg has (e.g. WAV carrying MP3 or G.726); FFmpeg gets a second
        # try and its error, if any, is the one reported.
        sink = new_sink()
        mono, rate = _decode_av(data, fmt, limits, sink)
        return mono, rate, sink
    if mono.size == 0 and sink.store is None:
        # libsndfile reports some damaged files (e.g. a truncated OGG Vorbis) as empty without an error;
        # FFmpeg either decodes them or says what is wrong.
        sink = new_sink()
        mono, rate = _decode_av(data, fmt, limits, sink)
    return mono, rate, sink


def _finish_long(sink: _Collector) -> PcmStore:
    store = sink.finish_long()
    if len(store) == 0:
        raise AudioError("audio is empty: no samples decoded", "empty")
    return store


def decode_encoded_any(
    data: bytes, limits: AudioLimits | None = None, *, max_audio_s: float = 0.0
) -> Decoded:
    """Like :func:`decode_encoded`, but audio longer than one pass is accepted up to ``max_audio_s``.

    Returns exactly what :func:`decode_encoded` returns (float32 at 16 kHz) when the audio fits one pass
    (``limits.max_duration_s``), else a :class:`PcmStore` (``max_audio_s`` 0 = no limit but
    ``limits.max_encoded_bytes``). Decoding is incremental either way: memory is the encoded bytes plus
    the 16 kHz int16 recording plus one block. A decoder error part-way through a long file fails the
    whole request (the message says how far decoding got); decoders that resynchronise over damage
    (MP3, ADTS) simply skip it.
    """
    limits = limits or AudioLimits()
    data = bytes(data)
    fmt = _check_encoded(data, limits)
    sinks: list[_Collector] = []
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            mono, rate, sink = _decode_any(data, fmt, limits, max_audio_s, sinks)
            if sink.store is not None:
                return _finish_long(sink)
            mono = mono[: _max_frames(rate, limits)]  # codec padding within _CODEC_PADDING_S
    except AudioError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        detail = str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__
        where = ""
        if sinks and sinks[-1].rate and sinks[-1].total:
            where = f" after {_fmt_duration(sinks[-1].total / sinks[-1].rate)} of audio"
        raise AudioError(
            f"could not decode audio as {SUPPORTED_FORMATS[fmt]}{where}: {detail}", "undecodable"
        ) from exc
    return _finish(mono, rate, limits)


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
    if n_bytes == 0 or n_bytes % frame_bytes or n_bytes // frame_bytes <= _max_frames(sample_rate_hz, limits):
        return decode_pcm(data, encoding, sample_rate_hz, channels, limits)
    n_frames = n_bytes // frame_bytes
    if max_audio_s > 0 and n_frames > math.floor(max(max_audio_s, limits.max_duration_s) * sample_rate_hz):
        raise _too_long(limits, _fmt_duration(n_frames / sample_rate_hz), max_audio_s)
    view = memoryview(data).cast("B")
    if encoding == "s16le" and channels == 1 and sample_rate_hz == limits.target_sample_rate_hz:
        samples: Int16Array = np.frombuffer(view, dtype="<i2").astype(np.int16, copy=False)
        return PcmStore.from_int16(samples, sample_rate_hz)
    sink = _Collector(limits, max_audio_s)
    sink.start(sample_rate_hz)
    step = _SNDFILE_BLOCK_FRAMES * frame_bytes
    for a in range(0, n_bytes, step):
        sink.add(pcm_to_mono_float32(view[a : a + step], encoding, channels))
    return _finish_long(sink)


def decode_waveform_any(
    samples: FloatArray, sample_rate_hz: int, limits: AudioLimits | None = None, *, max_audio_s: float = 0.0
) -> Decoded:
    """A float32 mono waveform at any accepted rate: resampled to 16 kHz; long ones go to a PcmStore."""
    limits = limits or AudioLimits()
    _check_rate_and_channels(sample_rate_hz, 1, limits)
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if x.size <= _max_frames(sample_rate_hz, limits):
        return _finish(x, sample_rate_hz, limits)
    if max_audio_s > 0 and x.size > math.floor(max(max_audio_s, limits.max_duration_s) * sample_rate_hz):
        raise _too_long(limits, _fmt_duration(x.size / sample_rate_hz), max_audio_s)
    sink = _Collector(limits, max_audio_s)
    sink.start(sample_rate_hz)
    for a in range(0, x.size, _SNDFILE_BLOCK_FRAMES):
        sink.add(x[a : a + _SNDFILE_BLOCK_FRAMES])
    return _finish_long(sink)
