"""Long recordings through a real server: Recognize and Embed beyond one model pass (issue 13).

The in-process server (real grpc.aio, real tiny ONNX model, real batcher) runs with a short single-pass
limit so that a minute of speech is already a long recording; tests/server/calls/test_longform_process.py runs
the 10-minute recording (and the slow 1-hour one) through a server process with the default limits.
"""

from __future__ import annotations

import asyncio
import itertools

import grpc
import numpy as np
import pytest
from emotion.v1 import emotion_pb2

from tests.support.audio import encode
from tests.support.longform import (
    RATE,
    Recording,
    concat_with_sox,
    recording,
    speech_clip,
    two_clips,
    wav_bytes,
)
from tests.support.polling import wait_until_async
from tests.support.servers import StartServer

pytestmark = pytest.mark.asyncio


def recognize_request(
    data: bytes, *, frames: bool = False, embedding: bool = False
) -> emotion_pb2.RecognizeRequest:
    return emotion_pb2.RecognizeRequest(
        audio=emotion_pb2.Audio(encoded=data),
        granularity=emotion_pb2.GRANULARITY_FRAME if frames else emotion_pb2.GRANULARITY_UTTERANCE,
        return_embedding=embedding,
    )


def scores(utterance: emotion_pb2.UtteranceResult) -> np.ndarray:
    return np.array([s.score for s in utterance.scores], np.float64)


def check_segments_cover_speech(
    response: emotion_pb2.RecognizeResponse, rec: Recording, max_segment_s: float
) -> None:
    """Segments are in order, disjoint, within the limit, and every clip lies inside one segment."""
    segs = list(response.segments)
    assert segs, "a long recording must come back with segments"
    assert [s.segment_id for s in segs] == list(range(len(segs)))
    for prev, cur in itertools.pairwise(segs):
        assert prev.end_s <= cur.start_s + 1e-9, (prev, cur)
    for s in segs:
        assert 0.0 <= s.start_s < s.end_s <= response.duration_s + 1e-6
        assert s.end_s - s.start_s <= max_segment_s + 1e-6
        assert s.result.label and len(s.result.scores) == len(response.utterance.scores)
        assert abs(sum(x.score for x in s.result.scores) - 1.0) < 1e-4
    for a, b in rec.clips:
        start_s, end_s = a / RATE, b / RATE
        assert any(s.start_s <= start_s + 1e-6 and end_s <= s.end_s + 1e-6 for s in segs), (start_s, end_s)
    assert response.voiced_s == pytest.approx(sum(s.end_s - s.start_s for s in segs), abs=1e-6)


def check_aggregate(response: emotion_pb2.RecognizeResponse) -> None:
    """The utterance is the duration-weighted mean of the segment scores, and its top label is their top."""
    weights = np.array([s.end_s - s.start_s for s in response.segments])
    stacked = np.stack([scores(s.result) for s in response.segments])
    expected = weights @ stacked / weights.sum()
    np.testing.assert_allclose(scores(response.utterance), expected, atol=1e-5)
    enabled = expected > 0
    top = int(np.argmax(np.where(enabled, expected, -1.0)))
    assert response.utterance.label == response.utterance.scores[top].label
    assert response.utterance.confidence == pytest.approx(expected[top], abs=1e-5)


async def test_a_minute_of_speech_is_segmented_and_aggregated(start_server: StartServer) -> None:
    running = await start_server(max_duration_s=10.0, max_audio_s=3600.0)
    rec = recording(65.0)
    request = recognize_request(rec.wav(), frames=True, embedding=True)
    response = await running.stub.Recognize(request, timeout=60)
    assert response.duration_s == pytest.approx(rec.duration_s, abs=1e-3)
    check_segments_cover_speech(response, rec, 10.0)
    check_aggregate(response)
    # Frames: every segment's own frames, in order, at absolute times inside the segment.
    frames = list(response.frames)
    assert sum(s.frame_count for s in response.segments) == len(frames) > 0
    for seg in response.segments:
        mine = frames[seg.first_frame : seg.first_frame + seg.frame_count]
        assert mine and mine[0].start_s == pytest.approx(seg.start_s, abs=1e-6)
        assert all(seg.start_s - 1e-6 <= f.start_s < seg.end_s for f in mine)
        starts = [f.start_s for f in mine]
        assert starts == sorted(starts)
    # Embedding: the frame-weighted mean of the segment embeddings, each of the model's dimension.
    seg_embeddings = np.stack([np.array(s.embedding.values) for s in response.segments])
    counts = np.array([s.frame_count for s in response.segments], np.float64)
    expected = counts @ seg_embeddings / counts.sum()
    np.testing.assert_allclose(np.array(response.embedding.values), expected, atol=1e-5)
    # The segment counts are in the histogram.
    assert running.metric("emotion_request_segments_count", rpc="Recognize") == 1
    assert running.metric("emotion_request_segments_sum", rpc="Recognize") == len(response.segments)


