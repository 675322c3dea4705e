"""One protocol-free stream: PCM chunks -> decoder -> segmenter -> batcher -> segment events, then a summary.

A reader task consumes the caller's chunks; decoding and segmentation run in the decode thread pool (one
chunk at a time, so order is kept). Each finished segment is submitted at once to the same batcher as
unary calls, and results come back in segment order. At most ``MAX_PENDING_SEGMENTS`` segments may be
waiting for their result: beyond that the reader stops reading, and the transport's flow control slows
the client down instead of the server buffering without bound. After the chunks end, the open segment is
finished and a summary over the whole stream follows.

Time bounds (:class:`StreamClock`): a stream that receives no audio for ``stream_idle_timeout_s`` (counted
from its config, then from each non-empty chunk) or that is open longer than ``stream_max_open_s`` (from
its start) ends with :class:`~.errors.StreamTimeout` (DEADLINE_EXCEEDED); the limits apply whenever the
stream waits for the client (the gRPC config, each chunk), never while the server itself is busy with the
stream's audio. Results of audio received before the limit are still delivered first. How each admitted
stream ended is counted once in ``emotion_stream_endings_total`` (:meth:`StreamSession.ending_counted`).

Sessions are made by ``EmotionCore.stream`` (admission, counting) over the core's pipeline (decoding
limits, batcher submission, results); front ends convert their messages to :class:`StreamSettings` and
``bytes`` chunks, and the events back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from emotion2vec_serving.server import defaults
from emotion2vec_serving.server.audio.segmenter import (
    EnergySegmenter,
    FixedSegmenter,
    Segment,
    Segmenter,
    StreamDecoder,
)
from emotion2vec_serving.server.calls.errors import InvalidRequest, StreamTimeout
from emotion2vec_serving.server.calls.pipeline import Pipeline
from emotion2vec_serving.server.calls.types import CallContext, Score, Timing, Utterance
from emotion2vec_serving.server.runtime.contract import ItemResult

__all__ = [
    "MAX_PENDING_SEGMENTS",
    "SEGMENTATION_DEFAULTS",
    "SegmentEvent",
    "SegmentationSettings",
    "StreamClock",
    "StreamSession",
    "StreamSettings",
    "SummaryEvent",
    "build_segmenter",
    "ending_reason",
]

_T = TypeVar("_T")

#: Segments of one stream submitted but not yet answered; the reader waits beyond this.
MAX_PENDING_SEGMENTS = 8

#: Values used for segmentation settings left at 0 (protocols such as proto3 cannot tell 0 from unset),
#: by setting name; the values are stated in ``server/defaults.py``.
SEGMENTATION_DEFAULTS = {
    "min_segment_s": defaults.SEGMENT_MIN_S,
    "max_segment_s": defaults.STREAM_MAX_SEGMENT_S,
    "min_silence_s": defaults.SEGMENT_MIN_SILENCE_S,
    "energy_threshold_db": defaults.SEGMENT_ENERGY_THRESHOLD_DB,
    "window_s": defaults.FIXED_WINDOW_S,
}


@dataclass(frozen=True)
class SegmentationSettings:
    """How a stream is cut into utterances. Zeros mean the defaults of ``SEGMENTATION_DEFAULTS``;
    ``hop_s`` 0 means the window (no overlap)."""

    mode: Literal["energy", "fixed"] = "energy"
    min_segment_s: float = 0.0
    max_segment_s: float = 0.0
    min_silence_s: float = 0.0
    energy_threshold_db: float = 0.0
    window_s: float = 0.0
    hop_s: float = 0.0


@dataclass(frozen=True)
class StreamSettings:
    """A stream's audio format and options."""

    encoding: str  # "s16le" | "f32le"
    sample_rate_hz: int
    channels: int = 1
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    embedding: bool = False
    priority: int = 0


@dataclass(frozen=True)
class SegmentEvent:
    segment_id: int
    start_s: float
    end_s: float
    utterance: Utterance
    timing: Timing
    embedding: Any | None  # float32 [D] when StreamSettings.embedding


@dataclass(frozen=True)
class SummaryEvent:
    segments: int
    duration_s: float
    voiced_s: float
    label_seconds: tuple[Score, ...]  # seconds of segments whose top label is each label, model order
    overall: Utterance | None  # duration-weighted mean of the segments' scores; None without segments


def build_segmenter(settings: SegmentationSettings, max_segment_s: float) -> Segmenter:
    """Build the configured segmenter; InvalidRequest names the setting that is wrong."""

    def value(name: str) -> float:
        v = float(getattr(settings, name))
        return v if v != 0 else SEGMENTATION_DEFAULTS[name]

    def length(name: str) -> float:
        """A segment length: the caller's, refused above the server's maximum, or the default capped at it."""
        chosen = float(getattr(settings, name))
        if chosen == 0:
            return min(SEGMENTATION_DEFAULTS[name], max_segment_s)
        if chosen > max_segment_s:
            raise InvalidRequest(
                f"segmentation.{name} {chosen:g} s exceeds the server's maximum of {max_segment_s:g} s"
            )
        return chosen

    mode = settings.mode
    try:
        if mode == "energy":
            longest = length("max_segment_s")
            return EnergySegmenter(
                min_segment_s=min(value("min_segment_s"), longest), max_segment_s=longest,
                min_silence_s=value("min_silence_s"), energy_threshold_db=value("energy_threshold_db"),
            )
        if mode == "fixed":
            window = length("window_s")
            hop = float(settings.hop_s) or window
            return FixedSegmenter(window_s=window, hop_s=hop)
    except ValueError as exc:
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest(f"invalid segmentation settings: {exc}") from exc
    raise InvalidRequest(f"unknown segmentation mode {mode!r}")


