"""Retries against a server that sheds load.

The shedding server is a real gRPC server placed in front of the real model server: it refuses the first
N calls with RESOURCE_EXHAUSTED (or UNAVAILABLE) and a ``retry-after-ms`` hint, then forwards calls to
the real server. What is under test is the client's retry loop, so scripting the refusals is legitimate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from emotion.v1 import emotion_pb2_grpc

from emotion2vec_serving.clients import (
    NO_RETRY,
    AsyncEmotionClient,
    DeadlineExceeded,
    EmotionClient,
    InvalidAudio,
    Overloaded,
    RetryPolicy,
    StreamSummary,
    Unauthenticated,
    Unavailable,
)
from emotion2vec_serving.clients.errors import retry_after_s
from tests.support.clients import AudioSet, SheddingProxy, running_server


@pytest.fixture(scope="module")
def proxy(target: str) -> Iterator[tuple[SheddingProxy, str]]:
    servicer = SheddingProxy(target)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    emotion_pb2_grpc.add_EmotionRecognizerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
        servicer.close()


FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.02, max_backoff_s=0.1, jitter=0.0)


def test_overloaded_calls_are_retried_until_admitted(
    proxy: tuple[SheddingProxy, str], audio: AudioSet
) -> None:
    shed, address = proxy
    shed.reset(refuse=2)
    with EmotionClient(address, retry=FAST) as client:
        result = client.recognize(audio.wav)
    assert shed.calls == 3  # two refusals, then forwarded to the real server
    assert result.label in result.scores and result.model.untrained
    gaps = [b - a for a, b in zip(shed.call_times, shed.call_times[1:], strict=False)]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04  # exponential backoff between attempts


def test_unavailable_is_retried_too(proxy: tuple[SheddingProxy, str], audio: AudioSet) -> None:
    shed, address = proxy
    shed.reset(refuse=1, code=grpc.StatusCode.UNAVAILABLE)
    with EmotionClient(address, retry=FAST) as client:
        assert client.embed(audio.ogg).dim > 0
    assert shed.calls == 2


def test_gives_up_after_max_attempts_with_the_server_message(
    proxy: tuple[SheddingProxy, str], audio: AudioSet
) -> None:
    shed, address = proxy
    shed.reset(refuse=100, retry_after_ms=10)
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01)
    with EmotionClient(address, retry=policy) as client, pytest.raises(Overloaded) as refused:
        client.recognize(audio.wav)
    assert shed.calls == 3
    assert "scripted refusal 3" in refused.value.message
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.retry_after_s == pytest.approx(0.010)


def test_no_retry_policy_fails_at_once(proxy: tuple[SheddingProxy, str], audio: AudioSet) -> None:
    shed, address = proxy
    shed.reset(refuse=1, code=grpc.StatusCode.UNAVAILABLE)
    with EmotionClient(address, retry=NO_RETRY) as client, pytest.raises(Unavailable):
        client.model_info()
    assert shed.calls == 1


def test_retry_after_hint_is_honoured(proxy: tuple[SheddingProxy, str], audio: AudioSet) -> None:
    shed, address = proxy
    shed.reset(refuse=1, retry_after_ms=300)
    with EmotionClient(address, retry=FAST) as client:
        client.recognize(audio.ogg)
    assert shed.calls == 2
    assert shed.call_times[1] - shed.call_times[0] >= 0.3  # not the 20 ms backoff: the server's hint


def test_retries_stop_at_the_deadline(proxy: tuple[SheddingProxy, str], audio: AudioSet) -> None:
    shed, address = proxy
    shed.reset(refuse=100, retry_after_ms=5000)
    started = time.monotonic()
    with EmotionClient(address, retry=FAST) as client, pytest.raises(Overloaded):
        client.recognize(audio.ogg, timeout=1.0)
    assert time.monotonic() - started < 1.0  # the 5 s hint would overrun the deadline: no retry made
    assert shed.calls == 1


def test_deadline_exceeded_is_not_retried(proxy: tuple[SheddingProxy, str], audio: AudioSet) -> None:
    shed, address = proxy
    shed.reset(refuse=0, delay_s=0.5)
    with EmotionClient(address, retry=FAST) as client, pytest.raises(DeadlineExceeded):
        client.recognize(audio.ogg, timeout=0.2)
    assert shed.calls == 1


def test_invalid_argument_is_not_retried(proxy: tuple[SheddingProxy, str]) -> None:
    shed, address = proxy
    shed.reset(refuse=0)
    with EmotionClient(address, retry=FAST) as client, pytest.raises(InvalidAudio):
        client.recognize(b"definitely not audio" * 20)
    assert shed.calls == 1  # forwarded once; the real server's INVALID_ARGUMENT is final


def test_token_is_sent_as_bearer_metadata(proxy: tuple[SheddingProxy, str]) -> None:
    shed, address = proxy
    shed.reset(refuse=0)
    with EmotionClient(address, token="s3cret", retry=FAST) as client:
        client.model_info()
    assert shed.metadata[0].get("authorization") == "Bearer s3cret"


def test_unauthenticated_maps_to_its_exception(proxy: tuple[SheddingProxy, str]) -> None:
    shed, address = proxy
    shed.reset(refuse=1, code=grpc.StatusCode.UNAUTHENTICATED)
    with EmotionClient(address, retry=FAST) as client, pytest.raises(Unauthenticated, match="scripted"):
        client.model_info()
    assert shed.calls == 1


def test_stream_is_retried_before_its_first_result(proxy: tuple[SheddingProxy, str], audio: AudioSet) -> None:
    shed, address = proxy
    shed.reset(refuse=1)
    with EmotionClient(address, retry=FAST) as client:
        items = list(client.stream(audio.ogg))
    assert shed.calls == 2
    assert isinstance(items[-1], StreamSummary)


async def test_async_client_retries(proxy: tuple[SheddingProxy, str], audio: AudioSet) -> None:
    shed, address = proxy
    shed.reset(refuse=2, retry_after_ms=50)
    async with AsyncEmotionClient(address, retry=FAST) as client:
        result = await client.recognize(audio.wav)
    assert shed.calls == 3 and result.label in result.scores
    assert shed.call_times[2] - shed.call_times[0] >= 0.1
    shed.reset(refuse=100)
    async with AsyncEmotionClient(
        address, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01)
    ) as client:
        with pytest.raises(Overloaded):
            await client.model_info()
    assert shed.calls == 2


def test_real_server_sheds_with_a_tiny_queue_and_the_client_recovers(
    model_repo: Path, audio: AudioSet, tmp_path: Path
) -> None:
    """The real server with a one-request queue: a burst overflows it; with retries every call succeeds."""
    extra = ("--max-queue-requests", "1", "--max-batch-size", "1", "--no-warmup")
    with running_server(model_repo, tmp_path / "server.log", *extra, metrics=False) as shedding_server:
        shedding_target = shedding_server.target
        payload = audio.wav.read_bytes()
        with EmotionClient(shedding_target, retry=NO_RETRY) as bare, futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(lambda _: _try(bare, payload), range(16)))
        assert any(isinstance(o, Overloaded) for o in outcomes), "the burst never overflowed the queue"
        assert all(o is None or isinstance(o, Overloaded) for o in outcomes)
        patient = RetryPolicy(max_attempts=50, initial_backoff_s=0.01, max_backoff_s=0.2, jitter=0.5)
        with (
            EmotionClient(shedding_target, retry=patient, timeout_s=60) as client,
            futures.ThreadPoolExecutor(8) as pool,
        ):
            results = list(pool.map(lambda _: client.recognize(payload), range(16)))
        assert len({tuple(r.scores.items()) for r in results}) == 1  # same input, same answer


def _try(client: EmotionClient, payload: bytes) -> Exception | None:
    try:
        client.recognize(payload)
    except Overloaded as exc:
        return exc
    return None


def test_backoff_schedule_and_hint_parsing() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, multiplier=2.0, max_backoff_s=0.5, jitter=0.2)
    rng = random.Random(7)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        for _ in range(50):
            assert base * 0.8 <= policy.backoff_s(attempt, None, rng) <= base * 1.2
    assert policy.backoff_s(1, 3.0, rng) == 3.0  # the hint is a floor
    assert policy.backoff_s(1, 60.0, rng) == policy.max_retry_after_s  # ...capped
    assert retry_after_s([("retry-after-ms", "250")]) == 0.25
    assert retry_after_s([("other", "1"), ("retry-after-ms", b"40")]) == 0.04
    assert retry_after_s([("retry-after-ms", "soon")]) is None
    assert retry_after_s(None) is None
    assert not policy.should_retry(grpc.StatusCode.INVALID_ARGUMENT, 1)
    assert policy.should_retry(grpc.StatusCode.RESOURCE_EXHAUSTED, 3)
    assert not policy.should_retry(grpc.StatusCode.RESOURCE_EXHAUSTED, 4)
