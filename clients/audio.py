"""Audio the clients accept, and its conversion to the wire format.

- a path (``str`` / ``os.PathLike``): the file's bytes are sent encoded; the server detects the format;
- ``bytes``: an encoded file already in memory (WAV, MP3, M4A, FLAC, OGG...);
- a numpy array with its sample rate: ``[samples]`` or ``[samples, channels]``, sent as raw PCM (float
  arrays as f32le, int16 arrays as s16le).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import numpy as np
import numpy.typing as npt
from emotion.v1 import emotion_pb2

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioInput",
    "decode_file",
    "find_audio_files",
    "pcm_chunks",
    "to_proto_audio",
]

AudioInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, npt.NDArray[np.generic]]

#: Extensions picked up when a directory is given to the CLI.
AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".webm", ".mp4"})


def _array_to_raw(array: npt.NDArray[np.generic], sample_rate: int) -> emotion_pb2.RawAudio:
    if array.ndim == 1:
        channels = 1
    elif array.ndim == 2:
        channels = int(array.shape[1])
    else:
        raise ValueError(f"audio array must be [samples] or [samples, channels], got shape {array.shape}")
    if array.size == 0:
        raise ValueError("audio array is empty")
    if not 8000 <= sample_rate <= 384000:
        raise ValueError(f"sample_rate must be between 8000 and 384000 Hz, got {sample_rate}")
    if array.dtype == np.int16:
        data = np.ascontiguousarray(array, dtype="<i2").tobytes()
        encoding = emotion_pb2.PCM_ENCODING_S16LE
    elif np.issubdtype(array.dtype, np.floating):
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        encoding = emotion_pb2.PCM_ENCODING_F32LE
    else:
        raise TypeError(f"audio array dtype must be floating point or int16, got {array.dtype}")
    return emotion_pb2.RawAudio(data=data, encoding=encoding, sample_rate_hz=sample_rate, channels=channels)


def to_proto_audio(audio: AudioInput, sample_rate: int | None = None) -> emotion_pb2.Audio:
    """Build the ``Audio`` message for any accepted input. ``sample_rate`` is required for arrays."""
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise ValueError("sample_rate is required when audio is a numpy array")
        return emotion_pb2.Audio(raw=_array_to_raw(audio, int(sample_rate)))
    if isinstance(audio, (bytes, bytearray, memoryview)):
        if not len(audio):
            raise ValueError("audio bytes are empty")
        return emotion_pb2.Audio(encoded=bytes(audio))
    if isinstance(audio, (str, os.PathLike)):
        return emotion_pb2.Audio(encoded=Path(audio).read_bytes())
    raise TypeError(f"unsupported audio input {type(audio).__name__}: give a path, bytes or a numpy array")


def decode_file(path: str | os.PathLike[str], sample_rate: int = 16000) -> npt.NDArray[np.float32]:
    """Decode any file PyAV (FFmpeg) reads to mono float32 PCM at ``sample_rate``."""
    import av  # imported lazily: only streaming and plotting from a file need local decoding

    pieces: list[npt.NDArray[np.float32]] = []
    with av.open(os.fspath(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        for out in resampler.resample(None):  # flush
            pieces.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces)


def pcm_chunks(samples: npt.NDArray[np.float32], sample_rate: int, chunk_ms: float) -> Iterator[bytes]:
    """Split mono float32 samples into f32le chunks of ``chunk_ms`` milliseconds."""
    if chunk_ms <= 0:
        raise ValueError("chunk_ms must be positive")
    step = max(1, round(sample_rate * chunk_ms / 1000.0))
    data = np.ascontiguousarray(samples, dtype="<f4")
    for start in range(0, len(data), step):
        yield data[start : start + step].tobytes()


def find_audio_files(inputs: list[str]) -> list[Path]:
    """Expand files and directories (walked recursively for audio extensions) into a sorted file list."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {item}")
    return found
