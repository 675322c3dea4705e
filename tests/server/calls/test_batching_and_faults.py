"""Batching through the real server: batch-exact results, overload, cancellation, deadlines, injected faults.

Runner faults are injected through the runner's session factory (tests/support/faults.py): the real
ONNX Runtime session is wrapped so that it fails, blocks or pretends to be a GPU session.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable

import grpc
import numpy as np
import pytest
from emotion.v1 import emotion_pb2 as pb

from tests.support.calls import RATE, audio_of, recognize
from tests.support.faults import FaultyFactory, always, oom_above, poison_length
from tests.support.polling import wait_until_async as until
from tests.support.servers import Running, StartServer

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def scores(response: pb.RecognizeResponse) -> np.ndarray:
    return np.array([s.score for s in response.utterance.scores] + list(response.embedding.values))


async def test_concurrent_calls_of_different_lengths_equal_one_at_a_time(start_server: StartServer) -> None:
    # Classic batching with a generous delay so that the concurrent calls really share padded batches.
    running: Running = await start_server(adaptive_batching=False, max_queue_delay_ms=200.0, max_batch_size=8)
    lengths = [4000, 9000, 16000, 23456, 31000, 40000, 7777, 48000]
    alone = [await recognize(running, n, seed=i) for i, n in enumerate(lengths)]
    assert all(r.timing.batch_size == 1 for r in alone)
    together = await asyncio.gather(*(recognize(running, n, seed=i) for i, n in enumerate(lengths)))
    assert max(r.timing.batch_size for r in together) > 1, "the concurrent calls were not batched"
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(scores(b), scores(a), atol=1e-4)
        assert a.utterance.label == b.utterance.label


def frame_matrix(response: pb.RecognizeResponse) -> np.ndarray:
    return np.array([list(frame.scores) for frame in response.frames])


async def test_concurrent_frame_results_equal_one_at_a_time(start_server: StartServer) -> None:
    # Per-frame results must be cut at each item's own valid frames, never padded to the batch's longest.
    running: Running = await start_server(adaptive_batching=False, max_queue_delay_ms=200.0, max_batch_size=8)
    lengths = [4000, 9000, 16000, 23456, 31000, 40000, 7777, 48000]

    def frames_call(n: int, seed: int) -> Awaitable[pb.RecognizeResponse]:
        request = pb.RecognizeRequest(audio=audio_of(n, seed), granularity=pb.GRANULARITY_FRAME)
        call: Awaitable[pb.RecognizeResponse] = running.stub.Recognize(request)
        return call

    def embed_call(n: int, seed: int) -> Awaitable[pb.EmbedResponse]:
        call: Awaitable[pb.EmbedResponse] = running.stub.Embed(
            pb.EmbedRequest(audio=audio_of(n, seed), return_frames=True))
        return call

    alone = [await frames_call(n, i) for i, n in enumerate(lengths)]
    alone_embed = [await embed_call(n, i) for i, n in enumerate(lengths)]
    together = await asyncio.gather(*(frames_call(n, i) for i, n in enumerate(lengths)))
    together_embed = await asyncio.gather(*(embed_call(n, i) for i, n in enumerate(lengths)))
    assert max(r.timing.batch_size for r in together) > 1, "the concurrent calls were not batched"
    assert max(r.timing.batch_size for r in together_embed) > 1, "the concurrent calls were not batched"
    for n, a, b in zip(lengths, alone, together, strict=True):
        assert len(b.frames) == len(a.frames) == (n - 400) // 320 + 1
        np.testing.assert_allclose(frame_matrix(b), frame_matrix(a), atol=1e-4)
    for n, a, b in zip(lengths, alone_embed, together_embed, strict=True):
        assert len(b.frames) == len(a.frames) == (n - 400) // 320 + 1
        np.testing.assert_allclose(
            np.array([f.values for f in b.frames]), np.array([f.values for f in a.frames]), atol=1e-4)


async def test_oom_splits_the_batch_and_isolates_what_cannot_fit(start_server: StartServer) -> None:
    factory = FaultyFactory(oom_above(5 * RATE))  # padded batches above 5 s of audio run out of memory
    running: Running = await start_server(factory, adaptive_batching=False, max_queue_delay_ms=200.0)
    good = [2 * RATE, 2 * RATE + 100, 2 * RATE + 200, 2 * RATE + 300]
    baseline = [await recognize(running, n, seed=i) for i, n in enumerate(good)]
    calls = [recognize(running, n, seed=i) for i, n in enumerate(good)] + [recognize(running, 6 * RATE)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for a, b in zip(baseline, results[:4], strict=True):
        assert isinstance(b, pb.RecognizeResponse), b
        np.testing.assert_allclose(scores(b), scores(a), atol=1e-4)
    poison = results[4]
    assert isinstance(poison, grpc.aio.AioRpcError)
    assert poison.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too long" in (poison.details() or "")
    assert any(len(batch) > 1 for batch in factory.entered), "nothing was batched"
    assert running.metric("emotion_batch_failures_total", retried="true") >= 1
    assert running.metric("emotion_batch_failures_total", retried="false") >= 1


async def test_a_poison_request_fails_alone(start_server: StartServer) -> None:
    factory = FaultyFactory(poison_length(RATE + 15))
    running: Running = await start_server(factory, adaptive_batching=False, max_queue_delay_ms=200.0)
    lengths = [RATE, RATE + 10, RATE + 15, RATE + 20]
    results = await asyncio.gather(*(recognize(running, n) for n in lengths), return_exceptions=True)
    assert any(RATE + 15 in batch and len(batch) > 1 for batch in factory.entered), "poison was never batched"
    for n, result in zip(lengths, results, strict=True):
        if n == RATE + 15:
            assert isinstance(result, grpc.aio.AioRpcError)
            assert result.code() == grpc.StatusCode.UNAVAILABLE
            assert "inference failed" in (result.details() or "")
        else:
            assert isinstance(result, pb.RecognizeResponse), result
    assert running.metric("emotion_batch_failures_total", retried="true") >= 1
    assert running.metric("emotion_requests_total", rpc="Recognize", code="OK") == 3
    assert running.metric("emotion_requests_total", rpc="Recognize", code="UNAVAILABLE") == 1


async def test_repeated_gpu_failures_move_to_cpu(start_server: StartServer) -> None:
    factory = FaultyFactory(always("CUDA error: an illegal memory access was encountered (injected)"),
                            fake_gpu=True)
    running: Running = await start_server(factory, providers=(CUDA, CPU), gpu_failures_before_fallback=2)
    info = await running.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.execution_provider == CUDA
    assert running.metric("emotion_execution_provider", provider=CUDA) == 1
    with pytest.raises(grpc.aio.AioRpcError) as first:
        await recognize(running, RATE)
    assert first.value.code() == grpc.StatusCode.UNAVAILABLE
    second = await recognize(running, RATE)  # second failure: fall back, rerun on the CPU session
    assert second.utterance.label
    info = await running.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.execution_provider == CPU
    assert factory.created[-1] == [CPU]
    assert running.metric("emotion_provider_fallbacks_total", from_provider=CUDA, to_provider=CPU,
                          reason="runtime_failure") == 1
    assert running.metric("emotion_execution_provider", provider=CUDA) == 0
    assert running.metric("emotion_execution_provider", provider=CPU) == 1
    third = await recognize(running, RATE)
    np.testing.assert_allclose(scores(third), scores(second), atol=1e-6)


async def test_cuda_failing_at_load_gives_cpu(start_server: StartServer) -> None:
    factory = FaultyFactory(fail_gpu_load=True)
    running: Running = await start_server(factory, providers=(CUDA, CPU))
    info = await running.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.execution_provider == CPU
    assert running.metric("emotion_provider_fallbacks_total", from_provider=CUDA, to_provider=CPU,
                          reason="unavailable_at_load") == 1
    assert (await recognize(running, RATE)).utterance.label


async def test_queue_full_is_resource_exhausted_at_once_with_a_retry_hint(start_server: StartServer) -> None:
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running: Running = await start_server(factory, max_queue_requests=1, max_batch_size=1)
    batcher = running.server.batcher
    assert batcher is not None
    try:
        a = asyncio.ensure_future(recognize(running, RATE))
        await until(lambda: len(factory.entered) == 1)  # A is running (held at the gate)
        b = asyncio.ensure_future(recognize(running, RATE + 1))
        await until(lambda: batcher.queued_requests == 1)  # B waits in the queue
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await recognize(running, RATE + 2, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailing = dict(info.value.trailing_metadata() or ())
        assert int(trailing["retry-after-ms"]) >= 1
    finally:
        gate.set()
    assert (await a).utterance.label and (await b).utterance.label
    assert running.metric("emotion_rejections_total", reason="queue_full") == 1
    assert running.metric("emotion_requests_total", rpc="Recognize", code="RESOURCE_EXHAUSTED") == 1


async def test_cancelled_call_leaves_the_queue_and_never_runs(start_server: StartServer) -> None:
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running: Running = await start_server(factory, max_batch_size=1)
    batcher = running.server.batcher
    assert batcher is not None
    try:
        a = asyncio.ensure_future(recognize(running, RATE))
        await until(lambda: len(factory.entered) == 1)
        b = running.stub.Recognize(pb.RecognizeRequest(audio=audio_of(RATE + 77)))
        await until(lambda: batcher.queued_requests == 1)
        b.cancel()
        await until(lambda: batcher.queued_requests == 0)
    finally:
        gate.set()
    assert (await a).utterance.label
    await until(lambda: running.metric("emotion_batcher_dropped_total", reason="cancelled") == 1)
    assert all(RATE + 77 not in batch for batch in factory.entered)


async def test_grpc_deadline_reaches_the_batcher(start_server: StartServer) -> None:
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    running: Running = await start_server(factory, max_batch_size=1)
    try:
        a = asyncio.ensure_future(recognize(running, RATE))
        await until(lambda: len(factory.entered) == 1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await recognize(running, RATE + 55, timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server side gave up on it too: expired in the queue (or refused as unable to finish).
        await until(lambda: running.metric("emotion_batcher_dropped_total", reason="expired")
                    + running.metric("emotion_batcher_dropped_total", reason="cancelled")
                    + running.metric("emotion_rejections_total", reason="deadline") >= 1)
    finally:
        gate.set()
    assert (await a).utterance.label
    # Positive sync point instead of a sleep: the expired request left the queue (counted above), and a
    # request sent after it has been answered, so any batch that could have held it has already run.
    assert (await recognize(running, RATE + 7)).utterance.label
    assert any(RATE + 7 in batch for batch in factory.entered)
    assert all(RATE + 55 not in batch for batch in factory.entered)