async def test_each_segment_scores_equal_recognize_on_that_clip_alone(start_server: StartServer) -> None:
    running = await start_server(max_duration_s=5.0, max_audio_s=3600.0)
    rec, first, second = two_clips(gap_s=3.0)
    assert rec.duration_s > 5.0  # longer than one pass: segmented
    long = await running.stub.Recognize(recognize_request(rec.wav(), embedding=True), timeout=60)
    assert [(round(s.start_s * RATE), round(s.end_s * RATE)) for s in long.segments] == list(rec.clips)
    for seg, clip in zip(long.segments, (first, second), strict=True):
        request = recognize_request(wav_bytes(clip), embedding=True)
        alone = await running.stub.Recognize(request, timeout=30)
        assert not alone.segments  # a short clip is one pass, as before
        np.testing.assert_allclose(scores(seg.result), scores(alone.utterance), atol=1e-4)
        np.testing.assert_allclose(
            np.array(seg.embedding.values), np.array(alone.embedding.values), atol=1e-4
        )
        assert seg.result.label == alone.utterance.label


async def test_sox_concatenation_gives_the_same_segments(start_server: StartServer) -> None:
    running = await start_server(max_duration_s=5.0, max_audio_s=3600.0)
    rec, first, second = two_clips(gap_s=3.0)
    gap = np.zeros(rec.clips[1][0] - rec.clips[0][1], np.int16)
    lead = np.zeros(rec.clips[0][0], np.int16)
    tail = np.zeros(rec.samples.size - rec.clips[1][1], np.int16)
    joined = concat_with_sox([lead, first, gap, second, tail])
    np.testing.assert_array_equal(joined, rec.samples)
    by_sox = await running.stub.Recognize(recognize_request(wav_bytes(joined)), timeout=60)
    by_numpy = await running.stub.Recognize(recognize_request(rec.wav()), timeout=60)
    spans = [(s.start_s, s.end_s) for s in by_numpy.segments]
    assert [(s.start_s, s.end_s) for s in by_sox.segments] == spans


async def test_embed_of_a_long_recording(start_server: StartServer) -> None:
    running = await start_server(max_duration_s=10.0, max_audio_s=3600.0)
    rec = recording(40.0)
    response = await running.stub.Embed(
        emotion_pb2.EmbedRequest(audio=emotion_pb2.Audio(encoded=rec.wav()), return_frames=True), timeout=60
    )
    segs = list(response.segments)
    assert len(segs) >= len(rec.clips)
    counts = np.array([s.frame_count for s in segs], np.float64)
    stacked = np.stack([np.array(s.embedding.values) for s in segs])
    assert stacked.shape[1] == response.dim
    expected = counts @ stacked / counts.sum()
    np.testing.assert_allclose(np.array(response.embedding.values), expected, atol=1e-5)
    # Frames: all of them, each segment's run averaging to that segment's embedding.
    frames = np.stack([np.array(f.values) for f in response.frames])
    assert frames.shape == (int(counts.sum()), response.dim)
    for s in segs:
        np.testing.assert_allclose(frames[s.first_frame : s.first_frame + s.frame_count].mean(axis=0),
                                   np.array(s.embedding.values), atol=1e-4)


