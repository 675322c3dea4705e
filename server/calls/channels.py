"""Channel splitting: each channel of a multi-channel recording answered apart (issue 21).

A recording is decoded once into its channels (``server/audio``: every channel exactly as a mono file of it
would decode), then every channel takes exactly the way a mono file takes: a short channel is one batcher
item, a long one is segmented (``longform``), and each gets its own full answer (utterance, frames, segments,
embedding). All channels are submitted at once; one failing channel fails the call (all or nothing: the
other channels' work still queued is cancelled) and never touches other calls. At most
:data:`MAX_SPLIT_CHANNELS` channels; a mono recording is one channel; a waveform is mono by definition.
Protocol-free; the front ends pick this path with their ``channels: split`` option.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from emotion2vec_serving.server.audio.decode import decode_encoded_channels
from emotion2vec_serving.server.audio.pcm import PcmEncoding, decode_pcm_channels
from emotion2vec_serving.server.audio.store import Decoded, PcmStore
from emotion2vec_serving.server.calls.errors import InvalidRequest
from emotion2vec_serving.server.calls.limits import MAX_SPLIT_CHANNELS
from emotion2vec_serving.server.calls.longform import LongCalls
from emotion2vec_serving.server.calls.pipeline import Pipeline
from emotion2vec_serving.server.calls.types import (
    AudioInput,
    CallContext,
    ChannelEmbedding,
    ChannelRecognition,
    EmbeddingResult,
    EmbedOptions,
    Recognition,
    RecognizeOptions,
    SplitEmbedding,
    SplitRecognition,
)
from emotion2vec_serving.server.tracing import CallTrace

__all__ = ["SplitCalls", "gather_all", "parse_channel_mode"]

T = TypeVar("T")


def parse_channel_mode(value: str) -> bool:
    """A front end's ``channels`` option (``mix``/``split``, any case; empty = mix) -> split?"""
    mode = value.strip().lower()
    if mode in ("", "mix", "mixed"):
        return False
    if mode == "split":
        return True
    raise InvalidRequest(f"channels must be 'mix' or 'split' (got {value!r})")


def check_names(names: Sequence[str], channels: int | None = None) -> None:
    """More channel names than channels (or than :data:`MAX_SPLIT_CHANNELS`) is the caller's mistake."""
    limit = MAX_SPLIT_CHANNELS if channels is None else channels
    if len(names) > limit:
        what = f"the recording has {channels} channel(s)" if channels is not None else (
            f"at most {MAX_SPLIT_CHANNELS} channels are split")
        raise InvalidRequest(f"{len(names)} channel names given but {what}")


async def gather_all(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Every result in order; the first failure cancels the rest (and waits for them) and is raised."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class SplitCalls:
    """Recognize and Embed channel by channel: the pipeline (one pass) or ``longform`` (a long channel)."""

    def __init__(self, pipeline: Pipeline, long: LongCalls) -> None:
        self._pipeline = pipeline
        self._long = long

    async def decode(self, audio: AudioInput, trace: CallTrace | None = None) -> tuple[list[Decoded], float]:
        """The recording's channels, each as the pipeline decodes a mono input, and the decode seconds."""
        kind = audio.kind
        if kind == "waveform" or (kind == "pcm" and (audio.channels or 1) == 1):
            waveform, decode_s = await self._pipeline.decode(audio, trace)
            return [waveform], decode_s
        if trace is None:
            return await self._decode(audio)
        with trace.phase("decode"):
            return await self._decode(audio)

    async def _decode(self, audio: AudioInput) -> tuple[list[Decoded], float]:
        limits = self._pipeline.limits.audio
        longform = self._pipeline.limits.longform
        max_audio_s = longform.max_audio_s if longform is not None else None
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        executor = self._pipeline.decode_executor
        if audio.kind == "encoded":
            data = audio.encoded
            assert data is not None
            channels = await loop.run_in_executor(executor, lambda: decode_encoded_channels(
                data, limits, max_audio_s=max_audio_s, max_channels=MAX_SPLIT_CHANNELS))
        else:
            if audio.pcm_encoding not in ("s16le", "f32le"):
                raise InvalidRequest(
                    f"raw audio needs an encoding: s16le or f32le (got {audio.pcm_encoding or 'none'})")
            if audio.sample_rate_hz <= 0:
                raise InvalidRequest("raw audio needs sample_rate_hz (e.g. 16000)")
            pcm = audio.pcm
            assert pcm is not None
            encoding: PcmEncoding = "s16le" if audio.pcm_encoding == "s16le" else "f32le"
            rate, n = audio.sample_rate_hz, audio.channels
            channels = await loop.run_in_executor(executor, lambda: decode_pcm_channels(
                pcm, encoding, rate, n, limits, max_audio_s=max_audio_s, max_channels=MAX_SPLIT_CHANNELS))
        return channels, time.monotonic() - started

    async def recognize(self, audio: AudioInput, options: RecognizeOptions, call: CallContext,
                        start: float) -> SplitRecognition:
        self._pipeline.require_head()
        check_names(options.channel_names)
        channels, decode_s = await self.decode(audio, call.trace)
        check_names(options.channel_names, len(channels))
        results = await gather_all([self._recognize_one(w, decode_s, options, call, start) for w in channels])
        return SplitRecognition(
            duration_s=max(r.duration_s for r in results),
            channels=tuple(ChannelRecognition(i, _name(options.channel_names, i), r)
                           for i, r in enumerate(results)),
        )

    async def embed(self, audio: AudioInput, options: EmbedOptions, call: CallContext,
                    start: float) -> SplitEmbedding:
        check_names(options.channel_names)
        channels, decode_s = await self.decode(audio, call.trace)
        check_names(options.channel_names, len(channels))
        results = await gather_all([self._embed_one(w, decode_s, options, call, start) for w in channels])
        return SplitEmbedding(
            duration_s=max(r.duration_s for r in results),
            channels=tuple(ChannelEmbedding(i, _name(options.channel_names, i), r)
                           for i, r in enumerate(results)),
        )

    async def _recognize_one(self, waveform: Decoded, decode_s: float, options: RecognizeOptions,
                             call: CallContext, start: float) -> Recognition:
        if isinstance(waveform, PcmStore):
            return await self._long.recognize(waveform, decode_s, options, call, start)
        return await self._pipeline.recognize(waveform, decode_s, options, call, start)

    async def _embed_one(self, waveform: Decoded, decode_s: float, options: EmbedOptions, call: CallContext,
                         start: float) -> EmbeddingResult:
        if isinstance(waveform, PcmStore):
            return await self._long.embed(waveform, decode_s, options, call, start)
        return await self._pipeline.embed(waveform, decode_s, options, call, start)


def _name(names: Sequence[str], index: int) -> str:
    return names[index] if index < len(names) else ""
