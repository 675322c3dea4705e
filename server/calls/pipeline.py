"""One call's way through the model: decode -> infer -> domain results.

:class:`Pipeline` decodes a neutral :class:`~.types.AudioInput` (an encoded file, raw PCM, or a float
waveform at any rate): off the event loop in the decode thread pool, except short raw PCM already at the
model's rate, which is converted inline (cheaper than the hop to a thread and back); when long recordings
are configured, audio beyond one model pass comes back as a ``PcmStore`` for ``longform``. It submits
waveforms to the batcher (with the runner's real cost, the call's deadline and priority) and turns model
outputs into utterances, frames and timings. ``EmotionCore`` (one-pass calls), ``longform`` (segments of
long recordings) and ``streams`` (stream segments) all go through it. Admission and counting are not here
(``admission``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.audio.decode import decode_encoded, decode_encoded_any
from emotion2vec_serving.server.audio.pcm import PcmEncoding, decode_pcm, decode_pcm_any
from emotion2vec_serving.server.audio.store import Decoded
from emotion2vec_serving.server.calls.errors import InvalidRequest, NoClassifierHead
from emotion2vec_serving.server.calls.limits import CoreLimits
from emotion2vec_serving.server.calls.types import (
    AudioInput,
    BatcherLike,
    CallContext,
    EmbeddingResult,
    EmbedOptions,
    FloatArray,
    Frame,
    Recognition,
    RecognizeOptions,
    Score,
    Timing,
    Utterance,
    smooth_frames,
)
from emotion2vec_serving.server.metrics import ServerMetrics
from emotion2vec_serving.server.runtime.contract import ItemResult
from emotion2vec_serving.server.tracing import CallTrace

__all__ = ["Pipeline", "traced_reduce"]

#: Raw PCM (or a waveform) at the model's rate up to this many samples is converted on the event loop, not in
#: the decode pool. Measured (issue 24, 2 EPYC cores under load): a hop to a pool thread and back costs
#: ~58 us of CPU; ``decode_pcm`` of mono 16 kHz audio costs ~17 us at 0.5-1 s, ~35-45 us at 2-4 s and
#: ~65-75 us at 8 s (f32le and s16le alike), ~100-200 us at 16-30 s. Up to 8 s the conversion holds the
#: loop about as long as the hop would cost, and saves the hop's CPU; longer audio goes to the pool.
_INLINE_PCM_SAMPLES = 8 * 16000


class _SegmentLike(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def start_s(self) -> float: ...
    @property
    def end_s(self) -> float: ...


S = TypeVar("S", bound=_SegmentLike)
T = TypeVar("T")


def traced_reduce(reduce: Callable[[S, ItemResult, float], T],
                  trace: CallTrace) -> Callable[[S, ItemResult, float], T]:
    """A long recording's ``reduce(segment, result, queue_s)`` (``longform``) that first records the
    segment's spans: ``segment`` holding its ``queue`` and ``inference`` (``server/tracing.py``)."""

    def traced(segment: S, result: ItemResult, queue_s: float) -> T:
        started = result.started_monotonic
        trace.item(started - queue_s, started, result.inference_s, result.batch_id, result.batch_size,
                   result.provider, {"id": segment.index, "start_s": segment.start_s, "end_s": segment.end_s})
        return reduce(segment, result, queue_s)

    return traced