async def test_raw_pcm_and_compressed_long_audio(start_server: StartServer) -> None:
    running = await start_server(max_duration_s=10.0, max_audio_s=3600.0)
    rec = recording(30.0)
    raw = emotion_pb2.Audio(raw=emotion_pb2.RawAudio(
        data=rec.samples.astype("<i2").tobytes(), encoding=emotion_pb2.PCM_ENCODING_S16LE,
        sample_rate_hz=RATE,
    ))
    by_raw = await running.stub.Recognize(emotion_pb2.RecognizeRequest(audio=raw), timeout=60)
    by_wav = await running.stub.Recognize(recognize_request(rec.wav()), timeout=60)
    assert [(s.start_s, s.end_s) for s in by_raw.segments] == [(s.start_s, s.end_s) for s in by_wav.segments]
    np.testing.assert_allclose(scores(by_raw.utterance), scores(by_wav.utterance), atol=1e-6)
    # A few hundred kilobytes of 8 kHz PCM beyond one pass is a long recording too (not "too long").
    pcm8k = emotion_pb2.Audio(raw=emotion_pb2.RawAudio(
        data=rec.samples[: 12 * RATE : 2].astype("<i2").tobytes(), encoding=emotion_pb2.PCM_ENCODING_S16LE,
        sample_rate_hz=8000,
    ))
    by_8k = await running.stub.Recognize(emotion_pb2.RecognizeRequest(audio=pcm8k), timeout=60)
    assert by_8k.segments and by_8k.duration_s == pytest.approx(12.0, abs=0.01)
    # Opus at 48 kHz: decoded incrementally, resampled, still one segment per sentence.
    opus = encode(rec.samples.astype(np.float32)[:, None] / 32768.0, RATE, "ogg_opus")
    by_opus = await running.stub.Recognize(recognize_request(opus), timeout=60)
    check_segments_cover_speech(by_opus, rec, 10.0)


async def test_silence_falls_back_to_fixed_windows(start_server: StartServer) -> None:
    running = await start_server(max_duration_s=10.0, max_audio_s=3600.0)
    quiet = np.zeros(25 * RATE, np.int16)
    response = await running.stub.Recognize(recognize_request(wav_bytes(quiet)), timeout=60)
    assert [(s.start_s, s.end_s) for s in response.segments] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    check_aggregate(response)


async def test_speech_without_pauses_is_cut_at_the_segment_limit(start_server: StartServer) -> None:
    running = await start_server(max_duration_s=10.0, max_audio_s=3600.0)
    clip = speech_clip("I am so happy to see you today.")
    t = np.arange(25 * RATE) / RATE
    # Continuous voiced audio (speech over a steady hum), no pause anywhere.
    hum = (0.05 * np.sin(2 * np.pi * 150 * t) * 32768).astype(np.int16)
    sig = hum.copy()
    for k in range(0, sig.size - clip.size, clip.size):
        sig[k : k + clip.size] = np.clip(sig[k : k + clip.size].astype(np.int32) + clip, -32768, 32767)
    response = await running.stub.Recognize(recognize_request(wav_bytes(sig)), timeout=60)
    lengths = [s.end_s - s.start_s for s in response.segments]
    assert lengths[:2] == [pytest.approx(10.0), pytest.approx(10.0)]
    assert response.segments[0].start_s == 0.0
    pairs = zip(response.segments, response.segments[1:], strict=False)
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in pairs)