class StreamClock:
    """The time limits of one stream: ``idle_s`` without audio, ``max_open_s`` from its start.

    :meth:`within` bounds one wait for the client by the nearer of the two; :meth:`heard` restarts the
    idle time. The wall-clock limit is absolute: nothing the client sends extends it.
    """

    def __init__(self, idle_s: float, max_open_s: float) -> None:
        self.idle_s = idle_s
        self.max_open_s = max_open_s
        now = time.monotonic()
        self._end_by = now + max_open_s
        self._idle_by = now + idle_s

    def heard(self) -> None:
        """The client sent something that counts (the config, audio): the idle time starts again."""
        self._idle_by = time.monotonic() + self.idle_s

    def expired(self, reason: str) -> StreamTimeout:
        if reason == "idle_timeout":
            return StreamTimeout(reason, f"no audio for {self.idle_s:g} s: the stream was idle "
                                 "(--stream-idle-timeout-s); open a new stream when there is audio to send")
        return StreamTimeout(reason, f"stream open longer than the limit of {self.max_open_s:g} s "
                             "(--stream-max-open-s); continue in a new stream")

    async def within(self, awaitable: Awaitable[_T]) -> _T:
        """``await awaitable`` (a wait for the client), or StreamTimeout once the nearer limit passes."""
        deadline, reason = ((self._idle_by, "idle_timeout") if self._idle_by < self._end_by
                            else (self._end_by, "duration_limit"))
        waiting = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait((waiting,), timeout=max(0.0, deadline - time.monotonic()))
        finally:
            if not waiting.done():
                waiting.cancel()
        if not done:
            await asyncio.gather(waiting, return_exceptions=True)  # let it finish cancelling
            raise self.expired(reason)
        return waiting.result()


def ending_reason(exc: BaseException | None) -> str:
    """The ``emotion_stream_endings_total`` reason of a stream that ended with ``exc`` (None: normally)."""
    if exc is None:
        return "completed"
    if isinstance(exc, StreamTimeout):
        return exc.reason
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "client_closed"
    return "error"


@dataclass
class _Pending:
    segment: Segment
    task: asyncio.Task[tuple[ItemResult, float]]
    ready_s: float  # when the segment was complete (time.monotonic)


_END = object()


