"""Long recordings (minutes to hours) through Recognize and Embed: segment, submit in a window, aggregate.

Protocol-free (no protobuf, grpc or HTTP types); the core calls it for audio longer than one model pass.

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
   embeddings. That is an aggregate over segments, not one model pass over the whole recording.

Memory: the int16 recording (2 bytes a sample) plus one window of float32 segments plus the reduced
results (a few floats per segment; frames only when asked for).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.batching.errors import QueueFull
from emotion2vec_serving.server.audio.segmenter import EnergySegmenter
from emotion2vec_serving.server.audio.store import PcmStore
from emotion2vec_serving.server.runtime.contract import ItemResult

__all__ = [
    "LongformSettings",
    "Span",
    "aggregate_embedding",
    "aggregate_probs",
    "plan_segments",
    "run_segments",
    "window_for",
]

FloatArray = npt.NDArray[np.float32]
T = TypeVar("T")

#: Samples fed to the segmenter at a time while planning (10 s at 16 kHz, 640 KB of float32).
_PLAN_BLOCK = 160_000
#: How long to wait before re-submitting a segment the queue refused while none of the call's own
#: segments is in flight to make room.
_QUEUE_FULL_BACKOFF_S = 0.05


@dataclass(frozen=True)
class LongformSettings:
    """How long recordings are cut and submitted (server settings; defaults equal ``Settings``')."""

    max_audio_s: float = 7200.0  # longest recording accepted (0 = no limit but the message size)
    max_segment_s: float = 30.0  # longest segment = longest single model pass (--max-segment-s)
    min_segment_s: float = 1.0  # energy end-pointing, as StreamRecognize's defaults
    min_silence_s: float = 0.3
    energy_threshold_db: float = -40.0
    window_segments: int = 16  # most segments of one call queued or running at once
    window_audio_s: float = 120.0  # most audio of one call queued or running at once
    initial_window: int = 2  # segments queued or running at first (grows while batches fill it)

    def __post_init__(self) -> None:
        if self.max_audio_s < 0:
            raise ValueError("max_audio_s must not be negative")
        if not self.max_segment_s > 0:
            raise ValueError("max_segment_s must be positive")
        if self.window_segments < 1 or self.initial_window < 1 or not self.window_audio_s > 0:
            raise ValueError("the submission window must hold at least one segment")


def window_for(max_batch_size: int, max_batch_audio_s: float, instances: int) -> tuple[int, float, int]:
    """The submission window: at most about two batches per runner instance (one running, one forming);
    at first two segments per runner (see :func:`run_segments`). Returns (segments, audio_s, initial)."""
    most = max(2, 2 * max_batch_size * instances)
    return most, max(1.0, 2.0 * max_batch_audio_s * instances), min(most, 2 * instances)


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
