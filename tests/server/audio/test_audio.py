"""server.audio against real files made by ffmpeg/espeak-ng and real raw PCM."""

from __future__ import annotations

import io
import re
import struct

import numpy as np
import pytest
import soundfile as sf

from emotion2vec_serving.server.audio.decode import decode_encoded, sniff_format
from emotion2vec_serving.server.audio.errors import AudioError, AudioLimits
from emotion2vec_serving.server.audio.pcm import decode_pcm, resample
from tests.support.audio import (
    FORMATS,
    encode,
    encoded_signal,
    espeak_ng_wav,
    have_tool,
    make_signal,
    pcm_bytes,
    silence_file,
)

pytestmark = pytest.mark.skipif(not have_tool("ffmpeg"), reason="the ffmpeg CLI makes the test files")

LOSSLESS = {"wav", "wav_f32", "flac"}


def reference_16k(signal: np.ndarray, rate: int) -> np.ndarray:
    """What a perfect decoder returns for ``signal``: channel mean, resampled to 16 kHz."""
    return resample(signal.mean(axis=1).astype(np.float32), rate, 16000)


def best_correlation(ref: np.ndarray, got: np.ndarray, max_lag: int = 800) -> float:
    """Highest normalised correlation over lags up to ``max_lag`` samples (codec delays, priming)."""
    n = min(ref.size, got.size) - 2 * max_lag
    assert n > 8000, "signals too short to compare"
    x = ref[max_lag : max_lag + n].astype(np.float64)
    y = got[: n + 2 * max_lag].astype(np.float64)
    # All lags at once: windows of y (lag -max_lag .. +max_lag) against x, via FFT.
    size = 1 << int(np.ceil(np.log2(x.size + y.size)))
    cross = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size)), size)[: 2 * max_lag + 1]
    energy = np.concatenate(([0.0], np.cumsum(y * y)))
    window_energy = energy[n : n + 2 * max_lag + 1] - energy[: 2 * max_lag + 1]
    return float(np.max(cross / np.sqrt(np.dot(x, x) * np.maximum(window_energy, 1e-30))))


def wav_header(rate: int, channels: int, data_bytes: int, bits: int = 16) -> bytes:
    """A canonical 44-byte PCM WAV header, for files libraries refuse to write (absurd rates)."""
    block = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


# ---------------------------------------------------------------------------------------- good files


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_decodes_to_16k_mono_with_the_source_content(fmt: str) -> None:
    data = encoded_signal(fmt, 2.0, 44100, 2)
    got = decode_encoded(data)
    assert got.dtype == np.float32 and got.ndim == 1
    # Lossy codecs add priming/padding (AAC in ADTS keeps its 1024-sample priming).
    tolerance_s = 0.001 if fmt in LOSSLESS else 0.1
    assert got.size / 16000 == pytest.approx(2.0, abs=tolerance_s)
    corr = best_correlation(reference_16k(make_signal(2.0, 44100, 2), 44100), got)
    assert corr > (0.9999 if fmt in LOSSLESS else 0.95), corr


@pytest.mark.parametrize(
    ("fmt", "rate", "channels"),
    [
        *((fmt, 8000, 1) for fmt in ("wav", "flac", "mp3", "m4a", "ogg_vorbis", "ogg_opus")),
        *((fmt, 48000, 6) for fmt in ("wav", "flac", "m4a")),
        ("mp3", 22050, 2),
        ("ogg_opus", 24000, 2),
    ],
)
def test_rates_and_channel_counts(fmt: str, rate: int, channels: int) -> None:
    got = decode_encoded(encoded_signal(fmt, 2.0, rate, channels))
    assert got.size / 16000 == pytest.approx(2.0, abs=0.1)
    assert best_correlation(reference_16k(make_signal(2.0, rate, channels), rate), got) > 0.95


def test_lossless_decode_is_sample_exact_at_16k() -> None:
    signal = make_signal(1.0, 16000, 1)
    got = decode_encoded(encode(signal, 16000, "flac"))
    ref = np.round(signal[:, 0] * 32768) / 32768  # ffmpeg stores 16-bit FLAC
    np.testing.assert_allclose(got, ref, atol=1.5 / 32768)


