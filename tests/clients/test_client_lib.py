"""The sync and asyncio clients against a real server process serving the tiny model."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import numpy as np
import pytest

from emotion2vec_serving.clients import (
    NO_RETRY,
    AsyncEmotionClient,
    EmotionClient,
    InvalidAudio,
    RetryPolicy,
    Segment,
    Segmentation,
    StreamSummary,
    Unavailable,
)
from tests.support.clients import SR, AudioSet, free_port


@pytest.fixture(scope="module")
def client(target: str) -> EmotionClient:
    with EmotionClient(target, timeout_s=30) as c:
        yield c


def _check_distribution(scores: dict[str, float], label: str, confidence: float, labels: list[str]) -> None:
    assert list(scores) == labels  # every label, in model order
    assert math.isclose(sum(scores.values()), 1.0, abs_tol=1e-4)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert label == max(scores, key=lambda k: scores[k])
    assert confidence == pytest.approx(scores[label])


def test_health_and_model_info(client: EmotionClient) -> None:
    assert client.health() == "SERVING"
    assert client.health("") == "SERVING"
    info = client.model_info()
    assert info.model.name == "emotion2vec_tiny_random" or info.model.untrained
    assert info.sample_rate_hz == SR and info.frame_rate_hz == 50
    assert [label.index for label in info.labels] == list(range(len(info.labels)))
    assert info.embedding_dim > 0 and info.execution_provider.endswith("ExecutionProvider")


def test_recognize_path_bytes_and_array_agree(client: EmotionClient, audio: AudioSet) -> None:
    labels = [label.name for label in client.model_info().labels]
    from_path = client.recognize(audio.wav)
    from_bytes = client.recognize(audio.wav.read_bytes())
    from_array = client.recognize(audio.wav_samples, sample_rate=SR)
    for r in (from_path, from_bytes, from_array):
        _check_distribution(r.scores, r.label, r.confidence, labels)
        assert r.duration_s == pytest.approx(6.0, abs=0.01)
        assert r.frames == () and r.embedding is None
        assert r.timing.total_ms > 0 and r.timing.batch_size >= 1
        assert r.model.untrained
    assert from_bytes.scores == from_path.scores  # same bytes on the wire
    # Raw float PCM of the decoded file: the same samples, so the same scores up to float noise.
    for name in labels:
        assert from_array.scores[name] == pytest.approx(from_path.scores[name], abs=1e-4)


def test_recognize_int16_and_stereo_arrays(client: EmotionClient, audio: AudioSet) -> None:
    as_float = client.recognize(audio.wav_samples, sample_rate=SR)
    as_int16 = client.recognize(np.round(audio.wav_samples * 32768).astype(np.int16), sample_rate=SR)
    stereo = client.recognize(np.stack([audio.wav_samples, audio.wav_samples], axis=1), sample_rate=SR)
    for name, score in as_float.scores.items():
        assert as_int16.scores[name] == pytest.approx(score, abs=1e-3)
        assert stereo.scores[name] == pytest.approx(score, abs=1e-4)  # downmix of equal channels


def test_recognize_frames_and_embedding(client: EmotionClient, audio: AudioSet) -> None:
    info = client.model_info()
    r = client.recognize(audio.wav, granularity="frame", embedding=True)
    expected_frames = (len(audio.wav_samples) - 400) // 320 + 1
    assert len(r.frames) == expected_frames
    starts = np.array([f.start_s for f in r.frames])
    assert np.allclose(np.diff(starts), 0.02, atol=1e-6)
    assert r.frame_scores.shape == (expected_frames, len(info.labels))
    assert np.allclose(r.frame_scores.sum(axis=1), 1.0, atol=1e-4)
    for f in r.frames[:: max(1, len(r.frames) // 10)]:
        assert f.label == max(f.scores, key=lambda k: f.scores[k])
    assert r.embedding is not None and r.embedding.shape == (info.embedding_dim,)
    assert r.embedding.dtype == np.float32 and np.isfinite(r.embedding).all()


def test_embed_is_the_mean_of_frame_embeddings(client: EmotionClient, audio: AudioSet) -> None:
    info = client.model_info()
    e = client.embed(audio.flac, frames=True)
    assert e.dim == info.embedding_dim and e.embedding.shape == (e.dim,)
    assert e.frames is not None and e.frames.shape[1] == e.dim
    assert e.frames.shape[0] == (round(4.0 * SR) - 400) // 320 + 1  # resampled 44.1 kHz -> 16 kHz
    np.testing.assert_allclose(e.frames.mean(axis=0), e.embedding, atol=1e-4)
    same = client.recognize(audio.flac, embedding=True)
    assert same.embedding is not None
    np.testing.assert_allclose(same.embedding, e.embedding, atol=1e-5)


def test_invalid_audio_carries_the_server_message(client: EmotionClient, audio: AudioSet) -> None:
    with pytest.raises(InvalidAudio) as bad:
        client.recognize(b"this is not an audio file at all" * 10)
    assert bad.value.message  # the server's explanation, not just a status code
    with pytest.raises(InvalidAudio):
        client.recognize(np.zeros(SR // 100, dtype=np.float32), sample_rate=SR)  # 10 ms: too short
    with pytest.raises(ValueError, match="sample_rate"):
        client.recognize(audio.wav_samples)  # array without its rate: refused before any call


def test_unreachable_server_is_unavailable_after_retries() -> None:
    dead = f"127.0.0.1:{free_port()}"
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.2, multiplier=2.0, jitter=0.0)
    with EmotionClient(dead, retry=policy, timeout_s=10) as c:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            c.health()
        assert time.monotonic() - started >= 0.2 + 0.4  # two backoffs: the retries happened
    with EmotionClient(dead, retry=NO_RETRY, timeout_s=10) as c:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            c.model_info()
        assert time.monotonic() - started < 0.6


def test_stream_file_yields_segments_then_summary(client: EmotionClient, audio: AudioSet) -> None:
    items = list(client.stream(audio.wav, chunk_ms=100))
    segments = [i for i in items if isinstance(i, Segment)]
    assert isinstance(items[-1], StreamSummary) and len(segments) == len(items) - 1
    summary = items[-1]
    assert [s.segment_id for s in segments] == list(range(len(segments)))
    assert summary.segments == len(segments) >= 1
    assert summary.duration_s == pytest.approx(6.0, abs=0.05)
    for s in segments:
        assert 0 <= s.start_s < s.end_s <= summary.duration_s + 1e-6
        assert math.isclose(sum(s.scores.values()), 1.0, abs_tol=1e-4)
    assert all(a.end_s <= b.start_s + 1e-6 for a, b in itertools.pairwise(segments))


def test_stream_array_fixed_windows(client: EmotionClient, audio: AudioSet) -> None:
    items = list(
        client.stream(
            audio.wav_samples,
            sample_rate=SR,
            segmentation=Segmentation(mode="fixed", window_s=2.0, hop_s=2.0),
            chunk_ms=250,
            embedding=True,
        )
    )
    segments = [i for i in items if isinstance(i, Segment)]
    assert [(s.start_s, s.end_s) for s in segments] == [
        pytest.approx((0.0, 2.0)),
        pytest.approx((2.0, 4.0)),
        pytest.approx((4.0, 6.0)),
    ]
    dim = client.model_info().embedding_dim
    assert all(s.embedding is not None and s.embedding.shape == (dim,) for s in segments)
    assert isinstance(items[-1], StreamSummary) and items[-1].segments == 3


async def test_async_client_concurrent_calls_match_sync(target: str, audio: AudioSet) -> None:
    files = [audio.wav, audio.flac, audio.mp3, audio.ogg]
    with EmotionClient(target) as sync_client:
        expected = [sync_client.recognize(f).scores for f in files]
    async with AsyncEmotionClient(target) as c:
        assert await c.health() == "SERVING"
        results = await asyncio.gather(*(c.recognize(f) for f in files))
        for got, want in zip(results, expected, strict=True):
            for name, score in want.items():
                assert got.scores[name] == pytest.approx(score, abs=1e-4)  # batched with others: same answer
        e = await c.embed(audio.ogg, frames=True)
        assert e.frames is not None and e.frames.shape[1] == e.dim
        info = await c.model_info()
        assert len(info.labels) == len(results[0].scores)


async def test_async_stream_accepts_an_async_iterator(target: str, audio: AudioSet) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        step = SR // 10
        for i in range(0, len(audio.wav_samples), step):
            yield audio.wav_samples[i : i + step]

    async with AsyncEmotionClient(target) as c:
        items = [item async for item in c.stream(chunks(), sample_rate=SR)]
    assert isinstance(items[-1], StreamSummary)
    assert items[-1].duration_s == pytest.approx(6.0, abs=0.05)
    assert items[-1].segments == len(items) - 1
