"""Encoded audio files -> float32 mono at 16 kHz: :func:`decode_encoded` and :func:`decode_encoded_any`.

WAV, MP3, M4A/AAC, FLAC, OGG Vorbis/Opus. The container is detected from the leading bytes (never from a
name). WAV/FLAC/OGG go through libsndfile (``soundfile``, fast); everything else, and anything libsndfile
refuses, goes through FFmpeg (``av``) with the demuxer named explicitly, so that FFmpeg never probes for
playlist-like formats (HLS, concat) that could open other files or URLs. Request bytes are only ever read from
memory, never from the filesystem.

Decoding is incremental and stops as soon as the decoded duration passes ``max_duration_s`` (the
:class:`~server.audio.pcm.Collector`), so a small file that declares (or really holds) hours of audio costs at
most ``max_duration_s`` of decoding work and memory: a decompression bomb is refused, not expanded. Channels
are averaged into mono block by block, so memory stays at one mono copy of at most ``max_duration_s`` of audio
at the source rate. Raw PCM and waveforms: ``server/audio/pcm.py``.

Every failure is an :class:`~server.audio.errors.AudioError` with a message a person understands and a short
``reason`` code for metrics; library exceptions never escape.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.server.audio.errors import (
    AudioError,
    AudioLimits,
    check_rate_and_channels,
    fmt_duration,
    max_frames,
)
from emotion2vec_serving.server.audio.pcm import (
    BLOCK_FRAMES,
    ChannelCollectors,
    Collector,
    downmix,
    finish_long,
    finish_mono,
)
from emotion2vec_serving.server.audio.store import Decoded, FloatArray

__all__ = [
    "SUPPORTED_FORMATS",
    "decode_encoded",
    "decode_encoded_any",
    "decode_encoded_channels",
    "sniff_format",
]

#: What the decoders feed: one collector (channels averaged) or one per channel (channel splitting).
Sink = Collector | ChannelCollectors

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
    data: bytes, limits: AudioLimits, sink: Sink | None = None
) -> tuple[FloatArray, int]:
    import soundfile as sf  # lazy (libsndfile, heavy): raw PCM and streams never load it

    sink = sink or Collector(limits)
    with sf.SoundFile(io.BytesIO(data)) as f:
        rate, channels = int(f.samplerate), int(f.channels)
        check_rate_and_channels(rate, channels, limits)
        sink.start(rate, channels)
        declared = int(f.frames)
        # libsndfile reports the header's frame count; trust it only to refuse early (it can be wrong
        # in the other direction, e.g. streamed WAV headers), and count what is really decoded.
        if 0 < declared < 2**62:
            sink.check_declared(declared / rate, slack=1.0)
        while True:
            block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            sink.add_block(block, channels)
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


def _frame_samples(frame: Any) -> tuple[str, bool, npt.NDArray[Any], int]:
    """A decoded PyAV AudioFrame's sample format (without the planar ``p``), planarity, samples as an array
    and sample count; an unsupported format is an ``AudioError``."""
    fmt_name: str = frame.format.name
    planar: bool = frame.format.is_planar
    base = fmt_name[:-1] if planar else fmt_name
    if base not in _AV_SAMPLE_SCALE:
        raise AudioError(f"unsupported decoded sample format {fmt_name!r}", "unsupported_encoding")
    return base, planar, np.asarray(frame.to_ndarray()), int(frame.samples)


def _frame_to_mono(frame: Any) -> FloatArray:
    """One decoded PyAV AudioFrame -> float32 mono, whatever its sample format and layout."""
    base, planar, arr, n = _frame_samples(frame)
    if arr.size == 0 or n == 0:
        return np.zeros(0, np.float32)
    channels = arr.shape[0] if planar else max(1, arr.size // n)
    # Planar (channels, n) transposed is the interleaved layout downmix expects.
    mono = downmix(np.ascontiguousarray(arr.T) if planar else arr, channels)
    if base == "u8":
        mono -= np.float32(128.0)
    scale = _AV_SAMPLE_SCALE[base]
    if scale != 1.0:
        mono *= np.float32(scale)
    return mono


def _frame_to_channels(frame: Any) -> list[FloatArray]:
    """One decoded PyAV AudioFrame -> one float32 array per channel, each exactly what
    :func:`_frame_to_mono` gives for a mono frame holding that channel's samples."""
    base, planar, arr, n = _frame_samples(frame)
    channels = max(1, len(frame.layout.channels))
    if arr.size == 0 or n == 0:
        return [np.zeros(0, np.float32) for _ in range(channels)]
    flat = arr.reshape(-1)
    planes = [arr[c] for c in range(channels)] if planar else [flat[c::channels] for c in range(channels)]
    out = []
    scale = _AV_SAMPLE_SCALE[base]
    for plane in planes:
        x = plane.astype(np.float32)
        if base == "u8":
            x -= np.float32(128.0)
        if scale != 1.0:
            x *= np.float32(scale)
        out.append(x)
    return out