@pytest.mark.skipif(not have_tool("espeak-ng"), reason="needs espeak-ng")
def test_espeak_ng_speech_with_a_streaming_wav_header() -> None:
    wav = espeak_ng_wav("The quick brown fox jumps over the lazy dog.")
    # espeak-ng writes a huge placeholder data size: the real length is what the bytes hold.
    assert struct.unpack("<I", wav[40:44])[0] > len(wav)
    rate = struct.unpack("<I", wav[24:28])[0]
    expected_s = (len(wav) - 44) / 2 / rate
    got = decode_encoded(wav)
    assert got.size / 16000 == pytest.approx(expected_s, abs=0.002)
    assert np.sqrt(np.mean(got**2)) > 0.01  # speech, not silence


def test_exactly_max_duration_of_lossy_audio_is_accepted_despite_codec_padding() -> None:
    limits = AudioLimits(max_duration_s=5.0)
    for fmt in ("m4a", "aac"):
        got = decode_encoded(encode(make_signal(5.0, 8000, 1), 8000, fmt), limits)
        assert got.size == 5 * 16000


# ---------------------------------------------------------------------------------------- raw PCM


@pytest.mark.parametrize("encoding", ["s16le", "f32le"])
@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_raw_pcm(encoding: str, rate: int, channels: int) -> None:
    signal = make_signal(2.0, rate, channels)
    got = decode_pcm(pcm_bytes(signal, encoding), encoding, rate, channels)  # type: ignore[arg-type]
    assert got.dtype == np.float32
    assert got.size == pytest.approx(signal.shape[0] * 16000 / rate, abs=1)
    ref = reference_16k(signal, rate)
    atol = 2e-4 if encoding == "s16le" else 1e-6
    np.testing.assert_allclose(got, ref, atol=atol)


def test_raw_pcm_downmix_is_the_channel_mean() -> None:
    left = np.full(1600, 0.5, np.float32)  # 100 ms: the default shortest audio
    right = np.full(1600, -0.25, np.float32)
    got = decode_pcm(np.stack([left, right], axis=1).tobytes(), "f32le", 16000, 2)
    np.testing.assert_allclose(got, 0.125, atol=1e-7)
    got16 = decode_pcm(pcm_bytes(np.stack([left, right], axis=1), "s16le"), "s16le", 16000, 2)
    np.testing.assert_allclose(got16, 0.125, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "reason", "message"),
    [
        ({"data": b""}, "empty", "audio is empty"),
        ({"data": b"\x00" * 1001}, "bad_length", "not a whole number of frames of 2 bytes"),
        ({"data": b"\x00" * 1002, "channels": 2}, "bad_length", "frames of 4 bytes"),
        ({"sample_rate_hz": 0}, "bad_sample_rate", "unsupported sample rate 0 Hz"),
        ({"sample_rate_hz": 100}, "bad_sample_rate", "accepted: 8000..384000 Hz"),
        ({"sample_rate_hz": 10**7}, "bad_sample_rate", "unsupported sample rate 10000000 Hz"),
        ({"channels": 0}, "bad_channels", "unsupported channel count 0"),
        ({"channels": 33, "data": b"\x00" * 66 * 400}, "bad_channels", "accepted: 1..32"),
        ({"encoding": "mulaw"}, "unsupported_encoding", "unsupported PCM encoding 'mulaw'"),
        ({"data": b"\x00" * 2 * 192}, "too_short", re.escape("audio too short: 12 ms (minimum 100 ms)")),
        (
            {"data": b"\x00" * 2 * 16000 * 31},
            "too_long",
            re.escape("audio too long: 31.00 s (maximum 30 s)"),
        ),
    ],
)
def test_raw_pcm_errors(kwargs: dict[str, object], reason: str, message: str) -> None:
    args: dict[str, object] = {
        "data": b"\x00" * 3200,
        "encoding": "s16le",
        "sample_rate_hz": 16000,
        "channels": 1,
        **kwargs,
    }
    with pytest.raises(AudioError, match=message) as info:
        decode_pcm(**args)  # type: ignore[arg-type]
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_raw_pcm_non_finite(bad: float) -> None:
    x = np.zeros(1600, np.float32)
    x[777] = bad
    with pytest.raises(AudioError, match="NaN or infinite") as info:
        decode_pcm(x.tobytes(), "f32le", 16000, 1)
    assert info.value.reason == "non_finite"


# ---------------------------------------------------------------------------------------- bad files