class Pipeline:
    """Decoding, batcher submission and results of one served model."""

    def __init__(
        self,
        manifest: ModelManifest,
        batcher: BatcherLike,
        metrics: ServerMetrics,
        limits: CoreLimits,
        decode_executor: Executor,
        cost_of: Callable[[int], int] | None = None,
    ) -> None:
        self._manifest = manifest
        self._batcher = batcher
        self._metrics = metrics
        self._limits = limits
        self._executor = decode_executor
        # Batcher cost of a waveform of n samples: what the runner really runs (e.g. a padded bucket).
        self._cost_of = cost_of
        self._rate = manifest.sample_rate_hz
        self._enabled = np.array([label.enabled for label in manifest.labels], dtype=bool)
        # Per-response constants, built once: (index, name, name_zh) of every label in model order.
        self._label_rows = tuple((lb.index, lb.name, lb.name_zh) for lb in manifest.labels)
        self._enabled_indices = tuple(lb.index for lb in manifest.labels if lb.enabled)

    @property
    def manifest(self) -> ModelManifest:
        return self._manifest

    @property
    def metrics(self) -> ServerMetrics:
        return self._metrics

    @property
    def limits(self) -> CoreLimits:
        return self._limits

    @property
    def decode_executor(self) -> Executor:
        return self._executor

    @property
    def enabled_labels(self) -> npt.NDArray[np.bool_]:
        """Mask of labels that can be predicted (``unuse*`` labels are False)."""
        return self._enabled

    def require_head(self) -> None:
        if not self._manifest.has_head:
            raise NoClassifierHead(self._manifest.model_name)

    def deadline(self, call: CallContext) -> float:
        """The batcher deadline (time.monotonic): the call's own, or now + the default timeout."""
        if call.deadline is not None:
            return call.deadline
        return time.monotonic() + self._limits.default_timeout_s

    async def decode(self, audio: AudioInput, trace: CallTrace | None = None) -> tuple[Decoded, float]:
        """Decode request audio (off the event loop but for short raw PCM); returns (audio, decode s): mono
        float32 at the model rate, or, for audio beyond one pass when long recordings are configured, a
        16 kHz int16 ``PcmStore`` for ``longform``, decoded incrementally. Traced as ``decode``."""
        if trace is None:
            return await self._decode(audio)
        with trace.phase("decode"):
            return await self._decode(audio)

    async def _decode(self, audio: AudioInput) -> tuple[Decoded, float]:
        limits = self._limits.audio
        longform = self._limits.longform
        started = time.monotonic()
        waveform: Decoded
        loop = asyncio.get_running_loop()
        kind = audio.kind
        if kind == "encoded":
            data = audio.encoded
            assert data is not None
            if longform is not None:
                max_audio_s = longform.max_audio_s
                waveform = await loop.run_in_executor(
                    self._executor, lambda: decode_encoded_any(data, limits, max_audio_s=max_audio_s)
                )
            else:
                waveform = await loop.run_in_executor(self._executor, lambda: decode_encoded(data, limits))
        elif kind == "pcm":
            if audio.pcm_encoding not in ("s16le", "f32le"):
                raise InvalidRequest(
                    f"raw audio needs an encoding: s16le or f32le (got {audio.pcm_encoding or 'none'})"
                )
            if audio.sample_rate_hz <= 0:
                raise InvalidRequest("raw audio needs sample_rate_hz (e.g. 16000)")
            pcm = audio.pcm
            assert pcm is not None
            encoding: PcmEncoding = "s16le" if audio.pcm_encoding == "s16le" else "f32le"
            rate, channels = audio.sample_rate_hz, audio.channels or 1
            sample_bytes = 2 if encoding == "s16le" else 4
            frame_bytes = sample_bytes * max(1, channels)
            if longform is not None and len(pcm) // frame_bytes > limits.max_duration_s * rate:
                max_audio_s = longform.max_audio_s
                waveform = await loop.run_in_executor(
                    self._executor,
                    lambda: decode_pcm_any(pcm, encoding, rate, channels, limits, max_audio_s=max_audio_s),
                )
            elif rate == limits.target_sample_rate_hz and len(pcm) <= _INLINE_PCM_SAMPLES * sample_bytes:
                # No resampling, a short copy: cheaper on the loop than a hop to the decode thread and back
                # (counted in samples of every channel: a downmix costs per sample).
                waveform = decode_pcm(pcm, encoding, rate, channels, limits)
            else:
                waveform = await loop.run_in_executor(
                    self._executor, lambda: decode_pcm(pcm, encoding, rate, channels, limits)
                )
        else:
            samples = audio.waveform
            assert samples is not None
            if samples.ndim != 1:
                raise InvalidRequest(f"a waveform must be one-dimensional (mono); got shape {samples.shape}")
            rate = audio.sample_rate_hz or limits.target_sample_rate_hz
            # The same checks (rate, length, NaN/Inf) and resampling as raw f32le PCM, without a copy.
            raw = np.ascontiguousarray(samples, dtype="<f4").data.cast("B")
            if longform is not None and len(raw) // 4 > limits.max_duration_s * rate:
                max_audio_s = longform.max_audio_s
                waveform = await loop.run_in_executor(
                    self._executor,
                    lambda: decode_pcm_any(raw, "f32le", rate, 1, limits, max_audio_s=max_audio_s),
                )
            elif rate == limits.target_sample_rate_hz and len(raw) <= _INLINE_PCM_SAMPLES * 4:
                waveform = decode_pcm(raw, "f32le", rate, 1, limits)
            else:
                waveform = await loop.run_in_executor(
                    self._executor, lambda: decode_pcm(raw, "f32le", rate, 1, limits)
                )
        return waveform, time.monotonic() - started

    async def infer(self, waveform: FloatArray, deadline: float, priority: int,
                    trace: CallTrace | None = None,
                    segment: Mapping[str, float] | None = None) -> tuple[ItemResult, float]:
        """Submit one waveform to the batcher; returns (result, queue wait seconds). Traced as ``queue`` and
        ``inference`` spans (under a ``segment`` span with these attributes when ``segment`` is given)."""
        submitted = time.monotonic()
        result = await self.submit(waveform, deadline, priority, trace)
        if trace is not None:
            trace.item(submitted, result.started_monotonic, result.inference_s, result.batch_id,
                       result.batch_size, result.provider, segment)
        return result, max(0.0, result.started_monotonic - submitted)

    async def submit(self, waveform: FloatArray, deadline: float, priority: int,
                     trace: CallTrace | None = None) -> ItemResult:
        """Submit one waveform to the batcher; the batch that runs it links to ``trace``'s call span."""
        n = int(waveform.shape[0])
        cost = n if self._cost_of is None else int(self._cost_of(n))
        if trace is None:
            result: ItemResult = await self._batcher.submit(
                waveform, cost=cost, deadline=deadline, priority=int(priority))
            return result
        trace.register(waveform)
        try:
            result = await self._batcher.submit(
                waveform, cost=cost, deadline=deadline, priority=int(priority))
        finally:
            trace.unregister(waveform)
        return result

    def utterance(self, probs: FloatArray) -> Utterance:
        """Top label (among enabled labels) and every score in model order."""
        # A handful of scores: plain Python beats numpy's per-call overhead here (it shows in profiles).
        values = probs.tolist()
        top = max(self._enabled_indices, key=values.__getitem__) if self._enabled_indices else 0
        label = self._manifest.labels[top]
        return Utterance(
            label=label.name, label_zh=label.name_zh, confidence=values[top],
            scores=tuple(Score(index, name, name_zh, values[index])
                         for index, name, name_zh in self._label_rows),
        )

    @staticmethod
    def timing(result: ItemResult, queue_s: float, decode_s: float, start: float) -> Timing:
        return Timing(
            queue_ms=queue_s * 1000.0, inference_ms=result.inference_s * 1000.0, decode_ms=decode_s * 1000.0,
            total_ms=(time.monotonic() - start) * 1000.0, batch_size=result.batch_size,
        )

    def frames(self, frame_probs: FloatArray, smoothing: int, duration_s: float) -> tuple[Frame, ...]:
        m = self._manifest
        scores = smooth_frames(frame_probs, smoothing)
        masked = np.where(self._enabled[None, :], scores, -np.inf)
        tops = np.argmax(masked, axis=1).tolist()
        hop_s = m.frame_hop_samples / m.sample_rate_hz
        span_s = m.receptive_field_samples / m.sample_rate_hz
        last_end = max(duration_s, span_s)
        rows = scores.tolist()
        out = []
        for t, top in enumerate(tops):
            start_s = t * hop_s
            row = rows[t]
            out.append(Frame(start_s=start_s, end_s=min(start_s + span_s, last_end),
                             label=m.labels[top].name, confidence=row[top], scores=tuple(row)))
        return tuple(out)

    # ------------------------------------------------------------------ one-pass calls

    async def recognize(self, waveform: FloatArray, decode_s: float, options: RecognizeOptions,
                        call: CallContext, start: float) -> Recognition:
        """Recognise one decoded waveform in one model pass (the core checked the head and counts it)."""
        result, queue_s = await self.infer(waveform, self.deadline(call), call.priority, call.trace)
        assert result.probs is not None and result.frame_probs is not None  # has_head checked by the caller
        duration_s = waveform.shape[0] / self._rate
        frames = (self.frames(result.frame_probs, int(options.smoothing_frames), duration_s)
                  if options.frames else ())
        return Recognition(
            utterance=self.utterance(result.probs), duration_s=duration_s,
            timing=self.timing(result, queue_s, decode_s, start), frames=frames,
            embedding=result.embedding if options.embedding else None,
            probs=result.probs, frame_probs=result.frame_probs,
        )

    async def embed(self, waveform: FloatArray, decode_s: float, options: EmbedOptions, call: CallContext,
                    start: float) -> EmbeddingResult:
        """Embed one decoded waveform in one model pass."""
        result, queue_s = await self.infer(waveform, self.deadline(call), call.priority, call.trace)
        return EmbeddingResult(
            embedding=result.embedding, frame_features=result.frame_features if options.frames else None,
            duration_s=waveform.shape[0] / self._rate, timing=self.timing(result, queue_s, decode_s, start),
        )
