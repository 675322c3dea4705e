"""Long recordings (minutes to hours) through Recognize and Embed: segment, submit in a window, aggregate.

Protocol-free (no protobuf, grpc or HTTP types). The core hands audio longer than one model pass (decoded
by the pipeline into a ``PcmStore``) to :class:`LongCalls`, which holds the whole orchestration:

1. :func:`plan_segments` cuts the 16 kHz recording (a :class:`~server.audio.decode.PcmStore`,
   int16) with the stream's energy end-pointing (:class:`EnergySegmenter`): voiced stretches between
   pauses, each at most ``max_segment_s`` (speech without pauses is cut into consecutive
   ``max_segment_s`` windows right where the limit falls). A recording with no voiced stretch at all
   (silence, or speech below the energy threshold) falls back to fixed ``max_segment_s`` windows over
   the whole recording, so every recording gets an answer, as a short silent clip does.
2. :func:`run_segments` submits the segments to the batcher: all of them belong to one call (one
   deadline, one priority; cancelling the call cancels every segment still queued or waiting), and a
   sliding window keeps only a few of them queued or running at a time, so a short request that arrives
   meanwhile waits behind at most one window, not behind the whole recording. The window starts at two
   segments per runner and doubles whenever the batcher puts more than half of it into one batch (it
   batches them with each other and with other clients' requests when batching pays, e.g. on a GPU), up
   to about two full batches per runner; where batching does not pay (the adaptive batcher on a CPU runs
   one item at a time) it stays at two per runner. Each result is reduced as soon as it arrives
   (``reduce``), so frame features of segments already answered are not kept.
3. :func:`aggregate_probs` / :func:`aggregate_embedding` combine the segments into the utterance-level
   answer: the duration-weighted mean of segment probabilities and the frame-weighted mean of segment
   embeddings. That is an aggregate over segments, not one model pass over the whole recording; the
   timing sums the segments' queue waits and inference shares (:func:`sum_timing`).

The call's deadline is its own, or the default timeout per ``max_segment_s`` of audio. Segments planned
but not yet handed to the batcher are counted in the admission's backlog (the retry hints' queue-drain
estimate).

Memory: the int16 recording (2 bytes a sample) plus one window of float32 segments plus the reduced
results (a few floats per segment; frames only when asked for).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from emotion2vec_serving.batching.errors import QueueFull
from emotion2vec_serving.server.audio.segmenter import EnergySegmenter
from emotion2vec_serving.server.audio.store import PcmStore
from emotion2vec_serving.server.calls.errors import InvalidRequest
from emotion2vec_serving.server.calls.limits import LongformSettings
from emotion2vec_serving.server.calls.pipeline import Pipeline, traced_reduce
from emotion2vec_serving.server.calls.types import (
    CallContext,
    EmbeddingResult,
    EmbeddingSegment,
    EmbedOptions,
    FloatArray,
    Frame,
    Recognition,
    RecognizeOptions,
    SegmentResult,
    Timing,
)
from emotion2vec_serving.server.runtime.contract import ItemResult

__all__ = [
    "LongCalls",
    "Span",
    "aggregate_embedding",
    "aggregate_probs",
    "fixed_windows",
    "plan_segments",
    "run_segments",
    "sum_timing",
]

T = TypeVar("T")

#: Samples fed to the segmenter at a time while planning (10 s at 16 kHz, 640 KB of float32).
_PLAN_BLOCK = 160_000
#: How long to wait before re-submitting a segment the queue refused while none of the call's own
#: segments is in flight to make room.
_QUEUE_FULL_BACKOFF_S = 0.05


@dataclass(frozen=True)
class Span:
    """Segment ``index`` of a recording: samples ``[start, end)`` at ``sample_rate_hz``."""

    index: int
    start: int
    end: int
    sample_rate_hz: int = 16000

    @property
    def samples(self) -> int:
        return self.end - self.start

    @property
    def start_s(self) -> float:
        return self.start / self.sample_rate_hz

    @property
    def end_s(self) -> float:
        return self.end / self.sample_rate_hz

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / self.sample_rate_hz


def plan_segments(audio: PcmStore, settings: LongformSettings, *, min_samples: int = 1) -> list[Span]:
    """Cut a recording into segments (see the module notes). Ordered, non-overlapping, each at most
    ``max_segment_s`` and at least ``min_samples`` long (shorter pieces are dropped)."""
    rate = audio.sample_rate_hz
    segmenter = EnergySegmenter(
        min_segment_s=min(settings.min_segment_s, settings.max_segment_s),
        max_segment_s=settings.max_segment_s,
        min_silence_s=settings.min_silence_s,
        energy_threshold_db=settings.energy_threshold_db,
        sample_rate_hz=rate,
    )
    bounds: list[tuple[int, int]] = []
    for block in audio.blocks(_PLAN_BLOCK):
        bounds.extend((s.start_sample, s.end_sample) for s in segmenter.feed(block))
    bounds.extend((s.start_sample, s.end_sample) for s in segmenter.finish())
    if not bounds:
        bounds = fixed_windows(len(audio), math.floor(settings.max_segment_s * rate))
    spans = [(a, b) for a, b in bounds if b - a >= min_samples]
    return [Span(i, a, b, rate) for i, (a, b) in enumerate(spans)]


def fixed_windows(n_samples: int, window: int) -> list[tuple[int, int]]:
    """``[0, n)`` as consecutive windows of ``window`` samples; the last one holds the remainder."""
    if window < 1:
        raise ValueError("window must be at least one sample")
    return [(a, min(n_samples, a + window)) for a in range(0, n_samples, window)]


SubmitFn = Callable[[FloatArray], Awaitable[ItemResult]]
ReduceFn = Callable[[Span, ItemResult, float], T]
ProgressFn = Callable[[int, int], None]


async def run_segments(
    audio: PcmStore,
    spans: Sequence[Span],
    submit: SubmitFn,
    reduce: ReduceFn[T],
    *,
    window_segments: int,
    window_samples: int,
    initial_window: int | None = None,
    deadline: float | None = None,
    on_progress: ProgressFn | None = None,
) -> list[T]:
    """Run every span through ``submit`` (the batcher, with the call's deadline and priority) and return
    ``reduce(span, result, queue_s)`` for each, in span order.

    At most ``window`` spans and ``window_samples`` samples are queued or running at once (at least one
    span). ``window`` starts at ``initial_window`` (default: ``window_segments``) and doubles, up to
    ``window_segments``, each time a result ran in a batch holding more than half of it: batching is
    paying and the window is what limits it. A span the queue refuses (``QueueFull``) while other spans
    of this call are in flight waits for one of them and is submitted again; with none in flight it is
    retried every 50 ms until ``deadline``, unless no span of this call has run yet: then the call is
    refused like any other request. Any other failure of one span cancels the rest and is raised;
    cancelling the caller cancels every span still queued.
    """
    out: list[T | None] = [None] * len(spans)
    todo: deque[Span] = deque(spans)
    pending: dict[asyncio.Task[tuple[ItemResult, float]], Span] = {}
    in_flight = 0
    finished = 0
    blocked = False  # the queue refused a span: submit nothing more until one of ours finishes
    window = max(1, min(window_segments, initial_window or window_segments))

    async def one(wave: FloatArray) -> tuple[ItemResult, float]:
        submitted = time.monotonic()
        result = await submit(wave)
        return result, max(0.0, result.started_monotonic - submitted)

    try:
        while todo or pending:
            while todo and (
                not pending
                or (not blocked and len(pending) < window
                    and in_flight + todo[0].samples <= window_samples)
            ):
                span = todo.popleft()
                task = asyncio.ensure_future(one(audio.take(span.start, span.end)))
                pending[task] = span
                in_flight += span.samples
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            refused: list[Span] = []
            refusal: QueueFull | None = None
            for task in done:
                span = pending.pop(task)
                in_flight -= span.samples
                exc = task.exception()
                if isinstance(exc, QueueFull):
                    refused.append(span)
                    refusal = exc
                    continue
                if exc is not None:
                    raise exc
                result, queue_s = task.result()
                if 2 * result.batch_size > window:
                    window = min(window_segments, 2 * window)
                out[span.index] = reduce(span, result, queue_s)
                finished += 1
                if on_progress is not None:
                    on_progress(finished, len(spans))
            if refusal is not None:
                if not pending:
                    late = deadline is not None and time.monotonic() + _QUEUE_FULL_BACKOFF_S >= deadline
                    if finished == 0 or late:
                        raise refusal
                    await asyncio.sleep(_QUEUE_FULL_BACKOFF_S)
                todo.extendleft(sorted(refused, key=lambda s: s.index, reverse=True))
            blocked = refusal is not None and bool(pending)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    assert all(item is not None for item in out)
    return [item for item in out if item is not None]


def aggregate_probs(spans: Sequence[Span], probs: Sequence[FloatArray]) -> FloatArray:
    """Duration-weighted mean of segment probabilities (float64 accumulation)."""
    weights = np.array([s.samples for s in spans], np.float64)
    stacked = np.stack([np.asarray(p, np.float64) for p in probs])
    out: FloatArray = (weights @ stacked / weights.sum()).astype(np.float32)
    return out


def aggregate_embedding(frame_counts: Sequence[int], embeddings: Sequence[FloatArray]) -> FloatArray:
    """Frame-weighted mean of segment embeddings: the mean of every valid frame's features over the whole
    recording, since each segment's embedding is the mean of its own frames."""
    weights = np.array(frame_counts, np.float64)
    stacked = np.stack([np.asarray(e, np.float64) for e in embeddings])
    out: FloatArray = (weights @ stacked / weights.sum()).astype(np.float32)
    return out


def sum_timing(timings: Sequence[Timing], decode_s: float, start: float) -> Timing:
    """A long call's timing: queue waits and inference shares summed over its segments (a segment's share
    of a batch is the batch time over the batch size), the mean batch size rounded."""
    return Timing(
        queue_ms=sum(t.queue_ms for t in timings),
        inference_ms=sum(t.inference_ms / max(1, t.batch_size) for t in timings),
        decode_ms=decode_s * 1000.0, total_ms=(time.monotonic() - start) * 1000.0,
        batch_size=max(1, round(sum(t.batch_size for t in timings) / max(1, len(timings)))),
    )


def _segment_timing(result: ItemResult, queue_s: float, start: float) -> Timing:
    return Timing(queue_ms=queue_s * 1000.0, inference_ms=result.inference_s * 1000.0, decode_ms=0.0,
                  total_ms=(time.monotonic() - start) * 1000.0, batch_size=result.batch_size)


class LongCalls:
    """Recognize and Embed of one long recording as one call: plan, run, reduce, aggregate.

    ``backlog`` is the admission's count of segments accepted but not yet handed to the batcher
    ([count, samples], updated in place).
    """

    def __init__(self, pipeline: Pipeline, backlog: list[int]) -> None:
        self._pipeline = pipeline
        self._backlog = backlog

    def _deadline(self, call: CallContext, duration_s: float) -> float:
        """The call's own deadline, or the default timeout per ``max_segment_s`` of audio."""
        if call.deadline is not None:
            return call.deadline
        limits = self._pipeline.limits
        assert limits.longform is not None
        passes = max(1.0, duration_s / limits.longform.max_segment_s)
        return time.monotonic() + limits.default_timeout_s * passes

    async def _run(self, audio: PcmStore, call: CallContext,
                   reduce: Callable[[Span, ItemResult, float], T]) -> tuple[list[Span], list[T]]:
        """Plan the segments (in the decode pool) and run them through the batcher as one call."""
        pipeline = self._pipeline
        longform = pipeline.limits.longform
        assert longform is not None
        loop = asyncio.get_running_loop()
        min_samples = max(1, int(pipeline.limits.audio.min_duration_s * audio.sample_rate_hz))
        trace = call.trace
        plan = functools.partial(plan_segments, audio, longform, min_samples=min_samples)
        with contextlib.nullcontext() if trace is None else trace.phase("plan_segments"):
            spans = await loop.run_in_executor(pipeline.decode_executor, plan)
        if not spans:
            raise InvalidRequest("the recording holds no segment long enough for the model")
        pipeline.metrics.observe_segments(call.rpc, len(spans), call.protocol)
        deadline = self._deadline(call, audio.duration_s)
        backlog = self._backlog
        left = [len(spans), sum(s.samples for s in spans)]
        backlog[0] += left[0]
        backlog[1] += left[1]

        async def submit(wave: FloatArray) -> ItemResult:
            backlog[0] -= 1
            left[0] -= 1
            backlog[1] -= int(wave.shape[0])
            left[1] -= int(wave.shape[0])
            return await pipeline.submit(wave, deadline, call.priority, trace)

        if trace is not None:
            reduce = traced_reduce(reduce, trace)  # each segment's spans (server/tracing.py)

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

    async def recognize(self, audio: PcmStore, decode_s: float, options: RecognizeOptions,
                        call: CallContext, start: float) -> Recognition:
        pipeline = self._pipeline

        def reduce(span: Span, result: ItemResult, queue_s: float) -> tuple[Any, ...]:
            # Keep a few floats per segment (and frame scores when asked), never the frame features.
            assert result.probs is not None and result.frame_probs is not None
            frames = (pipeline.frames(result.frame_probs, int(options.smoothing_frames), span.duration_s)
                      if options.frames else ())
            if frames:
                frames = tuple(Frame(f.start_s + span.start_s, f.end_s + span.start_s, f.label,
                                     f.confidence, f.scores) for f in frames)
            return (result.probs, result.frame_probs, frames, _segment_timing(result, queue_s, start),
                    result.embedding if options.embedding else None, int(result.frame_features.shape[0]))

        spans, parts = await self._run(audio, call, reduce)
        probs = aggregate_probs(spans, [p[0] for p in parts])
        segments: list[SegmentResult] = []
        all_frames: list[Frame] = []
        for span, (seg_probs, _, frames, timing, embedding, _n) in zip(spans, parts, strict=True):
            segments.append(SegmentResult(
                segment_id=span.index, start_s=span.start_s, end_s=span.end_s,
                utterance=pipeline.utterance(seg_probs), timing=timing, first_frame=len(all_frames),
                frame_count=len(frames), embedding=embedding, probs=seg_probs,
            ))
            all_frames.extend(frames)
        embedding = (aggregate_embedding([p[5] for p in parts], [p[4] for p in parts])
                     if options.embedding else None)
        return Recognition(
            utterance=pipeline.utterance(probs), duration_s=audio.duration_s,
            timing=sum_timing([s.timing for s in segments], decode_s, start),
            frames=tuple(all_frames), embedding=embedding, probs=probs,
            frame_probs=np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False),
            segments=tuple(segments), voiced_s=sum(s.duration_s for s in spans),
        )

    async def embed(self, audio: PcmStore, decode_s: float, options: EmbedOptions, call: CallContext,
                    start: float) -> EmbeddingResult:
        pipeline = self._pipeline
        if options.frames:
            # Frame features are 50 per second x dim floats: refuse what could not be sent back anyway.
            manifest, most = pipeline.manifest, pipeline.limits.audio.max_encoded_bytes
            frames_bytes = int(audio.duration_s * manifest.frame_rate_hz) * manifest.embedding_dim * 4
            if frames_bytes > most:
                raise InvalidRequest(
                    f"frame embeddings of {audio.duration_s:.0f} s of audio would be about "
                    f"{frames_bytes / 2**20:.0f} MiB, more than a message may hold "
                    f"({most / 2**20:.0f} MiB): ask for frames of shorter audio"
                )

        def reduce(span: Span, result: ItemResult, queue_s: float) -> tuple[Any, ...]:
            return (result.embedding, int(result.frame_features.shape[0]),
                    _segment_timing(result, queue_s, start),
                    result.frame_features if options.frames else None)

        spans, parts = await self._run(audio, call, reduce)
        segments: list[EmbeddingSegment] = []
        first = 0
        for span, (embedding, n, timing, _) in zip(spans, parts, strict=True):
            segments.append(EmbeddingSegment(segment_id=span.index, start_s=span.start_s, end_s=span.end_s,
                                             embedding=embedding, first_frame=first, frame_count=n,
                                             timing=timing))
            first += n
        frame_features = (np.concatenate([p[3] for p in parts]).astype(np.float32, copy=False)
                          if options.frames else None)
        return EmbeddingResult(
            embedding=aggregate_embedding([p[1] for p in parts], [p[0] for p in parts]),
            frame_features=frame_features, duration_s=audio.duration_s,
            timing=sum_timing([s.timing for s in segments], decode_s, start), segments=tuple(segments),
        )
