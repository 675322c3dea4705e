"""Channel splitting through emotion.v1 (issue 21), against a real server process and the light client.

Each channel of a stereo recording answered with ``channels="split"`` must equal ``Recognize``/``Embed`` of
that channel extracted alone as a mono file (scores within 1e-5): short channels (one pass) and long ones
(segmented per channel). A mono file split is one channel; more than 8 channels, or more names than
channels, is INVALID_ARGUMENT; one bad channel fails its call and no other.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from emotion2vec_serving.clients import EmotionClient, InvalidAudio
from emotion2vec_serving.server.process import ServerProcess
from tests.support.audio import make_signal
from tests.support.longform import recording
from tests.support.servers import server_process

RATE = 44100


def _file(signal: np.ndarray, fmt: str = "WAV", rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, signal, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _stereo(duration_s: float = 3.0) -> np.ndarray:
    """Two channels that differ: tones (seed 0) and other tones at half the level with noise (seed 1)."""
    left = make_signal(duration_s, RATE, 1, seed=0)[:, 0]
    right = 0.5 * make_signal(duration_s, RATE, 1, seed=1)[:, 0]
    right += np.random.default_rng(2).normal(0, 0.02, right.size).astype(np.float32)
    return np.stack([left, right], axis=1)


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    # One pass up to 4 s, so an 11 s recording is long (segmented per channel); up to 60 s per call.
    with server_process(tiny_repo, "--max-duration-s", "4", "--max-audio-s", "60",
                        "--min-duration-s", "0.1") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[EmotionClient]:
    with EmotionClient(server.target, timeout_s=120.0) as c:
        yield c


def _same_recognition(got: object, ref: object) -> None:
    """A channel's result against Recognize of that channel as a mono file."""
    assert got.label == ref.label  # type: ignore[attr-defined]
    np.testing.assert_allclose(list(got.scores.values()), list(ref.scores.values()), atol=1e-5)  # type: ignore[attr-defined]
    assert got.duration_s == pytest.approx(ref.duration_s, abs=1e-9)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got.frame_scores, ref.frame_scores, atol=1e-5)  # type: ignore[attr-defined]
    assert got.embedding is not None and ref.embedding is not None  # type: ignore[attr-defined]
    np.testing.assert_allclose(got.embedding, ref.embedding, atol=1e-5)  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_split_channels_equal_each_channel_alone(client: EmotionClient, fmt: str) -> None:
    signal = _stereo()
    data = _file(signal, fmt)
    split = client.recognize(data, channels="split", channel_names=("agent", "customer"),
                             granularity="frame", embedding=True)
    assert [(c.channel, c.name) for c in split.channels] == [(0, "agent"), (1, "customer")]
    # With split the top-level utterance is empty; duration and model stay filled.
    assert split.label == "" and split.scores == {} and split.embedding is None
    assert split.duration_s == pytest.approx(3.0, abs=1e-3) and split.model.name
    for ch in split.channels:
        alone = client.recognize(_file(signal[:, ch.channel], fmt), granularity="frame", embedding=True)
        _same_recognition(ch, alone)
        assert ch.frames and ch.labels == alone.labels
    # The two channels really differ, and mixing (the default) still answers one mixed result.
    assert not np.allclose(list(split.channels[0].scores.values()), list(split.channels[1].scores.values()),
                           atol=1e-4)
    mixed = client.recognize(data)
    assert mixed.channels == () and mixed.label


def test_long_channels_are_segmented_each_as_a_mono_file(client: EmotionClient) -> None:
    rate = 16000
    left = recording(11.0).samples
    right = recording(11.0, gaps_s=(0.3, 2.0), lead_s=1.5).samples
    stereo = np.stack([left, right], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, rate, format="WAV", subtype="PCM_16")
    split = client.recognize(buf.getvalue(), channels="split", granularity="frame", embedding=True)
    assert len(split.channels) == 2
    for ch, samples in zip(split.channels, (left, right), strict=True):
        mono = io.BytesIO()
        sf.write(mono, samples, rate, format="WAV", subtype="PCM_16")
        alone = client.recognize(mono.getvalue(), granularity="frame", embedding=True)
        assert len(alone.segments) > 1  # long: segmented
        assert [(s.start_s, s.end_s) for s in ch.segments] == [(s.start_s, s.end_s) for s in alone.segments]
        for seg, ref in zip(ch.segments, alone.segments, strict=True):
            np.testing.assert_allclose(list(seg.scores.values()), list(ref.scores.values()), atol=1e-5)
        _same_recognition(ch, alone)
        assert ch.voiced_s == pytest.approx(alone.voiced_s)
    assert split.channels[0].segments != split.channels[1].segments