class StreamSession:
    """State of one stream. ``configure`` once, then ``run`` once; raised errors are domain errors."""

    def __init__(self, pipeline: Pipeline, call: CallContext) -> None:
        self._pipeline = pipeline
        self._call = call
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._slots = asyncio.Semaphore(MAX_PENDING_SEGMENTS)
        self._decoder: StreamDecoder | None = None
        self._segmenter: Segmenter | None = None
        self._settings: StreamSettings | None = None
        limits = pipeline.limits
        self.clock = StreamClock(limits.stream_idle_timeout_s, limits.stream_max_open_s)

    @contextlib.contextmanager
    def ending_counted(self) -> Iterator[None]:
        """Count once, when the block (the whole stream) exits, how it ended."""
        reason = ending_reason(None)
        try:
            yield
        except BaseException as exc:
            reason = ending_reason(exc)
            raise
        finally:
            self._pipeline.metrics.observe_stream_end(self._call.protocol, reason)

    async def receive(self, awaitable: Awaitable[_T]) -> _T:
        """Wait for a message from the client that is not audio (the gRPC config) within the limits."""
        return await self.clock.within(awaitable)

    @property
    def configured(self) -> bool:
        return self._settings is not None

    def configure(self, settings: StreamSettings) -> None:
        """Validate the settings and build the decoder and segmenter (InvalidRequest / AudioError)."""
        if self._settings is not None:
            raise InvalidRequest("the stream is already configured")
        limits = self._pipeline.limits
        if settings.encoding not in ("s16le", "f32le"):
            raise InvalidRequest(f"stream encoding must be s16le or f32le (got {settings.encoding!r})")
        if settings.sample_rate_hz <= 0:
            raise InvalidRequest("the stream's sample_rate_hz is required (e.g. 16000)")
        encoding: Any = settings.encoding
        self._decoder = StreamDecoder(encoding, int(settings.sample_rate_hz), int(settings.channels or 1),
                                      limits.audio)
        self._segmenter = build_segmenter(settings.segmentation, limits.audio.max_duration_s)
        self._settings = settings
        self.clock.heard()  # the idle time counts from the config

    async def run(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[SegmentEvent | SummaryEvent]:
        """Segment events in order while ``chunks`` arrive, then one summary."""
        if self._settings is None:
            raise InvalidRequest("the stream has no settings: configure it before sending audio")
        pipeline = self._pipeline
        deadline_fixed = self._call.deadline
        reader = asyncio.create_task(self._read(chunks, deadline_fixed), name="stream-reader")
        pending: list[_Pending] = []
        sum_probs: np.ndarray[Any, np.dtype[np.float64]] | None = None
        label_seconds = np.zeros(len(pipeline.manifest.labels), np.float64)
        weight = 0.0
        segments = 0
        try:
            while True:
                item = await self._outbox.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, _Pending)
                pending.append(item)
                try:
                    result, queue_s = await item.task
                finally:
                    pending.remove(item)
                    self._slots.release()
                yield self._segment_event(item, result, queue_s)
                assert result.probs is not None
                duration = item.segment.duration_s
                weighted = result.probs.astype(np.float64) * duration
                sum_probs = weighted if sum_probs is None else sum_probs + weighted
                top = int(np.argmax(np.where(pipeline.enabled_labels, result.probs, -np.inf)))
                label_seconds[top] += duration
                weight += duration
                segments += 1
            yield self._summary(segments, sum_probs, weight, label_seconds)
        finally:
            reader.cancel()
            while not self._outbox.empty():
                leftover = self._outbox.get_nowait()
                if isinstance(leftover, _Pending):
                    pending.append(leftover)
            for p in pending:
                p.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(reader, *(p.task for p in pending), return_exceptions=True)
            if self._decoder is not None:
                pipeline.metrics.observe_audio(self._call.rpc, self._decoder.duration_s, self._call.protocol)

    # ------------------------------------------------------------------ reading

    async def _read(self, chunks: AsyncIterator[bytes], deadline_fixed: float | None) -> None:
        try:
            waiting = aiter(chunks)
            while True:
                try:
                    chunk = await self.clock.within(anext(waiting))
                except StopAsyncIteration:
                    break
                if chunk:
                    self.clock.heard()
                await self._process(chunk, deadline_fixed, last=False)
            await self._process(b"", deadline_fixed, last=True)
            await self._outbox.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._outbox.put(exc)

    async def _process(self, chunk: bytes, deadline_fixed: float | None, *, last: bool) -> None:
        decoder, segmenter = self._decoder, self._segmenter
        assert decoder is not None and segmenter is not None

        def work() -> list[Segment]:
            samples = decoder.finish() if last else decoder.feed(chunk)
            out = segmenter.feed(samples) if samples.size else []
            if last:
                out += segmenter.finish()
            return out

        loop = asyncio.get_running_loop()
        segments = await loop.run_in_executor(self._pipeline.decode_executor, work)
        longest = self._pipeline.limits.max_stream_duration_s
        if decoder.duration_s > longest:
            raise InvalidRequest(f"stream longer than the maximum of {longest:g} s")
        for segment in segments:
            await self._slots.acquire()  # back-pressure: at most MAX_PENDING_SEGMENTS in flight
            self._submit(segment, deadline_fixed)

    def _submit(self, segment: Segment, deadline_fixed: float | None) -> None:
        assert self._settings is not None
        deadline = deadline_fixed
        if deadline is None:
            deadline = time.monotonic() + self._pipeline.limits.default_timeout_s
        segment_trace = None if self._call.trace is None else {
            "id": segment.index, "start_s": segment.start_s, "end_s": segment.end_s}
        task = asyncio.create_task(self._pipeline.infer(segment.samples, deadline, self._settings.priority,
                                                        self._call.trace, segment_trace))
        self._outbox.put_nowait(_Pending(segment, task, time.monotonic()))

    # ------------------------------------------------------------------ events

    def _segment_event(self, item: _Pending, result: ItemResult, queue_s: float) -> SegmentEvent:
        pipeline = self._pipeline
        assert result.probs is not None and self._settings is not None
        utterance = pipeline.utterance(result.probs)
        pipeline.metrics.observe_prediction(utterance.label, utterance.confidence)
        seg = item.segment
        return SegmentEvent(
            segment_id=seg.index, start_s=seg.start_s, end_s=seg.end_s, utterance=utterance,
            timing=pipeline.timing(result, queue_s, 0.0, item.ready_s),
            embedding=result.embedding if self._settings.embedding else None,
        )

    def _summary(self, segments: int, sum_probs: np.ndarray[Any, np.dtype[np.float64]] | None, weight: float,
                 label_seconds: np.ndarray[Any, np.dtype[np.float64]]) -> SummaryEvent:
        pipeline = self._pipeline
        assert self._decoder is not None and self._segmenter is not None
        overall = None
        if sum_probs is not None and weight > 0:
            overall = pipeline.utterance((sum_probs / weight).astype(np.float32))
        return SummaryEvent(
            segments=segments, duration_s=self._decoder.duration_s,
            voiced_s=self._segmenter.covered_samples / pipeline.manifest.sample_rate_hz,
            label_seconds=tuple(Score(lb.index, lb.name, lb.name_zh, float(label_seconds[lb.index]))
                                for lb in pipeline.manifest.labels),
            overall=overall,
        )