def test_empty_and_oversized() -> None:
    with pytest.raises(AudioError, match="audio is empty: 0 bytes") as info:
        decode_encoded(b"")
    assert info.value.reason == "empty"
    data = encoded_signal("wav", 2.0, 44100, 2)
    with pytest.raises(AudioError, match=r"encoded audio is \d+ bytes \(maximum 1000 bytes\)") as info:
        decode_encoded(data, AudioLimits(max_encoded_bytes=1000))
    assert info.value.reason == "too_large"


def test_random_bytes() -> None:
    rng = np.random.default_rng(7)
    junk = b"\x00" + rng.bytes(20000)
    with pytest.raises(AudioError, match="could not decode audio: unrecognised format") as info:
        decode_encoded(junk)
    assert info.value.reason == "undecodable"
    # Random bytes behind an MPEG sync word reach FFmpeg's MP3 decoder, which must refuse them cleanly.
    with pytest.raises(AudioError, match="could not decode audio as MP3") as info:
        decode_encoded(b"\xff\xfb" + rng.bytes(20000))
    assert info.value.reason == "undecodable"


def test_playlists_are_not_followed() -> None:
    """FFmpeg's HLS/concat demuxers would open other files; sniffing never hands them request bytes."""
    for text in (b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", b"ffconcat version 1.0\nfile /etc/passwd\n"):
        with pytest.raises(AudioError, match="unrecognised format"):
            decode_encoded(text)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("keep_bytes", [4, 12, 44, 100])
def test_truncated_headers(fmt: str, keep_bytes: int) -> None:
    with pytest.raises(AudioError) as info:
        decode_encoded(encoded_signal(fmt, 2.0, 44100, 2)[:keep_bytes])
    assert info.value.reason in {"undecodable", "empty", "too_short"}, info.value
    assert str(info.value)


# Measured behaviour of libsndfile 1.2 / FFmpeg 8 on the first half of a file: formats built from
# independent frames decode the complete part; the rest fail (M4A keeps its index at the end, a cut
# ADTS/FLAC frame is an error, and a cut OGG Vorbis stream has no end page). Either way: no crash.
PREFIX_DECODES = {"wav", "wav_f32", "mp3", "ogg_opus"}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_truncated_in_the_middle(fmt: str) -> None:
    data = encoded_signal(fmt, 2.0, 44100, 2)
    half = data[: len(data) // 2]
    if fmt not in PREFIX_DECODES:
        with pytest.raises(AudioError, match="could not decode audio as") as info:
            decode_encoded(half)
        assert info.value.reason == "undecodable"
        return
    got = decode_encoded(half)
    assert 0.8 < got.size / 16000 < 1.2
    ref = reference_16k(make_signal(2.0, 44100, 2), 44100)[: got.size]
    assert best_correlation(ref, got) > 0.95


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_corrupted_bytes_never_escape_as_other_exceptions(fmt: str) -> None:
    """Flipped bytes anywhere: the result is audio or an AudioError, never a crash or another error."""
    rng = np.random.default_rng(11)
    data = encoded_signal(fmt, 2.0, 44100, 2)
    for _ in range(12):
        mutated = bytearray(data)
        start = int(rng.integers(0, len(data)))
        length = int(rng.integers(1, 64))
        mutated[start : start + length] = rng.bytes(len(mutated[start : start + length]))
        try:
            got = decode_encoded(bytes(mutated))
        except AudioError as exc:
            assert str(exc)
        else:
            assert got.dtype == np.float32 and np.isfinite(got).all()


@pytest.mark.parametrize(("channels", "rate"), [(1, 22050), (2, 22050), (1, 16000)])
def test_absurdly_large_float_samples_are_refused(channels: int, rate: int) -> None:
    # Finite but far beyond any audio level: resampling and the model's normalisation would overflow.
    signal = make_signal(0.5, rate, channels)
    signal[100, :] = 3e38
    buf = io.BytesIO()
    sf.write(buf, signal, rate, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioError) as info:
        decode_encoded(buf.getvalue())
    assert info.value.reason in {"out_of_range", "non_finite"}  # two channels of 3e38 sum to inf
    if channels == 1:
        assert info.value.reason == "out_of_range" and "beyond +-1e+06" in str(info.value)
    x = np.zeros(1600, np.float32)
    x[10] = -2e6
    with pytest.raises(AudioError, match=r"reach 2e\+06") as raw:
        decode_pcm(x.tobytes(), "f32le", 16000, 1)
    assert raw.value.reason == "out_of_range"
    # 16-bit values written as floats (a common mistake) still decode.
    loud = (make_signal(0.5, 16000, 1) * 32767).astype(np.float32)
    assert np.isfinite(decode_pcm(loud.tobytes(), "f32le", 16000, 1)).all()


def test_non_finite_float_wav() -> None:
    signal = make_signal(1.0, 16000, 1)
    signal[4000, 0] = np.nan
    buf = io.BytesIO()
    sf.write(buf, signal, 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite") as info:
        decode_encoded(buf.getvalue())
    assert info.value.reason == "non_finite"


@pytest.mark.parametrize(
    ("rate", "channels", "reason"),
    [(4000, 1, "bad_sample_rate"), (768000, 1, "bad_sample_rate"), (16000, 40, "bad_channels")],
)
def test_absurd_rates_and_channel_counts_in_files(rate: int, channels: int, reason: str) -> None:
    data_bytes = channels * 2 * rate // 10
    with pytest.raises(AudioError) as info:
        decode_encoded(wav_header(rate, channels, data_bytes) + b"\x00" * data_bytes)
    assert info.value.reason == reason, info.value


def test_too_short_and_too_long_files() -> None:
    with pytest.raises(AudioError, match=r"audio too short: 10 ms \(minimum 100 ms\)"):
        decode_encoded(encode(make_signal(0.010, 16000, 1), 16000, "wav"))
    with pytest.raises(AudioError, match=r"audio too long: .* \(maximum 3 s\)") as info:
        decode_encoded(encode(make_signal(4.0, 16000, 1), 16000, "ogg_vorbis"), AudioLimits(max_duration_s=3))
    assert info.value.reason == "too_long"


# ---------------------------------------------------------------------------------------- bombs


@pytest.mark.parametrize(
    ("fmt", "duration_s", "rate", "seekable", "message"),
    [
        # The header declares the length: refused before decoding anything.
        ("flac", 3600.0, 8000, True, "3600.00 s declared in the file header"),
        ("ogg_vorbis", 600.0, 8000, True, "600.00 s declared in the file header"),
        ("m4a", 300.0, 8000, True, "declared in the file header"),
        ("ogg_opus", 120.0, 48000, True, "declared in the file header"),
        # Written to a pipe, the FLAC header says "length unknown": decoding stops at the limit.
        ("flac", 3600.0, 8000, False, "more than 30 s decoded \\(decoding stopped\\)"),
    ],
)
def test_decompression_bombs_are_refused_without_decoding_them(
    fmt: str, duration_s: float, rate: int, seekable: bool, message: str
) -> None:
    data = silence_file(fmt, duration_s, rate, seekable)
    assert len(data) < 4 * 1024 * 1024  # small on the wire ...
    with pytest.raises(AudioError, match=message) as info:  # ... refused, never expanded
        decode_encoded(data)
    assert info.value.reason == "too_long"


def test_undeclared_length_stops_after_the_limit_even_for_ffmpeg_formats() -> None:
    """An ADTS AAC stream has no length field at all: only counting decoded samples protects us."""
    data = encode(make_signal(8.0, 8000, 1), 8000, "aac")
    # FFmpeg guesses ~8 s from the bit rate; guesses are only trusted beyond 1.5 x the limit + 1 s.
    with pytest.raises(AudioError, match=r"more than 6 s decoded \(decoding stopped\)"):
        decode_encoded(data, AudioLimits(max_duration_s=6.0))


# ---------------------------------------------------------------------------------------- sniffing


def test_sniffing_uses_bytes_not_names() -> None:
    assert {fmt: sniff_format(encoded_signal(fmt, 2.0, 44100, 2)) for fmt in FORMATS} == {
        "wav": "wav",
        "wav_f32": "wav",
        "mp3": "mp3",
        "m4a": "mp4",
        "aac": "aac",
        "flac": "flac",
        "ogg_vorbis": "ogg",
        "ogg_opus": "ogg",
    }
    assert sniff_format(b"ID3\x03\x00\x00\x00\x00\x00\x05" + b"\x00" * 5 + b"fLaC") == "flac"
    assert sniff_format(b"hello world") is None
