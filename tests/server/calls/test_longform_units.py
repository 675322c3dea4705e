"""server/calls/longform.py and the long-recording store of server/audio/decode.py, without a model: segment
planning,
the submission window (through a real DynamicBatcher), queue refusals, failures and cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from emotion2vec_serving.batching import BatchPolicy, DynamicBatcher
from emotion2vec_serving.batching.errors import QueueFull
from emotion2vec_serving.server.audio.decode import decode_encoded, decode_encoded_any
from emotion2vec_serving.server.audio.errors import AudioError, AudioLimits
from emotion2vec_serving.server.audio.pcm import decode_pcm_any
from emotion2vec_serving.server.audio.store import PcmStore
from emotion2vec_serving.server.calls.limits import LongformSettings
from emotion2vec_serving.server.calls.longform import (
    Span,
    aggregate_embedding,
    aggregate_probs,
    fixed_windows,
    plan_segments,
    run_segments,
)
from emotion2vec_serving.server.runtime.contract import ItemResult
from tests.support.audio import encode, make_signal, pcm_bytes
from tests.support.longform import RATE, recording
from tests.support.polling import wait_until_async

# ------------------------------------------------------------------------------------------ the store


def test_store_keeps_16_bit_audio_exactly_across_chunks() -> None:
    rng = np.random.default_rng(0)
    ints = rng.integers(-32768, 32768, 10_000).astype(np.int16)
    store = PcmStore(RATE, chunk_samples=1000)
    for part in np.array_split(ints.astype(np.float32) / 32768.0, 7):  # appends straddle chunks
        store.append(part)
    assert len(store) == ints.size and store.nbytes == 10 * 1000 * 2
    np.testing.assert_array_equal(store.take(0, ints.size), ints.astype(np.float32) / 32768.0)
    np.testing.assert_array_equal(store.take(995, 2005), ints[995:2005].astype(np.float32) / 32768.0)
    assert store.take(9_990, 20_000).size == 10 and store.take(5, 5).size == 0
    blocks = list(store.blocks(3000))
    assert [b.size for b in blocks] == [3000, 3000, 3000, 1000]


def test_store_rounds_and_clips_float_audio() -> None:
    store = PcmStore(RATE)
    store.append(np.array([0.5, -1.5, 2.0, 1e-6, -0.25], np.float32))
    np.testing.assert_allclose(store.take(0, 5), [0.5, -1.0, 32767 / 32768, 0.0, -0.25])


def test_long_wav_decodes_into_the_store_exactly() -> None:
    rec = recording(45.0)
    got = decode_encoded_any(rec.wav(), AudioLimits(max_duration_s=10.0), max_audio_s=60.0)
    assert isinstance(got, PcmStore)
    np.testing.assert_array_equal(got.take(0, len(got)), rec.samples.astype(np.float32) / 32768.0)
    # Audio within one pass comes back exactly as the one-pass decoder returns it.
    short = decode_encoded_any(
        encode(make_signal(5.0, 44100, 2), 44100, "mp3"), AudioLimits(max_duration_s=10.0), max_audio_s=60.0
    )
    assert isinstance(short, np.ndarray)
    np.testing.assert_array_equal(
        short,
        decode_encoded(encode(make_signal(5.0, 44100, 2), 44100, "mp3"), AudioLimits(max_duration_s=10.0)),
    )


def test_long_audio_limits() -> None:
    limits = AudioLimits(max_duration_s=10.0)
    with pytest.raises(AudioError, match=r"audio too long: .*maximum 30 s") as err:
        decode_encoded_any(recording(40.0).wav(), limits, max_audio_s=30.0)
    assert err.value.reason == "too_long"
    pcm = pcm_bytes(make_signal(40.0, 8000, 2), "s16le")
    with pytest.raises(AudioError, match="maximum 30 s"):
        decode_pcm_any(pcm, "s16le", 8000, 2, limits, max_audio_s=30.0)
    store = decode_pcm_any(pcm, "s16le", 8000, 2, limits, max_audio_s=0.0)  # 0: no limit
    assert isinstance(store, PcmStore) and store.duration_s == pytest.approx(40.0, abs=0.01)
    nan = make_signal(40.0, 16000, 1)
    nan[30 * 16000] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        decode_pcm_any(pcm_bytes(nan, "f32le"), "f32le", 16000, 1, limits, max_audio_s=60.0)


# ------------------------------------------------------------------------------------------ planning


def test_plan_falls_back_to_fixed_windows_without_voice() -> None:
    store = PcmStore.from_int16(np.zeros(RATE * 25, np.int16))
    spans = plan_segments(store, LongformSettings(max_segment_s=10.0))
    assert [(s.start_s, s.end_s) for s in spans] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert fixed_windows(7, 3) == [(0, 3), (3, 6), (6, 7)]


def test_plan_cuts_continuous_sound_at_the_limit() -> None:
    t = np.arange(RATE * 23) / RATE
    store = PcmStore.from_int16((0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16))
    spans = plan_segments(store, LongformSettings(max_segment_s=10.0))
    assert [(s.start, s.end) for s in spans] == [(0, 160_000), (160_000, 320_000), (320_000, 368_000)]


def test_plan_finds_every_sentence_and_drops_too_short_pieces() -> None:
    rec = recording(60.0)
    spans = plan_segments(PcmStore.from_int16(rec.samples), LongformSettings(max_segment_s=10.0))
    assert [(s.start, s.end) for s in spans] == list(rec.clips)
    assert [s.index for s in spans] == list(range(len(spans)))
    none = plan_segments(
        PcmStore.from_int16(rec.samples), LongformSettings(max_segment_s=10.0), min_samples=10**9
    )
    assert none == []


def test_aggregates_are_weighted_means() -> None:
    spans = [Span(0, 0, 100), Span(1, 200, 500)]
    probs = aggregate_probs(spans, [np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)])
    np.testing.assert_allclose(probs, [0.25, 0.75])
    emb = aggregate_embedding([1, 3], [np.array([4.0], np.float32), np.array([0.0], np.float32)])
    np.testing.assert_allclose(emb, [1.0])


# ------------------------------------------------------------------------------------------ submission


class Recorder:
    """run_batch for a real DynamicBatcher: answers every payload with its first sample as the 'embedding'
    and records each batch; waits on ``gate`` so the test can hold the runner."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on: int | None = None
        self.entered = 0  # batches handed to the runner (counted before the gate)

    def __call__(self, payloads: list[np.ndarray]) -> list[ItemResult]:
        self.entered += 1
        self.gate.wait(10)
        ids = [int(p[0]) for p in payloads]
        self.batches.append(ids)
        if self.fail_on is not None and self.fail_on in ids:
            raise RuntimeError(f"segment {self.fail_on} broke the model")
        now = time.monotonic()
        return [
            ItemResult(
                embedding=np.array([float(p[0])], np.float32),
                frame_features=np.zeros((1, 1), np.float32),
                logits=None,
                probs=None,
                frame_probs=None,
                batch_size=len(payloads),
                started_monotonic=now,
                inference_s=0.0,
                provider="test",
            )
            for p in payloads
        ]


