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
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.server.audio import AudioLimits, PcmEncoding, decode_pcm
from emotion2vec_serving.server.audio import decode_encoded as _decode_encoded
from emotion2vec_serving.server.errors import (
    CallFailed,
    Draining,
    ErrorKind,
    Failure,
    InvalidRequest,
    NoClassifierHead,
    TooManyStreams,
    classify,
)
from emotion2vec_serving.server.manifest import Label, ModelManifest
from emotion2vec_serving.server.metrics import ServerMetrics
from emotion2vec_serving.server.runner import ItemResult

__all__ = [
    "AudioInput",
    "BatcherLike",
    "CallContext",
    "CallFailed",
    "CoreLimits",
    "EmbedOptions",
    "EmbeddingResult",
    "EmotionCore",
    "Frame",
    "ModelCard",
    "Recognition",
    "RecognizeOptions",
    "Score",
    "ServiceLimits",
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

    @classmethod
    def from_settings(cls, settings: Any, sample_rate_hz: int) -> CoreLimits:
        """Limits of a server run with ``settings`` (a ``server.config.Settings``)."""
        audio = AudioLimits(max_duration_s=settings.max_duration_s, min_duration_s=settings.min_duration_s,
                            max_encoded_bytes=settings.max_message_bytes,
                            target_sample_rate_hz=sample_rate_hz)
        return cls(audio=audio, default_timeout_s=settings.default_timeout_s,
                   max_concurrent_streams=settings.max_concurrent_streams,
                   max_stream_duration_s=settings.max_stream_duration_s)


#: The former name (emotion.v1 servicer's limits).
ServiceLimits = CoreLimits


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


@dataclass(frozen=True)
class EmbeddingResult:
    embedding: FloatArray  # [D]
    frame_features: FloatArray | None  # [T, D] when asked for
    duration_s: float
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
    ) -> None:
        self._manifest = manifest
        self._batcher = batcher
        self._metrics = metrics
        self._limits = limits
        self._executor = decode_executor
        self._provider = provider
        self._engine = engine
        # Batcher cost of a waveform of n samples: what the runner really runs (e.g. a padded bucket).
        self._cost_of = cost_of
        self._draining = False
        self._ready = False
        self._active_streams = 0
        self._inflight = 0
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
            name=m.model_name, version=m.model_version, precision=m.precision, untrained=m.untrained,
            labels=m.labels, sample_rate_hz=m.sample_rate_hz, frame_rate_hz=m.frame_rate_hz,
            embedding_dim=m.embedding_dim, provider=self._provider(), engine=self._engine,
            max_duration_s=self._limits.audio.max_duration_s,
            min_duration_s=self._limits.audio.min_duration_s,
            has_head=m.has_head,
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

    def _check_accepting(self) -> None:
        if self._draining:
            raise Draining()

    def _retry_after_ms(self) -> int:
        try:
            return int(1000 * max(0.05, float(self._batcher.estimated_drain_s)))
        except Exception:  # the hint is best effort
            return 100

    def _fail(self, exc: BaseException, call: CallContext, start: float) -> CallFailed:
        """Classify, count once (requests + rejection reason), log; the exception to raise."""
        failure = classify(exc, self._retry_after_ms())
        if failure.reason is not None:
            self._metrics.reject(failure.reason)
        self._metrics.observe_request(call.rpc, failure.kind.value, time.monotonic() - start, call.protocol)
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
            self._metrics.observe_request(call.rpc, "CANCELLED", time.monotonic() - start, call.protocol)
            raise
        except Exception as exc:
            raise self._fail(exc, call, start) from exc
        finally:
            self._leave()
        self._metrics.observe_request(call.rpc, "OK", time.monotonic() - start, call.protocol)
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
        from emotion2vec_serving.server.stream import StreamSession  # the segmenter is only needed here

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
                self._metrics.observe_request(call.rpc, code, time.monotonic() - start, call.protocol)

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
        limits = self._limits.audio
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        kind = audio.kind
        if kind == "encoded":
            data = audio.encoded
            assert data is not None
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
            if rate == limits.target_sample_rate_hz and len(pcm) <= _INLINE_PCM_BYTES:
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
            if rate == limits.target_sample_rate_hz and len(raw) <= _INLINE_PCM_BYTES:
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
        waveform, decode_s = await self.decode(audio)
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
        waveform, decode_s = await self.decode(audio)
        result, queue_s = await self.infer(waveform, self.deadline(call), call.priority)
        duration_s = waveform.shape[0] / self._rate
        self._metrics.observe_audio(call.rpc, duration_s, call.protocol)
        return EmbeddingResult(
            embedding=result.embedding, frame_features=result.frame_features if options.frames else None,
            duration_s=duration_s, timing=self.timing(result, queue_s, decode_s, start),
        )

