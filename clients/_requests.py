"""Request building shared by the sync and asyncio clients (private)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from emotion.v1 import emotion_pb2

from .audio import AudioInput, decode_file, pcm_chunks, to_proto_audio

Granularity = Literal["utterance", "frame"]
#: ``mix``: channels averaged into one result (the default); ``split``: one result per channel.
ChannelMode = Literal["mix", "split"]
PcmName = Literal["f32le", "s16le"]

_GRANULARITY = {
    "utterance": emotion_pb2.GRANULARITY_UTTERANCE,
    "frame": emotion_pb2.GRANULARITY_FRAME,
}
_ENCODING = {"f32le": emotion_pb2.PCM_ENCODING_F32LE, "s16le": emotion_pb2.PCM_ENCODING_S16LE}
_BYTES_PER_SAMPLE = {"f32le": 4, "s16le": 2}

#: Rate files are decoded to before streaming: the model's rate, so the server need not resample.
STREAM_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Segmentation:
    """How the server cuts a stream into segments. ``None`` fields take the server's defaults.

    ``mode="energy"`` ends a segment at a pause (``min_silence_s`` below ``energy_threshold_db``) once it
    is ``min_segment_s`` long, and always at ``max_segment_s``; ``mode="fixed"`` emits windows of
    ``window_s`` every ``hop_s``.
    """

    mode: Literal["energy", "fixed"] = "energy"
    min_segment_s: float | None = None
    max_segment_s: float | None = None
    min_silence_s: float | None = None
    energy_threshold_db: float | None = None
    window_s: float | None = None
    hop_s: float | None = None

    def to_proto(self) -> emotion_pb2.SegmentationConfig:
        mode = (
            emotion_pb2.SEGMENTATION_MODE_FIXED
            if self.mode == "fixed"
            else emotion_pb2.SEGMENTATION_MODE_ENERGY
        )
        fields: dict[str, Any] = {"mode": mode}
        for name in (
            "min_segment_s",
            "max_segment_s",
            "min_silence_s",
            "energy_threshold_db",
            "window_s",
            "hop_s",
        ):
            value = getattr(self, name)
            if value is not None:
                fields[name] = float(value)
        return emotion_pb2.SegmentationConfig(**fields)


_CHANNEL_MODE = {"mix": emotion_pb2.CHANNEL_MODE_MIX, "split": emotion_pb2.CHANNEL_MODE_SPLIT}


def channel_fields(channels: str, channel_names: Sequence[str]) -> dict[str, Any]:
    """The request fields of ``channels="mix"|"split"`` and optional channel names (split only)."""
    if channels not in _CHANNEL_MODE:
        raise ValueError(f"channels must be 'mix' or 'split', got {channels!r}")
    if isinstance(channel_names, str):
        raise TypeError("channel_names is a sequence of names, e.g. ('agent', 'customer')")
    names = [str(n) for n in channel_names]
    if names and channels != "split":
        raise ValueError("channel_names needs channels='split'")
    if channels == "mix":
        return {}  # the request an older client sends: old servers answer it the same way
    return {"channel_mode": _CHANNEL_MODE[channels], "channel_names": names}


def granularity_proto(granularity: str) -> emotion_pb2.Granularity:
    try:
        return _GRANULARITY[granularity]
    except KeyError:
        raise ValueError(f"granularity must be 'utterance' or 'frame', got {granularity!r}") from None


def recognize_request(
    audio: AudioInput,
    sample_rate: int | None,
    granularity: str,
    embedding: bool,
    smoothing_frames: int,
    priority: int,
    channels: str = "mix",
    channel_names: Sequence[str] = (),
) -> emotion_pb2.RecognizeRequest:
    if smoothing_frames < 0:
        raise ValueError("smoothing_frames must be >= 0")
    return emotion_pb2.RecognizeRequest(
        audio=to_proto_audio(audio, sample_rate),
        granularity=granularity_proto(granularity),
        return_embedding=embedding,
        smoothing_frames=smoothing_frames,
        priority=priority,
        **channel_fields(channels, channel_names),
    )


def embed_request(
    audio: AudioInput, sample_rate: int | None, frames: bool, priority: int,
    channels: str = "mix", channel_names: Sequence[str] = (),
) -> emotion_pb2.EmbedRequest:
    return emotion_pb2.EmbedRequest(
        audio=to_proto_audio(audio, sample_rate), return_frames=frames, priority=priority,
        **channel_fields(channels, channel_names),
    )


@dataclass(frozen=True)
class PreparedStream:
    """A stream's config and a factory of its PCM chunks; ``replayable`` when the chunks can be re-made."""

    config: emotion_pb2.StreamConfig
    chunk_source: Any  # callable returning a fresh iterator, or the caller's one-shot (async) iterable
    replayable: bool
    bytes_per_second: float
    encoding: PcmName


