"""Recognize, Embed and GetModelInfo against a real grpc.aio server with the real tiny ONNX model."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from emotion.v1 import emotion_pb2 as pb

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.calls.types import smooth_frames
from tests.support.audio import FORMATS, encoded_signal, espeak_ng_wav, make_signal, pcm_bytes
from tests.support.servers import Running

RATE = 16000


def raw_request(signal: np.ndarray, rate: int = RATE, encoding: str = "f32le") -> pb.Audio:
    sig = signal if signal.ndim == 2 else signal[:, None]
    enc = pb.PCM_ENCODING_F32LE if encoding == "f32le" else pb.PCM_ENCODING_S16LE
    return pb.Audio(raw=pb.RawAudio(data=pcm_bytes(sig, encoding), encoding=enc, sample_rate_hz=rate,
                                    channels=sig.shape[1]))


def expected_frames(n_samples: int) -> int:
    return (max(n_samples, 400) - 400) // 320 + 1


@pytest.mark.parametrize("fmt", sorted(FORMATS))
async def test_recognize_every_encoded_format(running: Running, manifest: ModelManifest, fmt: str) -> None:
    data = encoded_signal(fmt, duration_s=2.0, rate=44100, channels=2)
    response = await running.stub.Recognize(pb.RecognizeRequest(audio=pb.Audio(encoded=data)), timeout=30)
    # Lossy codecs add priming/padding samples; the duration stays within a few codec frames.
    assert response.duration_s == pytest.approx(2.0, abs=0.1)
    u = response.utterance
    assert [s.label for s in u.scores] == [label.name for label in manifest.labels]
    assert [s.label_zh for s in u.scores] == [label.name_zh for label in manifest.labels]
    assert sum(s.score for s in u.scores) == pytest.approx(1.0, abs=1e-4)
    top = max(u.scores, key=lambda s: s.score)
    assert (u.label, u.label_zh, u.confidence) == (top.label, top.label_zh, pytest.approx(top.score))
    assert response.model.name == manifest.model_name and response.model.untrained == manifest.untrained
    assert response.timing.batch_size >= 1
    assert response.timing.total_ms >= response.timing.inference_ms > 0
    assert response.timing.decode_ms > 0


async def test_speech_wav_from_espeak(running: Running) -> None:
    response = await running.stub.Recognize(pb.RecognizeRequest(audio=pb.Audio(encoded=espeak_ng_wav())))
    assert response.duration_s > 0.5
    assert response.utterance.label


async def test_raw_pcm_any_rate_and_channels_matches_mono_16k(running: Running) -> None:
    stereo_48k = make_signal(1.5, rate=48000, channels=2, seed=3)
    mono_16k = make_signal(1.5, rate=16000, channels=1, seed=3)
    r48 = await running.stub.Recognize(pb.RecognizeRequest(audio=raw_request(stereo_48k, 48000, "s16le")))
    r16 = await running.stub.Recognize(pb.RecognizeRequest(audio=raw_request(mono_16k, 16000, "f32le")))
    assert r48.duration_s == pytest.approx(1.5, abs=1e-3)
    assert r16.duration_s == pytest.approx(1.5, abs=1e-6)
    assert len(r48.utterance.scores) == len(r16.utterance.scores)


async def test_s16_and_f32_of_the_same_signal_agree(running: Running) -> None:
    sig = make_signal(1.0, rate=RATE, channels=1, seed=5)
    a = await running.stub.Recognize(pb.RecognizeRequest(audio=raw_request(sig, encoding="s16le")))
    b = await running.stub.Recognize(pb.RecognizeRequest(audio=raw_request(sig, encoding="f32le")))
    diff = max(abs(x.score - y.score) for x, y in zip(a.utterance.scores, b.utterance.scores, strict=True))
    assert diff < 1e-3  # 16-bit quantisation only


async def test_frames_times_and_smoothing(running: Running, manifest: ModelManifest) -> None:
    sig = make_signal(1.37, rate=RATE, channels=1, seed=1)
    audio = raw_request(sig)
    plain = await running.stub.Recognize(pb.RecognizeRequest(audio=audio, granularity=pb.GRANULARITY_FRAME))
    smooth = await running.stub.Recognize(
        pb.RecognizeRequest(audio=audio, granularity=pb.GRANULARITY_FRAME, smoothing_frames=5)
    )
    n = expected_frames(sig.shape[0])
    assert len(plain.frames) == len(smooth.frames) == n
    assert plain.frames[0].start_s == 0.0
    assert plain.frames[1].start_s == pytest.approx(0.02)
    assert plain.frames[-1].end_s <= plain.duration_s + 1e-9
    assert all(f.end_s > f.start_s for f in plain.frames)
    scores = np.array([list(f.scores) for f in plain.frames], dtype=np.float64)
    assert scores.shape == (n, len(manifest.labels))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    # Centred 5-frame mean, computed independently for an interior frame and at the edge.
    got = np.array([list(f.scores) for f in smooth.frames])
    np.testing.assert_allclose(got[10], scores[8:13].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(got[0], scores[0:3].mean(axis=0), atol=1e-5)
    assert smooth.frames[10].label == manifest.labels[int(np.argmax(got[10]))].name
    # Unsmoothed frames carry no smoothing: not equal to their neighbours' mean.
    assert not np.allclose(scores[10], scores[8:13].mean(axis=0), atol=1e-7)


def test_smooth_frames_even_window_and_identity() -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert smooth_frames(x, 1) is x
    out = smooth_frames(x, 2)  # one back, none forward
    np.testing.assert_allclose(out[3], x[2:4].mean(axis=0))
    np.testing.assert_allclose(out[0], x[0])


async def test_embedding_from_recognize_and_embed_agree(running: Running, manifest: ModelManifest) -> None:
    sig = make_signal(2.2, rate=RATE, channels=1, seed=2)
    audio = raw_request(sig)
    rec = await running.stub.Recognize(pb.RecognizeRequest(audio=audio, return_embedding=True))
    emb = await running.stub.Embed(pb.EmbedRequest(audio=audio, return_frames=True))
    assert emb.dim == manifest.embedding_dim == len(emb.embedding.values) == len(rec.embedding.values)
    np.testing.assert_allclose(rec.embedding.values, emb.embedding.values, atol=1e-5)
    assert len(emb.frames) == expected_frames(sig.shape[0])
    frames = np.array([list(f.values) for f in emb.frames])
    # The utterance embedding is the mean of the valid frame features (DESIGN.md).
    np.testing.assert_allclose(frames.mean(axis=0), emb.embedding.values, atol=1e-4)
    no_frames = await running.stub.Embed(pb.EmbedRequest(audio=audio))
    assert len(no_frames.frames) == 0
    assert len(rec.frames) == 0  # utterance granularity by default


async def test_get_model_info(running: Running, manifest: ModelManifest) -> None:
    info = await running.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.model.name == manifest.model_name
    assert info.model.version == manifest.model_version
    assert [(lb.index, lb.label, lb.label_zh) for lb in info.labels] == [
        (lb.index, lb.name, lb.name_zh) for lb in manifest.labels
    ]
    assert info.sample_rate_hz == 16000 and info.frame_rate_hz == 50
    assert info.embedding_dim == manifest.embedding_dim
    assert info.execution_provider == "CPUExecutionProvider"
    assert (info.min_duration_s, info.max_duration_s) == (0.1, 20.0)
    assert list(info.warnings) == []  # a generated model promises no nine emotions (see test_label_warnings)


BAD_INPUTS = [
    ("no audio", pb.Audio(), "no audio"),
    ("empty bytes", pb.Audio(encoded=b""), "empty"),
    ("garbage", pb.Audio(encoded=b"this is not audio at all" * 10), "could not decode"),
    ("truncated wav", pb.Audio(encoded=encoded_signal("wav")[:30]), "audio"),
    ("too short", None, "too short"),
    ("too long", None, "too long"),
    ("nan", None, "NaN"),
    ("no encoding", pb.Audio(raw=pb.RawAudio(data=b"\0\0" * 8000, sample_rate_hz=16000)), "encoding"),
    ("no rate",
     pb.Audio(raw=pb.RawAudio(data=b"\0\0" * 8000, encoding=pb.PCM_ENCODING_S16LE)), "sample_rate"),
    ("absurd rate",
     pb.Audio(raw=pb.RawAudio(data=b"\0\0" * 8000, encoding=pb.PCM_ENCODING_S16LE, sample_rate_hz=5)),
     "sample rate"),
    ("odd bytes",
     pb.Audio(raw=pb.RawAudio(data=b"\0" * 8001, encoding=pb.PCM_ENCODING_S16LE, sample_rate_hz=16000)),
     "whole number"),
]


def _bad_audio(name: str, audio: pb.Audio | None) -> pb.Audio:
    if audio is not None:
        return audio
    if name == "too short":
        return raw_request(make_signal(0.05, rate=RATE)[:, 0])
    if name == "too long":  # beyond --max-audio-s (60 s here); 20-60 s would be segmented
        return raw_request(make_signal(61.0, rate=8000)[:, 0], rate=8000, encoding="s16le")
    sig = make_signal(1.0, rate=RATE)[:, 0].copy()
    sig[100] = np.nan
    return raw_request(sig)


@pytest.mark.parametrize(("name", "audio", "needle"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_is_invalid_argument_with_a_clear_message(
    running: Running, name: str, audio: pb.Audio | None, needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.stub.Recognize(pb.RecognizeRequest(audio=_bad_audio(name, audio)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle.lower() in (info.value.details() or "").lower()
    with pytest.raises(grpc.aio.AioRpcError) as info2:
        await running.stub.Embed(pb.EmbedRequest(audio=_bad_audio(name, audio)))
    assert info2.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_bad_requests_do_not_disturb_good_ones(running: Running) -> None:
    good = raw_request(make_signal(1.0, rate=RATE, seed=9)[:, 0])
    alone = await running.stub.Recognize(pb.RecognizeRequest(audio=good))
    bad = pb.Audio(encoded=b"garbage" * 100)
    calls = [running.stub.Recognize(pb.RecognizeRequest(audio=good if i % 2 else bad)) for i in range(8)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, pb.RecognizeResponse)
            assert [s.score for s in result.utterance.scores] == pytest.approx(
                [s.score for s in alone.utterance.scores], abs=1e-4)
        else:
            assert isinstance(result, grpc.aio.AioRpcError)
            assert result.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_message_over_the_size_limit_is_refused(start_server: object) -> None:
    running: Running = await start_server(max_message_bytes=100_000)  # type: ignore[operator]
    data = np.zeros(200_000, np.uint8).tobytes()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.stub.Recognize(pb.RecognizeRequest(audio=pb.Audio(encoded=data)))
    # The envelope allowance lets the decoder's own byte limit answer first, with a clear message.
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    huge = np.zeros(400_000, np.uint8).tobytes()
    with pytest.raises(grpc.aio.AioRpcError) as info2:
        await running.stub.Recognize(pb.RecognizeRequest(audio=pb.Audio(encoded=huge)))
    assert info2.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
