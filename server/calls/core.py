"""The protocol-free core every front end calls: admission, decoding, batching, domain results.

``EmotionCore`` owns what all protocols share: admission (drain, in-flight calls, stream slots, limits),
decoding a neutral :class:`AudioInput` (encoded file, raw PCM, or a float waveform at any rate) off the
event loop, submission to the batcher, and the domain result types. Every call is counted exactly once
(``emotion_requests_total{rpc,code,protocol}``, and ``emotion_rejections_total{reason}`` through the one
classification in ``errors``); a failed call raises :class:`CallFailed` carrying the :class:`Failure` that
the front end maps to its own status (``grpc_status`` / ``http_status``). No protobuf, gRPC or HTTP types.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.modelrepo.manifest import Label, ModelManifest
from emotion2vec_serving.server.audio.decode import decode_encoded as _decode_encoded
from emotion2vec_serving.server.audio.decode import decode_encoded_any
from emotion2vec_serving.server.audio.errors import AudioLimits
from emotion2vec_serving.server.audio.pcm import PcmEncoding, decode_pcm, decode_pcm_any
from emotion2vec_serving.server.audio.store import Decoded, PcmStore
from emotion2vec_serving.server.calls.errors import (
    CallFailed,
    Draining,
    ErrorKind,
    Failure,
    InvalidRequest,
    NoClassifierHead,
    TooManyStreams,
    classify,
)
from emotion2vec_serving.server.calls.longform import (
    LongformSettings,
    Span,
    aggregate_embedding,
    aggregate_probs,
    plan_segments,
    run_segments,
    window_for,
)
from emotion2vec_serving.server.metrics import ServerMetrics
from emotion2vec_serving.server.runtime.contract import ItemResult

__all__ = [
    "AudioInput",
    "BatcherLike",
    "CallContext",
    "CallFailed",
    "CoreLimits",
    "EmbedOptions",
    "EmbeddingResult",
    "EmbeddingSegment",
    "EmotionCore",
    "Frame",
    "ModelCard",
    "Recognition",
    "RecognizeOptions",
    "Score",
    "SegmentResult",
    "Timing",
    "Utterance",
    "smooth_frames",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
T = TypeVar("T")

#: Raw PCM up to this size at the model's rate is converted on the event loop (~tens of microseconds).
_INLINE_PCM_BYTES = 256 * 1024


class BatcherLike(Protocol):
    """The part of ``batching.DynamicBatcher`` the core uses."""

    async def submit(
        self, payload: Any, *, cost: int, deadline: float | None = ..., priority: int = ...
    ) -> Any: ...

    @property
    def estimated_drain_s(self) -> float: ...


@dataclass(frozen=True)
class CoreLimits:
    """Per-call limits enforced by the core (audio limits live in ``AudioLimits``).

    No defaults: built from ``Settings`` (the one place defaults live), see ``CoreLimits.from_settings``.
    """

    audio: AudioLimits
    default_timeout_s: float
    max_concurrent_streams: int
    max_stream_duration_s: float
    #: Long recordings (Recognize/Embed audio beyond ``audio.max_duration_s``, see ``longform``); None
    #: refuses such audio as too long.
    longform: LongformSettings | None = None

    @classmethod
    def from_settings(cls, settings: Any, sample_rate_hz: int) -> CoreLimits:
        """Limits of a server run with ``settings`` (a ``server.config.Settings``)."""
        audio = AudioLimits(max_duration_s=settings.max_duration_s, min_duration_s=settings.min_duration_s,
                            max_encoded_bytes=settings.max_message_bytes,
                            target_sample_rate_hz=sample_rate_hz)
        window_segments, window_audio_s, initial_window = window_for(
            settings.max_batch_size, settings.max_batch_audio_s, settings.runner_instances
        )
        longform = LongformSettings(max_audio_s=settings.max_audio_s, max_segment_s=settings.max_duration_s,
                                    window_segments=window_segments, window_audio_s=window_audio_s,
                                    initial_window=initial_window)
        return cls(audio=audio, default_timeout_s=settings.default_timeout_s,
                   max_concurrent_streams=settings.max_concurrent_streams,
                   max_stream_duration_s=settings.max_stream_duration_s, longform=longform)




# ---------------------------------------------------------------------------------------- call inputs


@dataclass(frozen=True)
class AudioInput:
    """The audio of one request: exactly one of an encoded file, raw PCM, or a float waveform."""

    encoded: bytes | None = None
    pcm: bytes | None = None
    pcm_encoding: str = ""
    sample_rate_hz: int = 0
    channels: int = 1
    waveform: FloatArray | None = None

    @classmethod
    def from_encoded(cls, data: bytes) -> AudioInput:
        """A whole file (WAV/MP3/M4A/FLAC/OGG); the container is sniffed from its bytes."""
        return cls(encoded=bytes(data))

    @classmethod
    def from_pcm(cls, data: bytes, encoding: str, sample_rate_hz: int, channels: int = 1) -> AudioInput:
        """Interleaved little-endian PCM (``s16le`` or ``f32le``) at any supported rate and channel count."""
        return cls(pcm=data, pcm_encoding=encoding, sample_rate_hz=int(sample_rate_hz),
                   channels=int(channels))

    @classmethod
    def from_waveform(cls, samples: Any, sample_rate_hz: int = 16000) -> AudioInput:
        """Mono float samples in [-1, 1] at ``sample_rate_hz`` (resampled to the model's rate)."""
        return cls(waveform=np.asarray(samples, dtype=np.float32), sample_rate_hz=int(sample_rate_hz))

    @property
    def kind(self) -> str:
        set_ = [name for name, value in (("encoded", self.encoded), ("pcm", self.pcm),
                                         ("waveform", self.waveform)) if value is not None]
        if len(set_) != 1:
            raise InvalidRequest("the request needs exactly one audio source: an encoded file, raw PCM "
                                 f"or a waveform (got {', '.join(set_) or 'none'})")
        return set_[0]


@dataclass(frozen=True)
class CallContext:
    """Who is calling: protocol (metrics label), method name, absolute deadline (``time.monotonic``)."""

    protocol: str
    rpc: str
    deadline: float | None = None
    priority: int = 0


@dataclass(frozen=True)
class RecognizeOptions:
    frames: bool = False  # per-frame results
    smoothing_frames: int = 0  # centred moving average over this many frames (<= 1: none)
    embedding: bool = False  # return the utterance embedding


@dataclass(frozen=True)
class EmbedOptions:
    frames: bool = False  # return per-frame features


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Score:
    index: int
    label: str
    label_zh: str
    score: float


@dataclass(frozen=True, slots=True)
class Utterance:
    """Top label among enabled labels, its probability, and every label's score in model order."""

    label: str
    label_zh: str
    confidence: float
    scores: tuple[Score, ...]


@dataclass(frozen=True, slots=True)
class Frame:
    start_s: float
    end_s: float
    label: str
    confidence: float
    scores: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Timing:
    queue_ms: float
    inference_ms: float
    decode_ms: float
    total_ms: float
    batch_size: int


@dataclass(frozen=True)
class ModelCard:
    """The served model, as every protocol describes it."""

    name: str
    version: str
    precision: str
    untrained: bool
    labels: tuple[Label, ...]
    sample_rate_hz: int
    frame_rate_hz: float
    embedding_dim: int
    provider: str
    engine: str
    max_duration_s: float
    min_duration_s: float
    has_head: bool
    max_audio_s: float = 0.0  # longest Recognize/Embed audio (0: no limit but the message size)
    max_segment_s: float = 0.0  # longest segment of a long recording (= max_duration_s; 0: not segmented)


@dataclass(frozen=True)
class Recognition:
    """One recognised utterance. ``probs``/``frame_probs`` are the raw model-order arrays (for tensors)."""

    utterance: Utterance
    duration_s: float
    timing: Timing
    frames: tuple[Frame, ...]
    embedding: FloatArray | None
    probs: FloatArray
    frame_probs: FloatArray | None
    #: Long recordings (see ``longform``): the segments in order. ``utterance``/``probs`` are then the
    #: duration-weighted mean over them, ``embedding`` the frame-weighted mean, ``frames``/``frame_probs``
    #: every segment's frames in order (absolute times), ``timing`` summed over segments. Empty for audio
    #: answered in one pass.
    segments: tuple[SegmentResult, ...] = ()
    voiced_s: float = 0.0  # audio inside segments (long recordings)


@dataclass(frozen=True)
class SegmentResult:
    """One segment of a long recording; its frames are ``Recognition.frames[first_frame:][:frame_count]``."""

    segment_id: int
    start_s: float
    end_s: float
    utterance: Utterance
    timing: Timing
    first_frame: int
    frame_count: int  # frames in Recognition.frames (0 without frame granularity)
    embedding: FloatArray | None  # when the embedding was asked for
    probs: FloatArray  # [labels], model order


@dataclass(frozen=True)
class EmbeddingResult:
    embedding: FloatArray  # [D]
    frame_features: FloatArray | None  # [T, D] when asked for
    duration_s: float
    timing: Timing
    #: Long recordings: each segment's embedding; ``embedding`` is their frame-weighted mean and
    #: ``frame_features`` every segment's frames in order.
    segments: tuple[EmbeddingSegment, ...] = ()


@dataclass(frozen=True)
class EmbeddingSegment:
    segment_id: int
    start_s: float
    end_s: float
    embedding: FloatArray  # [D]: mean of the segment's frame features
    first_frame: int  # its rows of EmbeddingResult.frame_features (when asked for)
    frame_count: int  # valid model frames of the segment (its weight in the mean)
    timing: Timing


def smooth_frames(scores: FloatArray, window: int) -> FloatArray:
    """Centred moving average over ``window`` frames along axis 0; edges average the frames available.

    ``window`` <= 1 returns the scores unchanged. An even window reaches one frame further back than
    forward.
    """
    n = scores.shape[0]
    if window <= 1 or n == 0:
        return scores
    back = window // 2
    fwd = window - 1 - back
    csum = np.concatenate(
        [np.zeros((1, scores.shape[1]), np.float64), np.cumsum(scores, axis=0, dtype=np.float64)]
    )
    idx = np.arange(n)
    lo = np.clip(idx - back, 0, n)
    hi = np.clip(idx + fwd + 1, 0, n)
    out: FloatArray = ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------- the core


class EmotionCore:
    """Admission, decoding, batching and results for every front end."""

    def __init__(
        self,
        manifest: ModelManifest,
        batcher: BatcherLike,
        metrics: ServerMetrics,
        limits: CoreLimits,
        decode_executor: Executor,
        provider: Callable[[], str],
        engine: str = "onnxruntime",
        cost_of: Callable[[int], int] | None = None,
        precision: str | None = None,
    ) -> None:
        self._manifest = manifest
        self._batcher = batcher
        self._metrics = metrics
        self._limits = limits
        self._executor = decode_executor
        self._provider = provider
        self._engine = engine
        # The precision really run (e.g. OpenVINO's f32 for a bf16 request on a CPU without bf16); the
        # manifest's when the caller does not know better.
        self._precision = precision or manifest.precision
        # Batcher cost of a waveform of n samples: what the runner really runs (e.g. a padded bucket).
        self._cost_of = cost_of
        self._draining = False
        self._ready = False
        # Segments of long recordings accepted but not yet handed to the batcher (count, samples): the
        # queue-drain estimate counts them.
        self._backlog = [0, 0]
        self._active_streams = 0
        self._inflight = 0
        # Every call the core answered, by (protocol, rpc, code): the drain's accounting (see ``outcomes``).
        self._outcomes: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._idle = asyncio.Event()
        self._idle.set()
        self._rate = manifest.sample_rate_hz
        self._enabled = np.array([label.enabled for label in manifest.labels], dtype=bool)
        # Per-response constants, built once: (index, name, name_zh) of every label in model order.
        self._label_rows = tuple((lb.index, lb.name, lb.name_zh) for lb in manifest.labels)
        self._enabled_indices = tuple(lb.index for lb in manifest.labels if lb.enabled)

    # ------------------------------------------------------------------ what is served

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

    def model_card(self) -> ModelCard:
        m = self._manifest
        return ModelCard(
            name=m.model_name, version=m.model_version, precision=self._precision, untrained=m.untrained,
            labels=m.labels, sample_rate_hz=m.sample_rate_hz, frame_rate_hz=m.frame_rate_hz,
            embedding_dim=m.embedding_dim, provider=self._provider(), engine=self._engine,
            max_duration_s=self._limits.audio.max_duration_s,
            min_duration_s=self._limits.audio.min_duration_s,
            has_head=m.has_head,
            max_audio_s=self._limits.longform.max_audio_s if self._limits.longform else 0.0,
            max_segment_s=self._limits.longform.max_segment_s if self._limits.longform else 0.0,
        )

    # ------------------------------------------------------------------ admission and lifecycle

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def ready(self) -> bool:
        """Start-up finished and not draining (shared by every protocol's readiness)."""
        return self._ready and not self._draining

    def mark_ready(self) -> None:
        self._ready = True

    def withdraw_readiness(self) -> None:
        """Report not ready on every protocol while still serving: the drain's first step, so load balancers
        and resolvers move new work elsewhere before the front ends stop accepting it (issue 14)."""
        self._ready = False

    def begin_drain(self) -> None:
        """Refuse new calls (UNAVAILABLE); calls already accepted run to completion."""
        self._draining = True

    @property
    def active_streams(self) -> int:
        return self._active_streams

    @property
    def inflight(self) -> int:
        return self._inflight

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in progress (or the timeout); True when idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("%d call(s) still running after the drain grace", self._inflight)
            return False
        return True

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def _observe(self, call: CallContext, code: str, duration_s: float) -> None:
        self._outcomes[(call.protocol, call.rpc, code)] += 1
        self._metrics.observe_request(call.rpc, code, duration_s, call.protocol)

    @property
    def outcomes(self) -> dict[tuple[str, str, str], int]:
        """Calls answered since start by (protocol, rpc, code): a call counted here reached the core."""
        return dict(self._outcomes)

    def _check_accepting(self) -> None:
        if self._draining:
            raise Draining()

    def _retry_after_ms(self) -> int:
        try:
            return int(1000 * max(0.05, self.estimated_drain_s()))
        except Exception:  # the hint is best effort
            return 100

    def estimated_drain_s(self) -> float:
        """Seconds to run the queued work, counting the segments of long recordings not yet queued."""
        batcher: Any = self._batcher
        base = float(batcher.estimated_drain_s)
        count, samples = self._backlog
        model = getattr(batcher, "latency_model", None)
        if not count or model is None:
            return base
        try:
            return float(model.estimated_drain_s(
                int(batcher.queued_requests) + count, int(batcher.queued_cost) + samples,
                batcher.policy.max_batch_size, batcher.instances,
            ))
        except AttributeError:
            return base

    def _fail(self, exc: BaseException, call: CallContext, start: float) -> CallFailed:
        """Classify, count once (requests + rejection reason), log; the exception to raise."""
        failure = classify(exc, self._retry_after_ms())
        if failure.reason is not None:
            self._metrics.reject(failure.reason)
        self._observe(call, failure.kind.value, time.monotonic() - start)
        if failure.kind is ErrorKind.INTERNAL:
            log.error("%s (%s) failed", call.rpc, call.protocol, exc_info=exc)
        else:
            log.debug("%s (%s) -> %s: %s", call.rpc, call.protocol, failure.kind.value, failure.message)
        failed = CallFailed(failure)
        failed.__cause__ = exc
        return failed

    def refuse(self, exc: BaseException, call: CallContext) -> Failure:
        """Count a call a front end refused before calling the core (e.g. a malformed message).

        A draining server reports the drain instead, as it would for any call.
        """
        if self._draining:
            exc = Draining()
        return self._fail(exc, call, time.monotonic()).failure

    async def _guard(self, call: CallContext, body: Callable[[float], Awaitable[T]]) -> T:
        """Run one unary call: admission, then the body; every outcome counted once."""
        start = time.monotonic()
        self._enter()
        try:
            self._check_accepting()
            result = await body(start)
        except asyncio.CancelledError:
            self._observe(call, "CANCELLED", time.monotonic() - start)
            raise
        except Exception as exc:
            raise self._fail(exc, call, start) from exc
        finally:
            self._leave()
        self._observe(call, "OK", time.monotonic() - start)
        return result

    # ------------------------------------------------------------------ calls

    async def recognize(self, audio: AudioInput, options: RecognizeOptions, call: CallContext) -> Recognition:
        """Emotion of one utterance (with frames and the embedding when asked)."""
        return await self._guard(call, lambda start: self._recognize(audio, options, call, start))

    async def embed(self, audio: AudioInput, options: EmbedOptions, call: CallContext) -> EmbeddingResult:
        """Utterance embedding (and per-frame features when asked); works without a classifier head."""
        return await self._guard(call, lambda start: self._embed(audio, options, call, start))

    async def recognize_many(self, audios: Sequence[AudioInput], options: RecognizeOptions,
                             call: CallContext) -> list[Recognition]:
        """Several utterances in one call: each its own batcher item, all submitted at once.

        The answer equals recognising them one by one; any item's error fails the whole call.
        """

        async def body(start: float) -> list[Recognition]:
            if not audios:
                raise InvalidRequest("the request holds no audio (batch of 0)")
            tasks = [asyncio.ensure_future(self._recognize(a, options, call, start, observe=False))
                     for a in audios]
            try:
                results = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            for r in results:
                self._metrics.observe_audio(call.rpc, r.duration_s, call.protocol)
                self._metrics.observe_prediction(r.utterance.label, r.utterance.confidence)
            return list(results)

        return await self._guard(call, body)

    @contextlib.asynccontextmanager
    async def stream(self, settings: Any, call: CallContext) -> AsyncIterator[Any]:
        """Admission for one stream; yields a ``stream.StreamSession``. Counts the call once at exit.

        ``settings`` (``stream.StreamSettings``) may be None when the protocol sends them in-band: then
        call ``session.configure(settings)`` before ``session.run``. Any exception raised inside the block
        is classified, counted and re-raised as :class:`CallFailed`.
        """
        from emotion2vec_serving.server.calls.streams import (
            StreamSession,  # the segmenter is only needed here
        )

        start = time.monotonic()
        try:
            self._check_accepting()
            if self._active_streams >= self._limits.max_concurrent_streams:
                raise TooManyStreams(
                    f"too many open streams (limit {self._limits.max_concurrent_streams}); retry later"
                )
        except (Draining, TooManyStreams) as refused:
            raise self._fail(refused, call, start) from refused
        self._active_streams += 1
        self._metrics.active_streams.set(self._active_streams)
        self._enter()
        code: str | None = "OK"
        try:
            self.require_head()
            session = StreamSession(self, call)
            if settings is not None:
                session.configure(settings)
            yield session
        except CallFailed:
            code = None  # counted already
            raise
        except Exception as exc:
            code = None
            raise self._fail(exc, call, start) from exc
        except BaseException:  # cancelled (or the generator closed) while streaming
            code = "CANCELLED"
            raise
        finally:
            self._leave()
            self._active_streams -= 1
            self._metrics.active_streams.set(self._active_streams)
            if code is not None:
                self._observe(call, code, time.monotonic() - start)

    # ------------------------------------------------------------------ plumbing (also used by streams)

    def require_head(self) -> None:
        if not self._manifest.has_head:
            raise NoClassifierHead(self._manifest.model_name)

    def deadline(self, call: CallContext) -> float:
        """The batcher deadline (time.monotonic): the call's own, or now + the default timeout."""
        if call.deadline is not None:
            return call.deadline
        return time.monotonic() + self._limits.default_timeout_s

    async def decode(self, audio: AudioInput) -> tuple[FloatArray, float]:
        """Decode request audio off the event loop; returns (mono float32 at the model rate, decode s)."""
        waveform, decode_s = await self._decode(audio, long=False)
        assert isinstance(waveform, np.ndarray)
        return waveform, decode_s

    async def _decode(self, audio: AudioInput, *, long: bool) -> tuple[Decoded, float]:
        """``decode``; with ``long`` (and long recordings configured) audio beyond one pass comes back as a
        16 kHz int16 :class:`PcmStore` for ``longform``, decoded incrementally."""
        limits = self._limits.audio
        longform = self._limits.longform if long else None
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
                waveform = await loop.run_in_executor(self._executor, lambda: _decode_encoded(data, limits))
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
            frame_bytes = (2 if encoding == "s16le" else 4) * max(1, channels)
            if longform is not None and len(pcm) // frame_bytes > limits.max_duration_s * rate:
                max_audio_s = longform.max_audio_s
                waveform = await loop.run_in_executor(
                    self._executor,
                    lambda: decode_pcm_any(pcm, encoding, rate, channels, limits, max_audio_s=max_audio_s),
                )
            elif rate == limits.target_sample_rate_hz and len(pcm) <= _INLINE_PCM_BYTES:
                # No resampling, a short copy: cheaper on the loop than a hop to the decode thread and back.
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
            elif rate == limits.target_sample_rate_hz and len(raw) <= _INLINE_PCM_BYTES:
                waveform = decode_pcm(raw, "f32le", rate, 1, limits)
            else:
                waveform = await loop.run_in_executor(
                    self._executor, lambda: decode_pcm(raw, "f32le", rate, 1, limits)
                )
        return waveform, time.monotonic() - started

    async def infer(self, waveform: FloatArray, deadline: float, priority: int) -> tuple[ItemResult, float]:
        """Submit one waveform to the batcher; returns (result, queue wait seconds)."""
        submitted = time.monotonic()
        n = int(waveform.shape[0])
        cost = n if self._cost_of is None else int(self._cost_of(n))
        result: ItemResult = await self._batcher.submit(
            waveform, cost=cost, deadline=deadline, priority=int(priority)
        )
        return result, max(0.0, result.started_monotonic - submitted)

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

    # ------------------------------------------------------------------ call bodies

    async def _recognize(self, audio: AudioInput, options: RecognizeOptions, call: CallContext, start: float,
                         *, observe: bool = True) -> Recognition:
        self.require_head()
        waveform, decode_s = await self._decode(audio, long=True)
        if isinstance(waveform, PcmStore):
            return await self._recognize_long(waveform, decode_s, options, call, start, observe=observe)
        result, queue_s = await self.infer(waveform, self.deadline(call), call.priority)
        assert result.probs is not None and result.frame_probs is not None  # has_head checked above
        duration_s = waveform.shape[0] / self._rate
        utterance = self.utterance(result.probs)
        frames = (self.frames(result.frame_probs, int(options.smoothing_frames), duration_s)
                  if options.frames else ())
        recognition = Recognition(
            utterance=utterance, duration_s=duration_s, timing=self.timing(result, queue_s, decode_s, start),
            frames=frames, embedding=result.embedding if options.embedding else None,
            probs=result.probs, frame_probs=result.frame_probs,
        )
        if observe:
            self._metrics.observe_audio(call.rpc, duration_s, call.protocol)
            self._metrics.observe_prediction(utterance.label, utterance.confidence)
        return recognition

    async def _embed(self, audio: AudioInput, options: EmbedOptions, call: CallContext,
                     start: float) -> EmbeddingResult:
        waveform, decode_s = await self._decode(audio, long=True)
        if isinstance(waveform, PcmStore):
            return await self._embed_long(waveform, decode_s, options, call, start)
        result, queue_s = await self.infer(waveform, self.deadline(call), call.priority)
        duration_s = waveform.shape[0] / self._rate
        self._metrics.observe_audio(call.rpc, duration_s, call.protocol)
        return EmbeddingResult(
            embedding=result.embedding, frame_features=result.frame_features if options.frames else None,
            duration_s=duration_s, timing=self.timing(result, queue_s, decode_s, start),
        )

    # ------------------------------------------------------------------ long recordings (see longform)

    def _long_deadline(self, call: CallContext, duration_s: float) -> float:
        """The call's own deadline, or the default timeout per ``max_segment_s`` of audio."""
        if call.deadline is not None:
            return call.deadline
        assert self._limits.longform is not None
        passes = max(1.0, duration_s / self._limits.longform.max_segment_s)
        return time.monotonic() + self._limits.default_timeout_s * passes

    async def _run_long(self, audio: PcmStore, call: CallContext,
                        reduce: Callable[[Span, ItemResult, float], T]) -> tuple[list[Span], list[T]]:
        """Plan the segments (in the decode pool) and run them through the batcher as one call."""
        longform = self._limits.longform
        assert longform is not None
        loop = asyncio.get_running_loop()
        min_samples = max(1, int(self._limits.audio.min_duration_s * audio.sample_rate_hz))
        spans = await loop.run_in_executor(
            self._executor, lambda: plan_segments(audio, longform, min_samples=min_samples)
        )
        if not spans:
            raise InvalidRequest("the recording holds no segment long enough for the model")
        self._metrics.observe_segments(call.rpc, len(spans), call.protocol)
        deadline = self._long_deadline(call, audio.duration_s)
        backlog = self._backlog
        left = [len(spans), sum(s.samples for s in spans)]
        backlog[0] += left[0]
        backlog[1] += left[1]

        async def submit(wave: FloatArray) -> ItemResult:
            backlog[0] -= 1
            left[0] -= 1
            backlog[1] -= int(wave.shape[0])
            left[1] -= int(wave.shape[0])
            result, _ = await self.infer(wave, deadline, call.priority)
            return result

        rate = audio.sample_rate_hz
        try:
            out = await run_segments(
                audio, spans, submit, reduce, window_segments=longform.window_segments,
                window_samples=max(1, int(longform.window_audio_s * rate)),
                initial_window=longform.initial_window, deadline=deadline,
            )
        finally:
            backlog[0] -= left[0]
            backlog[1] -= left[1]
        return spans, out

    @staticmethod
    def _sum_timing(timings: Sequence[Timing], decode_s: float, start: float) -> Timing:
        """A long call's timing: queue waits and inference shares summed over its segments (a segment's
        share of a batch is the batch time over the batch size), the mean batch size rounded."""
        return Timing(
            queue_ms=sum(t.queue_ms for t in timings),
            inference_ms=sum(t.inference_ms / max(1, t.batch_size) for t in timings),
            decode_ms=decode_s * 1000.0, total_ms=(time.monotonic() - start) * 1000.0,
            batch_size=max(1, round(sum(t.batch_size for t in timings) / max(1, len(timings)))),
        )

    async def _recognize_long(self, audio: PcmStore, decode_s: float, options: RecognizeOptions,
                              call: CallContext, start: float, *, observe: bool) -> Recognition:
        def reduce(span: Span, result: ItemResult, queue_s: float) -> tuple[Any, ...]:
            # Keep a few floats per segment (and frame scores when asked), never the frame features.
            assert result.probs is not None and result.frame_probs is not None
            frames = (self.frames(result.frame_probs, int(options.smoothing_frames), span.duration_s)
                      if options.frames else ())
            if frames:
                frames = tuple(Frame(f.start_s + span.start_s, f.end_s + span.start_s, f.label,
                                     f.confidence, f.scores) for f in frames)
            timing = Timing(queue_ms=queue_s * 1000.0, inference_ms=result.inference_s * 1000.0,
                            decode_ms=0.0, total_ms=(time.monotonic() - start) * 1000.0,
                            batch_size=result.batch_size)
            return (result.probs, result.frame_probs, frames, timing,
                    result.embedding if options.embedding else None, int(result.frame_features.shape[0]))

        spans, parts = await self._run_long(audio, call, reduce)
        probs = aggregate_probs(spans, [p[0] for p in parts])
        segments: list[SegmentResult] = []
        all_frames: list[Frame] = []
        for span, (seg_probs, _, frames, timing, embedding, _n) in zip(spans, parts, strict=True):
            segments.append(SegmentResult(
                segment_id=span.index, start_s=span.start_s, end_s=span.end_s,
                utterance=self.utterance(seg_probs), timing=timing, first_frame=len(all_frames),
                frame_count=len(frames), embedding=embedding, probs=seg_probs,
            ))
            all_frames.extend(frames)
        embedding = (aggregate_embedding([p[5] for p in parts], [p[4] for p in parts])
                     if options.embedding else None)
        utterance = self.utterance(probs)
        duration_s = audio.duration_s
        recognition = Recognition(
            utterance=utterance, duration_s=duration_s,
            timing=self._sum_timing([s.timing for s in segments], decode_s, start),
            frames=tuple(all_frames), embedding=embedding, probs=probs,
            frame_probs=np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False),
            segments=tuple(segments), voiced_s=sum(s.duration_s for s in spans),
        )
        if observe:
            self._metrics.observe_audio(call.rpc, duration_s, call.protocol)
            self._metrics.observe_prediction(utterance.label, utterance.confidence)
        return recognition

    async def _embed_long(self, audio: PcmStore, decode_s: float, options: EmbedOptions, call: CallContext,
                          start: float) -> EmbeddingResult:
        dim = self._manifest.embedding_dim
        if options.frames:
            # Frame features are 50 per second x dim floats: refuse what could not be sent back anyway.
            frames_bytes = int(audio.duration_s * self._manifest.frame_rate_hz) * dim * 4
            if frames_bytes > self._limits.audio.max_encoded_bytes:
                raise InvalidRequest(
                    f"frame embeddings of {audio.duration_s:.0f} s of audio would be about "
                    f"{frames_bytes / 2**20:.0f} MiB, more than a message may hold "
                    f"({self._limits.audio.max_encoded_bytes / 2**20:.0f} MiB): ask for frames of shorter "
                    "audio"
                )

        def reduce(span: Span, result: ItemResult, queue_s: float) -> tuple[Any, ...]:
            timing = Timing(queue_ms=queue_s * 1000.0, inference_ms=result.inference_s * 1000.0,
                            decode_ms=0.0, total_ms=(time.monotonic() - start) * 1000.0,
                            batch_size=result.batch_size)
            return (result.embedding, int(result.frame_features.shape[0]), timing,
                    result.frame_features if options.frames else None)

        spans, parts = await self._run_long(audio, call, reduce)
        segments: list[EmbeddingSegment] = []
        first = 0
        for span, (embedding, n, timing, _) in zip(spans, parts, strict=True):
            segments.append(EmbeddingSegment(segment_id=span.index, start_s=span.start_s, end_s=span.end_s,
                                             embedding=embedding, first_frame=first, frame_count=n,
                                             timing=timing))
            first += n
        frame_features = (np.concatenate([p[3] for p in parts]).astype(np.float32, copy=False)
                          if options.frames else None)
        self._metrics.observe_audio(call.rpc, audio.duration_s, call.protocol)
        return EmbeddingResult(
            embedding=aggregate_embedding([p[1] for p in parts], [p[0] for p in parts]),
            frame_features=frame_features, duration_s=audio.duration_s,
            timing=self._sum_timing([s.timing for s in segments], decode_s, start), segments=tuple(segments),
        )
