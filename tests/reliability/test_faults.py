"""Runner faults injected under concurrent load: a poison request, out-of-memory, GPU loss, hung runs.

Faults come from the runner's session factory (tests/support/faults.py): the real ONNX Runtime session
wrapped to fail or block, so every successful run is still the real model.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import grpc.aio
import numpy as np
from emotion.v1 import emotion_pb2 as pb

from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, CUDA_PROVIDER
from tests.support.calls import raw_request, scores, tone
from tests.support.faults import FaultyFactory, HangRuns, always, oom_above, poison_length
from tests.support.polling import wait_until_async
from tests.support.servers import Running, StartServer


async def _outcome(call: Any) -> tuple[str, str, Any]:
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or "", None
    return "OK", "", response


async def _batched(running: Running, gate: threading.Event, requests: list[pb.RecognizeRequest]) -> list[Any]:
    """Holds the runner on a blocker, queues ``requests`` behind it so they form one batch, releases."""
    blocker = asyncio.ensure_future(_outcome(running.stub.Recognize(raw_request(tone(0.2)), timeout=30)))
    batcher = running.server.batcher
    assert batcher is not None
    await wait_until_async(lambda: batcher.queued_requests == 0 and bool(batcher._running))
    calls = [asyncio.ensure_future(_outcome(running.stub.Recognize(r, timeout=30))) for r in requests]
    await wait_until_async(lambda: batcher.queued_requests == len(requests))
    gate.set()
    assert (await blocker)[0] == "OK"
    return list(await asyncio.gather(*calls))


def _requests(lengths: list[int]) -> list[pb.RecognizeRequest]:
    return [raw_request(tone(n / 16000, seed=n)) for n in lengths]


async def _alone(start_server: StartServer, requests: list[pb.RecognizeRequest]) -> list[np.ndarray]:
    clean: Running = await start_server()
    return [scores(await clean.stub.Recognize(r, timeout=30)) for r in requests]


async def test_a_poison_request_fails_alone_and_its_batch_mates_succeed(start_server: StartServer) -> None:
    lengths = [8000, 9600, 11200, 12800]
    poison = 9600
    requests = _requests(lengths)
    expected = await _alone(start_server, requests)
    gate = threading.Event()
    factory = FaultyFactory(fault=poison_length(poison), gate=gate)
    running: Running = await start_server(session_factory=factory, max_batch_size=4, adaptive_batching=False)
    results = await _batched(running, gate, requests)
    for n, (code, details, response), want in zip(lengths, results, expected, strict=True):
        if n == poison:
            assert code == "UNAVAILABLE" and "inference failed" in details, (code, details)
        else:
            assert code == "OK", (n, code, details)
            np.testing.assert_allclose(scores(response), want, atol=1e-4)
    # The poison really shared a batch with healthy requests (the batcher picks the grouping by length).
    assert any(poison in batch and len(batch) > 1 for batch in factory.batches), factory.batches
    assert running.metric("emotion_batch_failures_total", retried="true") >= 1
    assert running.metric("emotion_batch_failures_total", retried="false") == 1  # the poison, alone
    assert running.metric("emotion_requests_total", rpc="Recognize", code="UNAVAILABLE") == 1


async def test_out_of_memory_splits_the_batch_until_it_fits(start_server: StartServer) -> None:
    lengths = [16000, 14400, 12800, 11200]
    requests = _requests(lengths)
    expected = await _alone(start_server, requests)
    gate = threading.Event()
    factory = FaultyFactory(fault=oom_above(2 * 16000), gate=gate)
    running: Running = await start_server(session_factory=factory, max_batch_size=4, adaptive_batching=False)
    results = await _batched(running, gate, requests)
    for (code, details, response), want in zip(results, expected, strict=True):
        assert code == "OK", (code, details)
        np.testing.assert_allclose(scores(response), want, atol=1e-4)
    assert running.metric("emotion_batch_failures_total", retried="true") >= 1
    assert running.metric("emotion_batch_failures_total", retried="false") == 0
    # A single item that can never fit gets a clear RESOURCE_EXHAUSTED, and the server carries on.
    code, details, _ = await _outcome(running.stub.Recognize(raw_request(tone(3.0)), timeout=30))
    assert code == "RESOURCE_EXHAUSTED" and "memory" in details, (code, details)
    code, _, _ = await _outcome(running.stub.Recognize(raw_request(tone(1.0)), timeout=30))
    assert code == "OK"


async def test_gpu_provider_loss_moves_to_cpu_and_keeps_serving(start_server: StartServer) -> None:
    factory = FaultyFactory(
        fault=always("CUDA failure 999: unspecified launch failure (injected)"), fake_gpu=True
    )
    running: Running = await start_server(
        session_factory=factory,
        providers=(CUDA_PROVIDER, CPU_PROVIDER),
        gpu_failures_before_fallback=2,
    )
    info = await running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.execution_provider == CUDA_PROVIDER
    request = raw_request(tone(0.5))
    first = await _outcome(running.stub.Recognize(request, timeout=30))
    assert first[0] == "UNAVAILABLE" and "inference failed" in first[1], first
    # The second consecutive failure crosses the threshold: the runner moves to CPU and reruns the batch.
    outcomes = await asyncio.gather(
        *(_outcome(running.stub.Recognize(request, timeout=30)) for _ in range(6))
    )
    assert [o[0] for o in outcomes] == ["OK"] * 6, outcomes
    info = await running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.execution_provider == CPU_PROVIDER
    assert (
        running.metric(
            "emotion_provider_fallbacks_total",
            from_provider=CUDA_PROVIDER,
            to_provider=CPU_PROVIDER,
            reason="runtime_failure",
        )
        == 1
    )
    assert running.metric("emotion_execution_provider", provider=CPU_PROVIDER) == 1
    assert running.metric("emotion_execution_provider", provider=CUDA_PROVIDER) == 0


async def test_a_hung_run_is_cut_off_by_a_watchdog_and_others_keep_being_served(
    start_server: StartServer,
) -> None:
    hang = HangRuns(which=frozenset({1}))
    running: Running = await start_server(session_factory=FaultyFactory(hang=hang), runner_instances=1,
                                          run_timeout_s=1.0)
    try:
        stuck = asyncio.ensure_future(_outcome(running.stub.Recognize(raw_request(tone(0.5)), timeout=30)))
        await wait_until_async(lambda: hang.calls == 1)
        # The only runner instance is blocked; the watchdog terminates the run and frees it within ~1 s.
        later = await _outcome(running.stub.Recognize(raw_request(tone(0.5)), timeout=3))
        assert later[0] == "OK", later
        code, details, _ = await stuck
        assert code == "UNAVAILABLE" and "run timeout" in details, (code, details)
        assert hang.terminated == 1
        assert running.metric("emotion_run_timeouts_total") == 1
    finally:
        hang.release.set()


async def test_a_request_that_always_hangs_fails_alone_and_its_batch_mates_succeed(
    start_server: StartServer,
) -> None:
    lengths = [8000, 9600, 11200, 12800]
    poison = 11200
    requests = _requests(lengths)
    expected = await _alone(start_server, requests)
    gate = threading.Event()
    hang = HangRuns(which=frozenset(), lengths=frozenset({poison}))
    factory = FaultyFactory(gate=gate, hang=hang)
    running: Running = await start_server(session_factory=factory, max_batch_size=4, adaptive_batching=False,
                                          run_timeout_s=1.0)
    try:
        results = await _batched(running, gate, requests)
    finally:
        hang.release.set()
    for n, (code, details, response), want in zip(lengths, results, expected, strict=True):
        if n == poison:
            assert code == "UNAVAILABLE" and "run timeout" in details, (code, details)
        else:
            assert code == "OK", (n, code, details)
            np.testing.assert_allclose(scores(response), want, atol=1e-4)
    # The batcher split the batch in halves until the poison ran alone: each hang was cut off.
    assert any(poison in batch and len(batch) > 1 for batch in factory.entered), factory.entered
    timeouts = running.metric("emotion_run_timeouts_total")
    assert timeouts == hang.terminated >= 2, (timeouts, hang.terminated)
    assert running.metric("emotion_batch_failures_total", retried="false") == 1  # the poison, alone
