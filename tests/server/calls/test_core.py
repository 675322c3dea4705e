"""``EmotionCore`` driven directly, with no protocol: a real ``DynamicBatcher`` over a real ``Runner`` on the
tiny ONNX model. Results, admission, the one error classification and the metrics (each call counted once,
with its protocol label) are checked here; the front ends' own tests check their conversions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from emotion2vec_serving.batching import BatchPolicy, DynamicBatcher
from emotion2vec_serving.clients.wire import RETRY_AFTER_MS_KEY, RETRY_PUSHBACK_KEY
from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.audio.errors import AudioLimits
from emotion2vec_serving.server.audio.pcm import decode_pcm
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.errors import CallFailed, ErrorKind
from emotion2vec_serving.server.calls.limits import CoreLimits
from emotion2vec_serving.server.calls.streams import (
    SegmentationSettings,
    SegmentEvent,
    StreamSettings,
    SummaryEvent,
)
from emotion2vec_serving.server.calls.types import (
    AudioInput,
    CallContext,
    EmbedOptions,
    Recognition,
    RecognizeOptions,
)
from emotion2vec_serving.server.grpc.status import status_code, trailing_metadata
from emotion2vec_serving.server.http.status import http_error
from emotion2vec_serving.server.metrics import ServerMetrics
from emotion2vec_serving.server.runtime.contract import RunnerOptions, split_on_error
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER
from emotion2vec_serving.server.runtime.runner import Runner
from tests.support.audio import encode, make_signal, pcm_bytes, tone_bursts

RATE = 16000
LIMITS = CoreLimits(audio=AudioLimits(max_duration_s=5.0, min_duration_s=0.1), default_timeout_s=30.0,
                    max_concurrent_streams=1, max_stream_duration_s=60.0, stream_idle_timeout_s=30.0,
                    stream_max_open_s=120.0)
#: Stream segments up to 4 s (within this core's 5 s limit).
SEG = SegmentationSettings(mode="energy", max_segment_s=4.0)


@pytest.fixture(scope="module")
def runner(manifest: ModelManifest) -> Iterator[Runner]:
    r = Runner(manifest, RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=1, run_timeout_s=0.0))
    yield r
    r.close()


@contextlib.asynccontextmanager
async def make_core(manifest: ModelManifest, runner: Runner, max_queue_requests: int = 64,
                    max_queue_cost: int = 600 * RATE) -> AsyncIterator[EmotionCore]:
    metrics = ServerMetrics(manifest.sample_rate_hz)
    policy = BatchPolicy(max_batch_size=8, max_batch_cost=60 * RATE, max_queue_delay_s=0.005,
                         max_queue_requests=max_queue_requests, max_queue_cost=max_queue_cost, adaptive=False)
    batcher: DynamicBatcher[np.ndarray, object] = DynamicBatcher(
        runner.run, policy, observer=metrics, split_on_error=split_on_error
    )
    await batcher.start()
    executor = ThreadPoolExecutor(2, thread_name_prefix="test-decode")
    the_core = EmotionCore(manifest, batcher, metrics, LIMITS, executor, provider=lambda: runner.provider)
    the_core.mark_ready()
    try:
        yield the_core
    finally:
        await batcher.close(drain=True, timeout_s=10)
        executor.shutdown(wait=True)


@pytest.fixture
async def core(manifest: ModelManifest, runner: Runner) -> AsyncIterator[EmotionCore]:
    async with make_core(manifest, runner) as the_core:
        yield the_core


def sample(core: EmotionCore, name: str, **labels: str) -> float:
    return core.metrics.registry.get_sample_value(name, labels) or 0.0


def call(protocol: str = "oip_grpc", rpc: str = "ModelInfer") -> CallContext:
    return CallContext(protocol=protocol, rpc=rpc)


def wave(seconds: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """Mono float32 test signal, 1-D."""
    return np.ascontiguousarray(make_signal(seconds, rate, 1, seed=seed)[:, 0])


# ------------------------------------------------------------------------------------------- results


async def test_recognize_returns_model_order_scores_frames_and_embedding(core: EmotionCore) -> None:
    m = core.manifest
    x = wave(1.5)
    result = await core.recognize(AudioInput.from_waveform(x), RecognizeOptions(frames=True, embedding=True),
                                  call())
    assert [s.index for s in result.utterance.scores] == list(range(len(m.labels)))
    assert [s.label for s in result.utterance.scores] == [lb.name for lb in m.labels]
    enabled = [lb.index for lb in m.labels if lb.enabled]
    top = max(enabled, key=lambda i: result.probs[i])
    assert result.utterance.label == m.labels[top].name
    assert result.utterance.confidence == pytest.approx(float(result.probs[top]))
    assert result.duration_s == pytest.approx(1.5)
    assert result.embedding is not None and result.embedding.shape == (m.embedding_dim,)
    assert result.frame_probs is not None and len(result.frames) == result.frame_probs.shape[0] > 0
    assert result.frames[0].start_s == 0.0 and result.frames[-1].end_s <= result.duration_s + 1e-6
    assert result.timing.batch_size >= 1 and result.timing.total_ms > 0
    # Counted once, under its own protocol and method; its audio too.
    assert sample(core, "emotion_requests_total", rpc="ModelInfer", code="OK", protocol="oip_grpc") == 1
    audio_s = sample(core, "emotion_audio_seconds_total", rpc="ModelInfer", protocol="oip_grpc")
    assert audio_s == pytest.approx(1.5)
    assert sample(core, "emotion_predictions_total", label=result.utterance.label) == 1


async def test_every_audio_description_gives_the_same_answer(core: EmotionCore) -> None:
    x = wave(1.0, seed=3)
    ref = await core.recognize(AudioInput.from_pcm(pcm_bytes(x[:, None], "f32le"), "f32le", RATE, 1),
                               RecognizeOptions(), call())
    by_wave = await core.recognize(AudioInput.from_waveform(x, RATE), RecognizeOptions(), call())
    np.testing.assert_allclose(by_wave.probs, ref.probs, atol=1e-6)
    # A 16-bit WAV file equals the same 16-bit samples sent as raw s16le PCM (two channels, downmixed).
    x2 = make_signal(1.0, RATE, 2, seed=3)
    by_file = await core.recognize(AudioInput.from_encoded(encode(x2, RATE, "wav")), RecognizeOptions(),
                                   call())
    by_s16 = await core.recognize(AudioInput.from_pcm(pcm_bytes(x2, "s16le"), "s16le", RATE, 2),
                                  RecognizeOptions(), call())
    np.testing.assert_allclose(by_file.probs, by_s16.probs, atol=1e-6)
    # Another rate: resampled by server.audio exactly as raw PCM at that rate would be.
    x8 = wave(1.0, seed=4, rate=8000)
    by_8k = await core.recognize(AudioInput.from_waveform(x8, 8000), RecognizeOptions(), call())
    by_pcm = await core.recognize(AudioInput.from_pcm(pcm_bytes(x8[:, None], "f32le"), "f32le", 8000),
                                  RecognizeOptions(), call())
    np.testing.assert_allclose(by_8k.probs, by_pcm.probs, atol=1e-6)
    resampled = decode_pcm(pcm_bytes(x8[:, None], "f32le"), "f32le", 8000, 1, LIMITS.audio)
    assert resampled.shape[0] == round(by_8k.duration_s * RATE) == RATE


async def test_embed_returns_the_embedding_and_frame_features(core: EmotionCore) -> None:
    x = wave(1.2, seed=5)
    out = await core.embed(AudioInput.from_waveform(x), EmbedOptions(frames=True),
                           call("emotion_v1", "Embed"))
    assert out.embedding.shape == (core.manifest.embedding_dim,)
    assert out.frame_features is not None and out.frame_features.shape[1] == core.manifest.embedding_dim
    np.testing.assert_allclose(out.frame_features.mean(axis=0), out.embedding, atol=1e-4)
    rec = await core.recognize(AudioInput.from_waveform(x), RecognizeOptions(embedding=True), call())
    assert rec.embedding is not None
    np.testing.assert_allclose(out.embedding, rec.embedding, atol=1e-5)
    assert sample(core, "emotion_requests_total", rpc="Embed", code="OK", protocol="emotion_v1") == 1


async def test_recognize_many_equals_one_by_one_and_counts_one_call(core: EmotionCore) -> None:
    # Equal lengths, so the length-aware policy batches them whenever they are queued together.
    waves = [wave(1.0, seed=i) for i in range(4)] + [wave(2.5, seed=9)]
    alone: list[Recognition] = []
    for x in waves:
        alone.append(await core.recognize(AudioInput.from_waveform(x), RecognizeOptions(embedding=True),
                                          call(rpc="Single")))
    many = await core.recognize_many([AudioInput.from_waveform(x) for x in waves],
                                     RecognizeOptions(embedding=True), call(rpc="Batch"))
    assert len(many) == len(waves)
    for a, b in zip(alone, many, strict=True):
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-5)
        assert b.embedding is not None and a.embedding is not None
        np.testing.assert_allclose(b.embedding, a.embedding, atol=1e-5)
        assert b.utterance.label == a.utterance.label
    assert max(r.timing.batch_size for r in many) > 1, "the items were not submitted together"
    assert sample(core, "emotion_requests_total", rpc="Batch", code="OK", protocol="oip_grpc") == 1
    total = sum(len(x) for x in waves) / RATE
    assert sample(core, "emotion_audio_seconds_total", rpc="Batch", protocol="oip_grpc") == pytest.approx(
        total)
    # All or nothing: one bad item fails the call, counted once as INVALID_ARGUMENT.
    with pytest.raises(CallFailed) as info:
        await core.recognize_many([AudioInput.from_waveform(waves[0]), AudioInput.from_waveform(wave(0.01))],
                                  RecognizeOptions(), call(rpc="Batch"))
    assert info.value.failure.kind is ErrorKind.INVALID_ARGUMENT
    assert "too short" in info.value.failure.message
    assert sample(core, "emotion_requests_total", rpc="Batch", code="INVALID_ARGUMENT",
                  protocol="oip_grpc") == 1
    assert sample(core, "emotion_rejections_total", reason="invalid_argument") == 1


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("audio", "needle"),
    [
        (AudioInput(), "exactly one audio source"),
        (AudioInput.from_encoded(b"not audio at all, just text"), "could not decode"),
        (AudioInput.from_pcm(b"\0" * 3201, "s16le", RATE), "whole number of frames"),
        (AudioInput.from_pcm(b"\0" * 3200, "mulaw", RATE), "encoding"),
        (AudioInput.from_waveform(np.zeros((2, 800), np.float32)), "one-dimensional"),
        (AudioInput.from_waveform(np.full(4000, np.nan, np.float32)), "NaN"),
        (AudioInput.from_waveform(np.zeros(16000 * 6, np.float32)), "too long"),
    ],
    ids=["none", "undecodable", "bad length", "bad encoding", "2-D waveform", "NaN", "too long"],
)
async def test_bad_audio_is_invalid_argument_counted_once(core: EmotionCore, audio: AudioInput,
                                                          needle: str) -> None:
    with pytest.raises(CallFailed) as info:
        await core.recognize(audio, RecognizeOptions(), call("http", "recognize"))
    failure = info.value.failure
    assert failure.kind is ErrorKind.INVALID_ARGUMENT and failure.reason == "invalid_argument"
    assert needle.lower() in failure.message.lower(), failure.message
    assert failure.retry_after_ms is None
    assert sample(core, "emotion_requests_total", rpc="recognize", code="INVALID_ARGUMENT",
                  protocol="http") == 1
    assert sample(core, "emotion_rejections_total", reason="invalid_argument") == 1
    assert core.inflight == 0


async def test_draining_refuses_every_call_with_a_retry_hint(core: EmotionCore) -> None:
    assert core.ready
    core.begin_drain()
    assert core.draining and not core.ready
    with pytest.raises(CallFailed) as info:
        await core.recognize(AudioInput.from_waveform(wave(0.5)), RecognizeOptions(), call())
    failure = info.value.failure
    assert failure.kind is ErrorKind.UNAVAILABLE and "shutting down" in failure.message
    assert failure.retry_after_ms is not None and failure.retry_after_ms > 0
    with pytest.raises(CallFailed):
        async with core.stream(StreamSettings("f32le", RATE, segmentation=SEG), call("ws", "Stream")):
            raise AssertionError("a stream was admitted while draining")
    assert sample(core, "emotion_rejections_total", reason="draining") == 2
    assert sample(core, "emotion_requests_total", rpc="ModelInfer", code="UNAVAILABLE",
                  protocol="oip_grpc") == 1
    assert await core.wait_idle(1.0)


async def test_a_shed_call_is_one_rejection_however_many_items_the_queue_refused(
    manifest: ModelManifest, runner: Runner
) -> None:
    # The queue holds 12 items but only 2 s of audio: 12 items of 0.5 s fit the request cap (issue 22: the
    # queue's item bound), and the queue refuses all but 4 of them.
    async with make_core(manifest, runner, max_queue_requests=12, max_queue_cost=2 * RATE) as small:
        items = [AudioInput.from_waveform(wave(0.5, seed=i)) for i in range(12)]
        with pytest.raises(CallFailed) as info:
            await small.recognize_many(items, RecognizeOptions(), call())
        failure = info.value.failure
        assert failure.kind is ErrorKind.RESOURCE_EXHAUSTED and failure.reason == "queue_full"
        assert failure.retry_after_ms is not None and failure.retry_after_ms > 0
        assert sample(small, "emotion_rejections_total", reason="queue_full") == 1
        assert sample(small, "emotion_requests_total", rpc="ModelInfer", code="RESOURCE_EXHAUSTED",
                      protocol="oip_grpc") == 1
        assert small.inflight == 0
        # The core is usable again at once.
        ok = await small.recognize(items[0], RecognizeOptions(), call())
        assert ok.utterance.label
        # More items than the queue could ever hold is the caller's error, not a reason to retry (issue 22).
        with pytest.raises(CallFailed) as info:
            await small.recognize_many([*items, items[0]], RecognizeOptions(), call())
        assert info.value.failure.kind is ErrorKind.INVALID_ARGUMENT
        assert "the limit is 12 items" in info.value.failure.message


def test_status_maps_carry_the_one_retry_hint() -> None:
    from emotion2vec_serving.server.calls.errors import Draining, classify

    failure = classify(Draining(), retry_after_ms=250)
    assert status_code(failure).name == "UNAVAILABLE"
    assert dict(trailing_metadata(failure)) == {RETRY_AFTER_MS_KEY: "250", RETRY_PUSHBACK_KEY: "250"}
    status, body, headers = http_error(failure)
    assert (status, body) == (503, {"error": failure.message})
    assert headers == {"Retry-After": "1", RETRY_AFTER_MS_KEY: "250"}
    invalid = classify(ValueError("x"))
    assert invalid.kind is ErrorKind.INTERNAL and trailing_metadata(invalid) == ()


# ------------------------------------------------------------------------------------------- streams


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


async def test_stream_yields_segments_in_order_then_a_summary_counted_once(core: EmotionCore) -> None:
    signal = tone_bursts([(0.5, 1.7), (2.5, 3.9)], 4.5)
    settings = StreamSettings("s16le", RATE, segmentation=SEG, embedding=True)
    events = []
    async with core.stream(settings, call("ws", "StreamRecognize")) as session:
        assert core.active_streams == 1
        async for event in session.run(_chunks(pcm_bytes(signal[:, None], "s16le"), 3200)):
            events.append(event)
    segments = [e for e in events if isinstance(e, SegmentEvent)]
    assert len(segments) == 2 and isinstance(events[-1], SummaryEvent)
    assert [s.segment_id for s in segments] == [0, 1]
    assert segments[0].start_s == pytest.approx(0.5, abs=0.1)
    assert segments[1].end_s == pytest.approx(3.9, abs=0.1)
    assert all(s.embedding is not None for s in segments)
    summary = events[-1]
    assert isinstance(summary, SummaryEvent)
    assert summary.segments == 2 and summary.duration_s == pytest.approx(4.5)
    assert summary.overall is not None
    assert sum(s.score for s in summary.label_seconds) == pytest.approx(
        sum(s.end_s - s.start_s for s in segments), abs=1e-3)
    # The segment equals the same audio recognised as one unary call.
    seg = signal[round(segments[0].start_s * RATE) : round(segments[0].end_s * RATE)]
    unary = await core.recognize(AudioInput.from_pcm(pcm_bytes(seg[:, None], "s16le"), "s16le", RATE),
                                 RecognizeOptions(), call())
    np.testing.assert_allclose([s.score for s in segments[0].utterance.scores],
                               [s.score for s in unary.utterance.scores], atol=1e-5)
    assert core.active_streams == 0
    assert sample(core, "emotion_requests_total", rpc="StreamRecognize", code="OK", protocol="ws") == 1
    streamed_s = sample(core, "emotion_audio_seconds_total", rpc="StreamRecognize", protocol="ws")
    assert streamed_s == pytest.approx(4.5)


async def test_stream_slots_and_in_band_errors_are_counted_once(core: EmotionCore) -> None:
    ws = call("ws", "StreamRecognize")
    async with core.stream(StreamSettings("f32le", RATE, segmentation=SEG), ws):
        with pytest.raises(CallFailed) as info:
            async with core.stream(StreamSettings("f32le", RATE, segmentation=SEG), ws):
                raise AssertionError("a second stream was admitted over the limit of 1")
        assert info.value.failure.kind is ErrorKind.RESOURCE_EXHAUSTED
        assert info.value.failure.retry_after_ms is not None
    assert sample(core, "emotion_rejections_total", reason="too_many_streams") == 1
    # Settings given in-band (configure) and an error raised by the adapter inside the block: one count.
    with pytest.raises(CallFailed) as bad:
        async with core.stream(None, ws) as session:
            session.configure(StreamSettings("u8", RATE, segmentation=SEG))
    assert bad.value.failure.kind is ErrorKind.INVALID_ARGUMENT
    assert sample(core, "emotion_requests_total", rpc="StreamRecognize", code="INVALID_ARGUMENT",
                  protocol="ws") == 1
    assert sample(core, "emotion_requests_total", rpc="StreamRecognize", code="OK", protocol="ws") == 1
    assert sample(core, "emotion_requests_total", rpc="StreamRecognize", code="RESOURCE_EXHAUSTED",
                  protocol="ws") == 1
    assert core.active_streams == 0 and core.inflight == 0