def _iter_av_frames(container: Any, stream: Any) -> Iterator[Any]:
    for packet in container.demux(stream):
        yield from packet.decode()


def _decode_av(
    data: bytes, fmt: str, limits: AudioLimits, sink: Sink | None = None
) -> tuple[FloatArray, int]:
    import av  # lazy (FFmpeg, heavy): loaded only when a file needs FFmpeg

    sink = sink or Collector(limits)
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
                check_rate_and_channels(rate, max(1, len(frame.layout.channels)), limits)
                sink.start(rate, max(1, len(frame.layout.channels)))
            elif frame.sample_rate != rate:
                raise AudioError(
                    f"sample rate changes mid-stream ({rate} Hz -> {frame.sample_rate} Hz)", "undecodable"
                )
            if isinstance(sink, ChannelCollectors):
                sink.add_channels(_frame_to_channels(frame))
            else:
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
            mono = mono[: max_frames(rate, limits)]  # codec padding within CODEC_PADDING_S
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
    return finish_mono(mono, rate, limits)


def _decode_any(
    data: bytes, fmt: str, limits: AudioLimits, max_audio_s: float | None = None,
    sinks: list[Sink] | None = None, make_sink: Callable[[], Sink] | None = None,
) -> tuple[FloatArray, int, Sink]:
    record = sinks if sinks is not None else []

    def new_sink() -> Sink:
        record.append(make_sink() if make_sink is not None else Collector(limits, max_audio_s))
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
    sinks: list[Sink] = []
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            mono, rate, sink = _decode_any(data, fmt, limits, max_audio_s, sinks)
            if sink.store is not None:
                assert isinstance(sink, Collector)
                return finish_long(sink)
            mono = mono[: max_frames(rate, limits)]  # codec padding within CODEC_PADDING_S
    except AudioError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        detail = str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__
        where = ""
        if sinks and sinks[-1].rate and sinks[-1].total:
            where = f" after {fmt_duration(sinks[-1].total / sinks[-1].rate)} of audio"
        raise AudioError(
            f"could not decode audio as {SUPPORTED_FORMATS[fmt]}{where}: {detail}", "undecodable"
        ) from exc
    return finish_mono(mono, rate, limits)



def decode_encoded_channels(
    data: bytes, limits: AudioLimits | None = None, *, max_audio_s: float | None = None, max_channels: int = 8
) -> list[Decoded]:
    """Each channel of an encoded file apart, in channel order (channel splitting): every channel is exactly
    what :func:`decode_encoded` (``max_audio_s`` None) or :func:`decode_encoded_any` returns for a mono file
    holding that channel's decoded samples. More than ``max_channels`` channels is an AudioError
    ``too_many_channels``. Memory: one mono copy (or long store) per channel.
    """
    limits = limits or AudioLimits()
    data = bytes(data)
    fmt = _check_encoded(data, limits)
    sinks: list[Sink] = []
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            _, _, sink = _decode_any(data, fmt, limits, max_audio_s, sinks,
                                     lambda: ChannelCollectors(limits, max_audio_s, max_channels))
        if sink.rate == 0:
            raise AudioError("audio is empty: the file holds no decodable audio frames", "empty")
        assert isinstance(sink, ChannelCollectors)
        return sink.finish()
    except AudioError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        detail = str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__
        raise AudioError(
            f"could not decode audio as {SUPPORTED_FORMATS[fmt]}: {detail}", "undecodable"
        ) from exc