def numbered_store(n: int, seg: int) -> tuple[PcmStore, list[Span]]:
    """``n`` segments of ``seg`` samples; every sample of segment i holds the value i / 32768."""
    samples = np.repeat(np.arange(n, dtype=np.int16), seg)
    return PcmStore.from_int16(samples), [Span(i, i * seg, (i + 1) * seg) for i in range(n)]


async def started(batcher: DynamicBatcher[np.ndarray, ItemResult]) -> DynamicBatcher[np.ndarray, ItemResult]:
    await batcher.start()
    return batcher


def submitter(batcher: DynamicBatcher[np.ndarray, ItemResult]):  # type: ignore[no-untyped-def]
    async def submit(wave: np.ndarray) -> ItemResult:
        return await batcher.submit((wave * 32768).astype(np.float32), cost=int(wave.size))

    return submit


def keep(span: Span, result: ItemResult, queue_s: float) -> int:
    return int(result.embedding[0])


async def test_results_come_back_in_order_and_the_window_bounds_the_queue() -> None:
    rec = Recorder()
    batcher = await started(
        DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_s=0.001, adaptive=False))
    )
    store, spans = numbered_store(40, 100)
    seen: list[int] = []
    submit = submitter(batcher)

    async def watched(wave: np.ndarray) -> ItemResult:
        seen.append(batcher.queued_requests)
        return await submit(wave)

    try:
        out = await run_segments(store, spans, watched, keep, window_segments=6, window_samples=10_000)
    finally:
        await batcher.close()
    assert out == list(range(40))
    assert max(seen) < 6  # never more than the window of this call waiting
    assert sorted(i for b in rec.batches for i in b) == list(range(40))
    assert max(len(b) for b in rec.batches) > 1  # the call's own segments batch together