def _array_chunk(chunk: npt.NDArray[np.generic], encoding: PcmName) -> bytes:
    if encoding == "s16le":
        if chunk.dtype != np.int16:
            chunk = np.clip(np.asarray(chunk, dtype=np.float32) * 32767.0, -32768, 32767).astype(np.int16)
        return np.ascontiguousarray(chunk, dtype="<i2").tobytes()
    if chunk.dtype == np.int16:
        return (chunk.astype(np.float32) / 32768.0).astype("<f4").tobytes()
    return np.ascontiguousarray(chunk, dtype="<f4").tobytes()


def as_pcm_bytes(chunk: Any, encoding: PcmName) -> bytes:
    """One caller chunk (bytes or numpy array) as PCM bytes in ``encoding``."""
    if isinstance(chunk, np.ndarray):
        return _array_chunk(chunk, encoding)
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"stream chunks must be bytes or numpy arrays, got {type(chunk).__name__}")


def prepare_stream(
    audio: Any,
    sample_rate: int | None,
    channels: int,
    encoding: PcmName,
    segmentation: Segmentation | None,
    embedding: bool,
    priority: int,
    chunk_ms: float,
) -> PreparedStream:
    """Normalise a stream source: a path (decoded locally), an array, or an iterable of PCM chunks."""
    if encoding not in _ENCODING:
        raise ValueError(f"encoding must be 'f32le' or 's16le', got {encoding!r}")
    replayable = True
    if isinstance(audio, (str, os.PathLike)):
        samples = decode_file(audio, STREAM_SAMPLE_RATE)
        sample_rate, channels, encoding = STREAM_SAMPLE_RATE, 1, "f32le"

        def source() -> Iterator[bytes]:
            return pcm_chunks(samples, STREAM_SAMPLE_RATE, chunk_ms)

    elif isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise ValueError("sample_rate is required when streaming a numpy array")
        array = audio
        channels = 1 if array.ndim == 1 else int(array.shape[1])
        rate = int(sample_rate)
        step = max(1, round(rate * chunk_ms / 1000.0))

        def source() -> Iterator[bytes]:
            return (_array_chunk(array[i : i + step], encoding) for i in range(0, len(array), step))

    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required when streaming PCM chunks")
        if isinstance(audio, (list, tuple)):
            chunks = list(audio)

            def source() -> Iterator[bytes]:
                return (as_pcm_bytes(c, encoding) for c in chunks)

        else:
            # A one-shot (async) iterator: it cannot be replayed, so such streams are never retried.
            replayable = False
            source = audio
    config = emotion_pb2.StreamConfig(
        encoding=_ENCODING[encoding],
        sample_rate_hz=int(sample_rate),
        channels=channels,
        segmentation=(segmentation or Segmentation()).to_proto(),
        return_embedding=embedding,
        priority=priority,
    )
    return PreparedStream(
        config=config,
        chunk_source=source,
        replayable=replayable,
        bytes_per_second=float(sample_rate) * max(channels, 1) * _BYTES_PER_SAMPLE[encoding],
        encoding=encoding,
    )