def test_embed_split_equals_each_channel_alone(client: EmotionClient) -> None:
    signal = _stereo(2.0)
    split = client.embed(_file(signal), channels="split", channel_names=("agent",), frames=True)
    assert [(c.channel, c.name) for c in split.channels] == [(0, "agent"), (1, "")]
    assert split.embedding.size == 0 and split.dim > 0
    for ch in split.channels:
        alone = client.embed(_file(signal[:, ch.channel]), frames=True)
        np.testing.assert_allclose(ch.embedding, alone.embedding, atol=1e-5)
        assert ch.frames is not None and alone.frames is not None
        np.testing.assert_allclose(ch.frames, alone.frames, atol=1e-5)
        assert ch.duration_s == pytest.approx(alone.duration_s)


def test_mono_and_raw_pcm(client: EmotionClient) -> None:
    signal = _stereo(1.5)
    mono = client.recognize(_file(signal[:, 0]), channels="split", channel_names=["only"])
    assert [(c.channel, c.name) for c in mono.channels] == [(0, "only")]
    assert mono.channels[0].scores == pytest.approx(client.recognize(_file(signal[:, 0])).scores, abs=1e-5)
    # Interleaved raw PCM at 16 kHz, three channels: each equals that channel sent as mono PCM.
    pcm = make_signal(1.5, 16000, 3, seed=4)
    split = client.recognize(pcm, sample_rate=16000, channels="split")
    assert len(split.channels) == 3
    for ch in split.channels:
        alone = client.recognize(np.ascontiguousarray(pcm[:, ch.channel]), sample_rate=16000)
        assert ch.scores == pytest.approx(alone.scores, abs=1e-5)


def test_refusals(server: ServerProcess, client: EmotionClient) -> None:
    nine = make_signal(1.0, 16000, 9, seed=5)
    with pytest.raises(InvalidAudio, match=r"9 channels.*at most 8"):
        client.recognize(_file(nine, rate=16000), channels="split")
    with pytest.raises(InvalidAudio, match=r"9 channels.*at most 8"):
        client.embed(nine, sample_rate=16000, channels="split")
    assert client.recognize(_file(nine, rate=16000)).label  # mixing keeps today's limit (32 channels)
    with pytest.raises(InvalidAudio, match="3 channel names given but the recording has 2"):
        client.recognize(_file(_stereo(1.0)), channels="split", channel_names=("a", "b", "c"))
    with grpc.insecure_channel(server.target) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        audio = emotion_pb2.Audio(encoded=_file(_stereo(1.0)))
        for request, message in (
            (emotion_pb2.RecognizeRequest(audio=audio, channel_mode=7), "unknown channel_mode 7"),
            (emotion_pb2.RecognizeRequest(audio=audio, channel_names=["a"]), "needs channel_mode"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.Recognize(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (info.value.details() or "")


def test_a_bad_channel_fails_its_call_only(client: EmotionClient) -> None:
    """Raw f32le stereo whose second channel holds a NaN: INVALID_ARGUMENT, while a good split call sent at
    the same time is answered."""
    bad = make_signal(2.0, 16000, 2, seed=6)
    bad[1000, 1] = np.nan
    good_data = _file(_stereo(2.0))
    answers: list[object] = []

    def good() -> None:
        answers.append(client.recognize(good_data, channels="split"))

    thread = threading.Thread(target=good)
    thread.start()
    with pytest.raises(InvalidAudio, match="NaN"):
        client.recognize(bad, sample_rate=16000, channels="split")
    thread.join(60)
    assert len(answers) == 1 and len(answers[0].channels) == 2  # type: ignore[attr-defined]