async def test_the_window_grows_only_while_batches_fill_it() -> None:
    store, spans = numbered_store(60, 100)
    # A batcher that batches: the window doubles from 2 to its maximum, and batches of 4 form.
    rec = Recorder()
    batcher = await started(DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_s=0.02,
                                                             adaptive=False)))
    try:
        out = await run_segments(store, spans, submitter(batcher), keep, window_segments=8,
                                 window_samples=10_000, initial_window=2)
    finally:
        await batcher.close()
    assert out == list(range(60)) and max(len(b) for b in rec.batches) == 4
    # One item per batch (as the adaptive batcher decides on a CPU): the window stays at 2, so another
    # client's request never has more than one of the call's segments queued ahead of it.
    rec = Recorder()
    batcher = await started(DynamicBatcher(rec, BatchPolicy(max_batch_size=1, max_queue_delay_s=0.001,
                                                             adaptive=False)))
    seen: list[int] = []
    submit = submitter(batcher)

    async def watched(wave: np.ndarray) -> ItemResult:
        seen.append(batcher.queued_requests)
        return await submit(wave)

    try:
        out = await run_segments(store, spans, watched, keep, window_segments=8, window_samples=10_000,
                                 initial_window=2)
    finally:
        await batcher.close()
    assert out == list(range(60)) and max(seen) <= 1


async def test_audio_window_lets_one_oversized_segment_through() -> None:
    rec = Recorder()
    batcher = await started(DynamicBatcher(rec, BatchPolicy(max_queue_delay_s=0.001, adaptive=False)))
    store, spans = numbered_store(5, 1000)
    try:
        out = await run_segments(store, spans, submitter(batcher), keep, window_segments=8, window_samples=10)
    finally:
        await batcher.close()
    assert out == list(range(5)) and all(len(b) == 1 for b in rec.batches)


async def test_queue_full_is_retried_once_the_call_has_started() -> None:
    rec = Recorder()
    batcher = await started(
        DynamicBatcher(
            rec, BatchPolicy(max_batch_size=1, max_queue_requests=2, max_queue_delay_s=0.001, adaptive=False)
        )
    )
    store, spans = numbered_store(12, 50)
    try:
        out = await run_segments(
            store, spans, submitter(batcher), keep, window_segments=6, window_samples=10_000
        )
    finally:
        await batcher.close()
    assert out == list(range(12))


async def test_queue_full_before_anything_ran_refuses_the_call() -> None:
    rec = Recorder()
    rec.gate.clear()  # hold the runner
    batcher = await started(
        DynamicBatcher(
            rec, BatchPolicy(max_batch_size=1, max_queue_requests=1, max_queue_delay_s=0.001, adaptive=False)
        )
    )
    other = [asyncio.ensure_future(batcher.submit(np.full(10, 99.0, np.float32), cost=10))]
    await wait_until_async(lambda: rec.entered == 1, 5, message="the runner took another client's request")
    other.append(asyncio.ensure_future(batcher.submit(np.full(10, 98.0, np.float32), cost=10)))
    await wait_until_async(lambda: batcher.queued_requests == 1, 5, message="another client filled the queue")
    store, spans = numbered_store(3, 50)
    try:
        with pytest.raises(QueueFull):
            await run_segments(
                store, spans, submitter(batcher), keep, window_segments=2, window_samples=10_000
            )
    finally:
        rec.gate.set()
        await asyncio.gather(*other)
        await batcher.close()


