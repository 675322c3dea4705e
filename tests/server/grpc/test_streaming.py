"""StreamRecognize against a real server: segmentation, ordering, summary, malformed streams, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np
import pytest
from emotion.v1 import emotion_pb2 as pb

from tests.support.audio import make_signal, pcm_bytes, tone_bursts
from tests.support.polling import wait_until_async
from tests.support.servers import Running, StartServer

RATE = 16000


def config(encoding: int = pb.PCM_ENCODING_F32LE, rate: int = RATE, channels: int = 1,
           **segmentation: float) -> pb.StreamRecognizeRequest:
    mode = segmentation.pop("mode", pb.SEGMENTATION_MODE_ENERGY)
    seg = pb.SegmentationConfig(mode=int(mode), **segmentation)
    return pb.StreamRecognizeRequest(config=pb.StreamConfig(encoding=encoding, sample_rate_hz=rate,
                                                            channels=channels, segmentation=seg))


def chunks(data: bytes, size: int) -> list[pb.StreamRecognizeRequest]:
    return [pb.StreamRecognizeRequest(audio=data[i : i + size]) for i in range(0, len(data), size)]


async def messages(items: Sequence[pb.StreamRecognizeRequest]) -> AsyncIterator[pb.StreamRecognizeRequest]:
    for item in items:
        yield item


async def stream(running: Running, items: Sequence[pb.StreamRecognizeRequest],
                 **kwargs: float) -> list[pb.StreamRecognizeResponse]:
    call = running.stub.StreamRecognize(messages(items), **kwargs)
    return [response async for response in call]


async def recognize_samples(running: Running, samples: np.ndarray) -> pb.RecognizeResponse:
    audio = pb.Audio(raw=pb.RawAudio(data=samples.astype("<f4").tobytes(), encoding=pb.PCM_ENCODING_F32LE,
                                     sample_rate_hz=RATE, channels=1))
    return await running.stub.Recognize(pb.RecognizeRequest(audio=audio))


async def test_energy_segments_in_order_match_unary_and_summarise(running: Running) -> None:
    bursts = [(0.5, 1.7), (2.5, 4.0), (4.6, 5.6)]
    signal = tone_bursts(bursts, total_s=6.5, rate=RATE)
    data = pcm_bytes(signal[:, None], "f32le")
    # Odd chunk size: chunks end inside samples.
    responses = await stream(running, [config(min_segment_s=0.5, min_silence_s=0.3), *chunks(data, 3333)])
    segments = [r.segment for r in responses[:-1]]
    summary = responses[-1].summary
    assert all(r.WhichOneof("message") == "segment" for r in responses[:-1])
    assert responses[-1].WhichOneof("message") == "summary"
    assert [s.segment_id for s in segments] == list(range(len(bursts)))
    for seg, (start, end) in zip(segments, bursts, strict=True):
        assert seg.start_s == pytest.approx(start, abs=0.03)
        assert seg.end_s == pytest.approx(end, abs=0.03)
        # The same samples sent as a unary call get the same scores: one batcher, one model.
        a, b = round(seg.start_s * RATE), round(seg.end_s * RATE)
        unary = await recognize_samples(running, signal[a:b])
        got = [s.score for s in seg.result.scores]
        assert got == pytest.approx([s.score for s in unary.utterance.scores], abs=1e-4)
        assert seg.timing.inference_ms > 0 and seg.timing.batch_size >= 1
    assert responses[0].model.name
    assert summary.segments == len(bursts)
    assert summary.duration_s == pytest.approx(6.5, abs=1e-6)
    seg_seconds = sum(s.end_s - s.start_s for s in segments)
    assert summary.voiced_s == pytest.approx(seg_seconds, abs=1e-6)
    # Overall = duration-weighted mean of the segment scores.
    weights = np.array([s.end_s - s.start_s for s in segments])
    scores = np.array([[x.score for x in s.result.scores] for s in segments])
    expected = (scores * weights[:, None]).sum(axis=0) / weights.sum()
    assert [x.score for x in summary.overall.scores] == pytest.approx(expected.tolist(), abs=1e-5)
    assert sum(x.score for x in summary.label_seconds) == pytest.approx(seg_seconds, abs=1e-5)
    per_label = {x.label: x.score for x in summary.label_seconds}
    for seg in segments:
        assert per_label[seg.result.label] >= seg.end_s - seg.start_s - 1e-6


async def test_fixed_windows_with_hop_stereo_s16_at_48k(running: Running) -> None:
    signal = make_signal(5.0, rate=48000, channels=2, seed=4)
    data = pcm_bytes(signal, "s16le")
    responses = await stream(running, [
        config(pb.PCM_ENCODING_S16LE, 48000, 2, mode=pb.SEGMENTATION_MODE_FIXED, window_s=2.0, hop_s=1.0),
        *chunks(data, 48000),
    ])
    segments = [r.segment for r in responses if r.WhichOneof("message") == "segment"]
    assert [(s.segment_id, s.start_s, s.end_s) for s in segments] == [
        (0, 0.0, 2.0), (1, 1.0, 3.0), (2, 2.0, 4.0), (3, 3.0, 5.0)]
    summary = responses[-1].summary
    assert summary.segments == 4
    assert summary.duration_s == pytest.approx(5.0)
    assert summary.voiced_s == pytest.approx(5.0, abs=1e-3)  # overlaps counted once


async def test_stream_with_no_speech_has_an_empty_summary(running: Running) -> None:
    silence = np.zeros((RATE, 1), np.float32)
    responses = await stream(running, [config(), *chunks(pcm_bytes(silence, "f32le"), 4000)])
    assert len(responses) == 1
    summary = responses[0].summary
    assert summary.segments == 0 and summary.voiced_s == 0 and summary.duration_s == pytest.approx(1.0)
    assert summary.overall.label == ""


MALFORMED = {
    "audio before config": [pb.StreamRecognizeRequest(audio=b"\0" * 64), config()],
    "two configs": [config(), pb.StreamRecognizeRequest(audio=b"\0" * 64), config()],
    "no config at all": [],
    "empty message": [config(), pb.StreamRecognizeRequest()],
    "no encoding": [config(encoding=pb.PCM_ENCODING_UNSPECIFIED)],
    "absurd rate": [config(rate=3)],
    "segment too long": [config(max_segment_s=500.0)],
    "bad hop": [config(mode=pb.SEGMENTATION_MODE_FIXED, window_s=1.0, hop_s=-1.0)],
    "nan samples": [config(), pb.StreamRecognizeRequest(audio=np.full(100, np.nan, "<f4").tobytes())],
    "partial frame at end": [config(), pb.StreamRecognizeRequest(audio=b"\0" * 6)],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_streams_are_invalid_argument(running: Running, case: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream(running, MALFORMED[case])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details()


async def test_stream_duration_limit(start_server: StartServer) -> None:
    running: Running = await start_server(max_stream_duration_s=1.0)
    data = pcm_bytes(make_signal(2.0, rate=RATE), "f32le")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream(running, [config(), *chunks(data, 8000)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "longer than" in (info.value.details() or "")


async def test_concurrent_stream_limit_and_active_gauge(start_server: StartServer) -> None:
    running: Running = await start_server(max_concurrent_streams=1)
    release = asyncio.Event()

    async def held_open() -> AsyncIterator[pb.StreamRecognizeRequest]:
        yield config()
        await release.wait()

    first = running.stub.StreamRecognize(held_open())
    await wait_until_async(  # the server has accepted the first stream
        lambda: running.server.service is not None and running.server.service.active_streams == 1,
        message="first stream accepted",
    )
    assert running.metric("emotion_active_streams") == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream(running, [config()])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert running.metric("emotion_rejections_total", reason="too_many_streams") == 1
    release.set()
    responses = [r async for r in first]
    assert responses[-1].WhichOneof("message") == "summary"
    assert running.metric("emotion_active_streams") == 0
    assert running.metric("emotion_requests_total", rpc="StreamRecognize", code="OK") == 1


async def test_client_cancel_ends_the_stream(running: Running) -> None:
    release = asyncio.Event()

    async def endless() -> AsyncIterator[pb.StreamRecognizeRequest]:
        yield config()
        yield pb.StreamRecognizeRequest(audio=pcm_bytes(make_signal(0.5, rate=RATE), "f32le"))
        await release.wait()

    call = running.stub.StreamRecognize(endless())
    service = running.server.service
    assert service is not None
    await wait_until_async(lambda: service.active_streams == 1, message="stream accepted")
    call.cancel()
    await wait_until_async(lambda: service.active_streams == 0, message="stream ended after the cancel")
    release.set()


async def test_default_segmentation_fits_a_server_maximum_below_it(start_server: StartServer) -> None:
    # The energy default is 10 s per segment; a server whose longest segment is 4 s cuts there instead of
    # refusing a stream that chose nothing. A value the caller chose above the maximum is still refused.
    running: Running = await start_server(max_duration_s=4.0)
    speech = make_signal(9.0, rate=RATE)  # no pause: only the segment bound cuts it
    responses = await stream(running, [config(), *chunks(pcm_bytes(speech, "f32le"), 8000)])
    segments = [r.segment for r in responses[:-1]]
    assert len(segments) >= 3 and all(s.end_s - s.start_s <= 4.0 + 1e-6 for s in segments), segments
    assert responses[-1].summary.duration_s == pytest.approx(9.0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream(running, [config(max_segment_s=5.0)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the server's maximum of 4 s" in (info.value.details() or "")
