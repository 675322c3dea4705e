"""Real encoded audio for tests, made with the ffmpeg and espeak-ng command-line tools.

Import these functions from any test (they are plain functions, cached per argument set, so several
tests can ask for the same file at no extra cost):

- :func:`make_signal` -- a deterministic multi-tone test signal, ``(frames, channels)`` float32.
- :func:`encode` -- that signal (or any float32 signal) as the bytes of a real WAV/MP3/M4A/AAC/FLAC/OGG
  file (``fmt`` is one of :data:`FORMATS`).
- :func:`encoded_signal` -- ``encode(make_signal(...))`` in one cached call.
- :func:`silence_file` -- a small file holding a long stretch of silence (decompression-bomb tests).
- :func:`espeak_ng_wav` -- synthetic speech as WAV bytes.
- :func:`pcm_bytes` -- a signal as raw interleaved ``s16le``/``f32le`` bytes.
- :func:`tone_bursts` -- 16 kHz mono tone bursts separated by silences, with their true boundaries.

Files are written to a private temporary directory only because the MP4 muxer needs a seekable
output; nothing is left behind.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

#: fmt -> (file suffix, ffmpeg codec arguments)
FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wav": ("wav", ("-c:a", "pcm_s16le")),
    "wav_f32": ("wav", ("-c:a", "pcm_f32le")),
    "mp3": ("mp3", ("-c:a", "libmp3lame", "-b:a", "128k")),
    "m4a": ("m4a", ("-c:a", "aac", "-b:a", "128k")),
    "aac": ("aac", ("-c:a", "aac", "-b:a", "128k", "-f", "adts")),
    "flac": ("flac", ("-c:a", "flac")),
    "ogg_vorbis": ("ogg", ("-c:a", "libvorbis", "-q:a", "5")),
    "ogg_opus": ("opus", ("-c:a", "libopus", "-b:a", "96k")),
}


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None


def make_signal(duration_s: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> FloatArray:
    """A deterministic test signal, ``(frames, channels)`` float32 at about -12 dBFS.

    Three tones (all below 4 kHz so that 8 kHz sources and lossy codecs keep them) under a slow
    amplitude envelope, so the waveform is not periodic and cross-correlation has one clear peak.
    Each channel gets different phases; the downmix is their mean.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(round(duration_s * rate)) / rate
    out = np.empty((t.size, channels), np.float32)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t)
    for ch in range(channels):
        phases = rng.uniform(0, 2 * np.pi, 3)
        x = (
            np.sin(2 * np.pi * 220.0 * t + phases[0])
            + 0.5 * np.sin(2 * np.pi * 517.0 * t + phases[1])
            + 0.3 * np.sin(2 * np.pi * 1230.0 * t + phases[2])
        )
        out[:, ch] = (0.25 * envelope * x / 1.8).astype(np.float32)
    return out


def _run_ffmpeg(args: list[str], input_bytes: bytes | None = None) -> None:
    proc = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
        input=input_bytes,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")


def encode(signal: FloatArray, rate: int, fmt: str) -> bytes:
    """Encode a ``(frames, channels)`` (or 1-D mono) float32 signal with ffmpeg; return the file bytes."""
    suffix, codec = FORMATS[fmt]
    sig = np.asarray(signal, np.float32)
    if sig.ndim == 1:
        sig = sig[:, None]
    with tempfile.TemporaryDirectory(prefix="audio-fixture-") as tmp:
        out = Path(tmp) / f"out.{suffix}"
        _run_ffmpeg(
            ["-f", "f32le", "-ar", str(rate), "-ac", str(sig.shape[1]), "-i", "pipe:0", *codec, str(out)],
            np.ascontiguousarray(sig).tobytes(),
        )
        return out.read_bytes()


@functools.lru_cache(maxsize=64)
def encoded_signal(fmt: str, duration_s: float = 2.0, rate: int = 44100, channels: int = 2) -> bytes:
    """``encode(make_signal(duration_s, rate, channels), rate, fmt)``, cached."""
    return encode(make_signal(duration_s, rate, channels), rate, fmt)


@functools.lru_cache(maxsize=16)
def silence_file(fmt: str, duration_s: float, rate: int = 8000, seekable: bool = True) -> bytes:
    """A file of ``duration_s`` of digital silence, made by ffmpeg's ``anullsrc`` (tiny when compressed).

    ``seekable=False`` writes to a pipe, so the muxer cannot go back and fill in the total length:
    a FLAC made that way declares an unknown sample count, and only counting decoded samples helps.
    """
    suffix, codec = FORMATS[fmt]
    source = ["-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono", "-t", str(duration_s), *codec]
    if seekable:
        with tempfile.TemporaryDirectory(prefix="audio-fixture-") as tmp:
            out = Path(tmp) / f"out.{suffix}"
            _run_ffmpeg([*source, str(out)])
            return out.read_bytes()
    muxer = {"flac": "flac", "ogg_vorbis": "ogg", "ogg_opus": "ogg", "mp3": "mp3", "wav": "wav"}[fmt]
    proc = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *source, "-f", muxer, "pipe:1"],
        capture_output=True,
        check=True,
    )
    return proc.stdout


@functools.lru_cache(maxsize=8)
def espeak_ng_wav(text: str = "I am so happy to see you today.", voice: str = "en") -> bytes:
    """Synthetic speech as WAV bytes (espeak-ng writes 22.05 kHz mono with a streaming-style header)."""
    proc = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True)
    return proc.stdout


def pcm_bytes(signal: FloatArray, encoding: str) -> bytes:
    """A ``(frames, channels)`` float32 signal as interleaved little-endian ``s16le`` or ``f32le`` bytes."""
    sig = np.asarray(signal, np.float32)
    if encoding == "s16le":
        return np.clip(np.round(sig * 32768.0), -32768, 32767).astype("<i2").tobytes()
    if encoding == "f32le":
        return sig.astype("<f4").tobytes()
    raise ValueError(encoding)


def tone_bursts(
    bursts: list[tuple[float, float]],
    total_s: float,
    rate: int = 16000,
    amplitude: float = 0.3,
    noise_db: float | None = -70.0,
    seed: int = 0,
) -> FloatArray:
    """16 kHz (by default) mono float32: 440 Hz tone during each ``(start_s, end_s)``, quiet noise elsewhere.

    ``noise_db`` is the RMS level of a white-noise floor in dBFS (``None`` for digital silence), so the
    "silence" is realistic but well under any sensible energy threshold.
    """
    n = round(total_s * rate)
    rng = np.random.default_rng(seed)
    x = np.zeros(n, np.float64)
    if noise_db is not None:
        x += rng.standard_normal(n) * 10 ** (noise_db / 20)
    t = np.arange(n) / rate
    for start_s, end_s in bursts:
        a, b = round(start_s * rate), round(end_s * rate)
        x[a:b] += amplitude * np.sin(2 * np.pi * 440.0 * t[a:b])
    return x.astype(np.float32)