async def test_a_failing_segment_fails_the_call_and_cancels_the_rest() -> None:
    rec = Recorder()
    rec.fail_on = 3
    batcher = await started(
        DynamicBatcher(rec, BatchPolicy(max_batch_size=1, max_queue_delay_s=0.001, adaptive=False))
    )
    store, spans = numbered_store(30, 50)
    try:
        with pytest.raises(RuntimeError, match="segment 3 broke"):
            await run_segments(
                store, spans, submitter(batcher), keep, window_segments=4, window_samples=10_000
            )
        await wait_until_async(lambda: batcher.queued_requests == 0, 5,
                               message="the call's queued segments were cancelled")
        assert max(i for b in rec.batches for i in b) < 3 + 4  # nothing beyond the window ever ran
    finally:
        await batcher.close()


async def test_cancelling_the_call_empties_the_queue() -> None:
    rec = Recorder()
    batcher = await started(
        DynamicBatcher(rec, BatchPolicy(max_batch_size=2, max_queue_delay_s=0.001, adaptive=False))
    )
    store, spans = numbered_store(200, 50)
    progress: list[int] = []

    def on_progress(done: int, total: int) -> None:
        progress.append(done)
        if done == 10:
            rec.gate.clear()  # hold the runner from here on: the rest stays queued

    task = asyncio.ensure_future(
        run_segments(
            store,
            spans,
            submitter(batcher),
            keep,
            window_segments=4,
            window_samples=10_000,
            on_progress=on_progress,
        )
    )
    try:
        await wait_until_async(lambda: len(progress) >= 10 and batcher.queued_requests > 0, 10,
                               message="some segments ran and more are queued")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_async(lambda: batcher.queued_requests == 0, 5, message="the queue emptied")
    finally:
        rec.gate.set()
        await batcher.close()
    ran = sum(len(b) for b in rec.batches)
    assert ran <= 10 + 4  # what ran before the hold, plus at most the window that was in the runner


# ------------------------------------------------------------------------------------------ settings


def test_max_segment_s_is_the_max_duration_s_setting_and_max_audio_s_is_checked() -> None:
    from emotion2vec_serving.server.calls.limits import CoreLimits
    from emotion2vec_serving.server.config import Settings, SettingsError, parse_settings

    assert parse_settings(["--max-segment-s", "12"], {}).max_duration_s == 12.0
    assert parse_settings([], {"EMOTION_MAX_SEGMENT_S": "15"}).max_segment_s == 15.0
    assert parse_settings(["--max-duration-s", "20"], {}).max_segment_s == 20.0
    assert Settings().max_audio_s == 7200.0 == LongformSettings().max_audio_s
    assert Settings().max_segment_s == 30.0 == LongformSettings().max_segment_s
    with pytest.raises(SettingsError, match="max_audio_s"):
        Settings(max_audio_s=-1.0)
    with pytest.raises(SettingsError, match="max_audio_s is shorter"):
        Settings(max_audio_s=10.0, max_duration_s=20.0)
    limits = CoreLimits.from_settings(Settings(max_batch_size=4, max_batch_audio_s=30.0, runner_instances=2,
                                               max_audio_s=0.0), 16000)
    assert limits.longform is not None
    assert (limits.longform.window_segments, limits.longform.window_audio_s) == (16, 120.0)
    assert limits.longform.initial_window == 4  # two per runner
    assert limits.longform.max_audio_s == 0.0  # no limit but the message size