async def test_max_audio_s_limits_long_recordings(start_server: StartServer) -> None:
    running = await start_server(max_duration_s=10.0, max_audio_s=30.0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await running.stub.Recognize(recognize_request(recording(40.0).wav()), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "audio too long" in (err.value.details() or "") and "maximum 30 s" in (err.value.details() or "")
    info = await running.stub.GetModelInfo(emotion_pb2.GetModelInfoRequest(), timeout=10)
    assert (info.max_audio_s, info.max_segment_s, info.max_duration_s) == (30.0, 10.0, 10.0)


async def test_short_requests_finish_while_a_long_one_runs(start_server: StartServer) -> None:
    # Ordering only (timing numbers are in benchmarks/long_recordings.py): short calls sent while a long
    # recording is being processed finish before it, because the long call keeps only a window of its
    # segments in the queue.
    running = await start_server(max_duration_s=10.0, max_audio_s=3600.0, max_batch_size=2,
                                 max_queue_delay_ms=1.0)
    rec = recording(240.0)
    short = speech_clip("Why would you do that to me?")
    finished: list[str] = []

    async def long_call() -> None:
        await running.stub.Recognize(recognize_request(rec.wav()), timeout=120)
        finished.append("long")

    async def short_call(i: int) -> None:
        await running.stub.Recognize(recognize_request(wav_bytes(short)), timeout=120)
        finished.append(f"short{i}")

    task = asyncio.ensure_future(long_call())
    batches_before = running.metric("emotion_batch_size_count")
    await wait_until_async(lambda: running.metric("emotion_batch_size_count") >= batches_before + 2,
                           timeout_s=60, message="the long recording's first batches ran")
    assert not task.done()
    await asyncio.gather(*(short_call(i) for i in range(6)))
    await task
    assert finished[-1] == "long", finished


async def test_cancelling_a_long_call_frees_the_queue(start_server: StartServer) -> None:
    running = await start_server(max_duration_s=10.0, max_audio_s=3600.0, max_batch_size=2)
    rec = recording(300.0)
    call = running.stub.Recognize(recognize_request(rec.wav()), timeout=120)
    core = running.server.core
    assert core is not None
    await wait_until_async(lambda: running.metric("emotion_batch_size_count") >= 2, timeout_s=60,
                           message="the long recording started running")
    assert core.estimated_drain_s() >= 0.0
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_until_async(lambda: running.metric("emotion_queue_requests") == 0 and core.inflight == 0,
                           timeout_s=30, message="the queue emptied after the cancel")
    assert core._admission.backlog == [0, 0]
    ran = running.metric("emotion_batch_size_sum")
    planned = running.metric("emotion_request_segments_sum", rpc="Recognize")
    assert ran < planned, "cancelled segments must not run"
    assert running.metric("emotion_requests_total", rpc="Recognize", code="CANCELLED") == 1
    # The server still answers.
    clip = wav_bytes(speech_clip("We won the match, what a day!"))
    ok = await running.stub.Recognize(recognize_request(clip), timeout=30)
    assert ok.utterance.label


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "ogg_vorbis"])
async def test_corrupt_tail_of_a_long_file(start_server: StartServer, fmt: str) -> None:
    """Garbage over the last fifth of a long file: a clear INVALID_ARGUMENT, or the decodable audio
    recognised (documented in DESIGN.md); never a crash, and the server keeps serving."""
    running = await start_server(max_duration_s=10.0, max_audio_s=3600.0)
    rec = recording(60.0)
    data = bytearray(encode(rec.samples.astype(np.float32)[:, None] / 32768.0, RATE, fmt))
    cut = len(data) * 4 // 5
    data[cut:] = np.random.default_rng(1).bytes(len(data) - cut)
    try:
        response = await running.stub.Recognize(recognize_request(bytes(data)), timeout=60)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        assert "could not decode audio" in (exc.details() or ""), exc.details()
    else:
        assert response.segments and response.duration_s > 30.0
        check_aggregate(response)
    clip = wav_bytes(speech_clip("Please leave me alone right now."))
    ok = await running.stub.Recognize(recognize_request(clip), timeout=30)
    assert ok.utterance.label


async def test_open_inference_protocol_rest_takes_long_audio(start_server: StartServer) -> None:
    """The OIP REST front end calls the same core: a long recording's PROBS is the aggregate."""
    import base64

    import aiohttp

    running = await start_server(max_duration_s=10.0, max_audio_s=3600.0)
    rec = recording(30.0)
    by_grpc = await running.stub.Recognize(recognize_request(rec.wav()), timeout=60)
    assert by_grpc.segments
    model = running.server.manifest.model_name
    body = {"inputs": [{"name": "AUDIO", "shape": [1], "datatype": "BYTES",
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(rec.wav()).decode()]}],
            "outputs": [{"name": "PROBS"}]}
    url = f"http://127.0.0.1:{running.server.http_port}/v2/models/{model}/infer"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        doc = await response.json()
    (probs,) = [o for o in doc["outputs"] if o["name"] == "PROBS"]
    np.testing.assert_allclose(np.array(probs["data"], np.float64), scores(by_grpc.utterance), atol=1e-5)
