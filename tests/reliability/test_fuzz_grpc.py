"""Malformed requests through the real gRPC server, with good requests running alongside.

Hypothesis generates the inputs (the same generators as the in-process fuzzing, plus raw-PCM descriptions
and malformed streams); each request must end with the status the decoding layer predicts (OK or
INVALID_ARGUMENT with that exact message), concurrent good requests must return the scores they return
alone (1e-4), and the server must still be SERVING at the end.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from emotion.v1 import emotion_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emotion2vec_serving.server.audio.decode import decode_encoded_any
from emotion2vec_serving.server.audio.errors import AudioError, AudioLimits
from tests.support.calls import raw_request, scores, tone
from tests.support.fuzzing import (
    ENCODED_CASES,
    RAW_CASES,
    STREAM_CASES,
    hostile_files,
    magic_then_noise,
    mutated,
    seed_files,
)
from tests.support.servers import RELIABILITY_SETTINGS, Running, StartServer

CONCURRENCY = 12
GOOD_EVERY = 6  # one good request per this many malformed ones, interleaved


def generate(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """``n`` values drawn by hypothesis (used here as a generator: the property is checked over gRPC)."""
    out: list[Any] = []

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    assert len(out) >= n
    return out[:n]


def server_limits() -> AudioLimits:
    # Exactly what server/app.py builds from the settings.
    s = RELIABILITY_SETTINGS
    return AudioLimits(
        max_duration_s=s.max_duration_s,
        min_duration_s=s.min_duration_s,
        max_encoded_bytes=s.max_message_bytes,
        target_sample_rate_hz=16000,
    )


def expected_for_encoded(data: bytes) -> str | None:
    """None when the bytes decode; otherwise the exact message the server must return (audio beyond one
    pass is a long recording, accepted up to --max-audio-s)."""
    try:
        decode_encoded_any(data, server_limits(), max_audio_s=RELIABILITY_SETTINGS.max_audio_s)
    except AudioError as exc:
        return str(exc)
    return None


@st.composite
def raw_descriptions(draw: st.DrawFn) -> pb.RawAudio:
    encoding = draw(st.sampled_from([0, 1, 2, 3, 99]))
    rate = draw(
        st.sampled_from([0, 1, 7999, 8000, 16000, 384000, 384001, 2**32 - 1]) | st.integers(0, 2**32 - 1)
    )
    channels = draw(st.sampled_from([0, 1, 2, 33, 2**32 - 1]) | st.integers(0, 2**16))
    kind = draw(st.sampled_from(["random", "nan", "short"]))
    if kind == "random":
        data = draw(st.binary(max_size=6000))
    elif kind == "nan":
        samples = np.full(4000, 0.1, "<f4")
        samples[draw(st.integers(0, 3999))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        data = samples.tobytes()
    else:
        data = draw(st.binary(max_size=8))
    return pb.RawAudio(data=data, encoding=encoding, sample_rate_hz=rate, channels=channels)


async def _outcome(call: Any) -> tuple[str, str, Any]:
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or "", None
    return "OK", "", response


@pytest.fixture(scope="module")
def encoded_cases() -> list[bytes]:
    seeds = seed_files()
    strategy = st.one_of(st.binary(max_size=3000), magic_then_noise(), mutated(seeds), hostile_files())
    return generate(strategy, ENCODED_CASES)


async def test_malformed_unary_requests_get_the_right_status_and_good_ones_are_unaffected(
    start_server: StartServer, encoded_cases: list[bytes]
) -> None:
    running: Running = await start_server(max_batch_size=4)
    stub = running.stub
    good_audio = tone(1.0, seed=3)
    alone = scores(await stub.Recognize(raw_request(good_audio), timeout=30))

    raw_cases = generate(raw_descriptions(), RAW_CASES)
    work: list[tuple[str, Any, str | None]] = []  # (kind, call factory input, expected message or None)
    for i, data in enumerate(encoded_cases):
        work.append(
            ("embed" if i % 4 == 3 else "recognize", pb.Audio(encoded=data), expected_for_encoded(data))
        )
    for raw in raw_cases:
        work.append(
            ("recognize", pb.Audio(raw=raw), "?")
        )  # raw: OK or INVALID_ARGUMENT, message checked below

    sem = asyncio.Semaphore(CONCURRENCY)
    good_results: list[np.ndarray] = []
    failures: list[str] = []

    async def one(kind: str, audio: pb.Audio, expected: str | None) -> None:
        async with sem:
            if kind == "embed":
                code, details, response = await _outcome(stub.Embed(pb.EmbedRequest(audio=audio), timeout=30))
            else:
                code, details, response = await _outcome(
                    stub.Recognize(pb.RecognizeRequest(audio=audio), timeout=30)
                )
        if expected == "?":
            if code == "OK":
                assert response is not None
                probs = scores(response)
                if not (np.isfinite(probs).all() and abs(float(probs.sum()) - 1.0) < 1e-3):
                    failures.append(f"raw: OK with bad scores {probs}")
            elif code != "INVALID_ARGUMENT" or not details.strip():
                raw = audio.raw
                failures.append(f"raw {raw.encoding}/{raw.sample_rate_hz}/{raw.channels}: {code} {details!r}")
            return
        if expected is None:
            if code != "OK":
                failures.append(f"decodable bytes ({len(audio.encoded)} B) got {code}: {details}")
        elif code != "INVALID_ARGUMENT" or details != expected:
            failures.append(f"expected INVALID_ARGUMENT {expected!r}, got {code} {details!r}")

    async def good() -> None:
        async with sem:
            response = await stub.Recognize(raw_request(good_audio), timeout=30)
        good_results.append(scores(response))

    tasks = []
    for i, (kind, audio, expected) in enumerate(work):
        tasks.append(one(kind, audio, expected))
        if i % GOOD_EVERY == 0:
            tasks.append(good())
    await asyncio.gather(*tasks)

    assert not failures, f"{len(failures)} wrong outcomes, e.g. {failures[:5]}"
    assert len(good_results) == math.ceil(len(work) / GOOD_EVERY)
    for got in good_results:
        np.testing.assert_allclose(got, alone, atol=1e-4)
    await _assert_still_serving(running)
    # Every refusal was counted as such.
    refused = running.metric(
        "emotion_requests_total", rpc="Recognize", code="INVALID_ARGUMENT"
    ) + running.metric("emotion_requests_total", rpc="Embed", code="INVALID_ARGUMENT")
    expected_refusals = sum(1 for _, _, e in work if e not in (None, "?"))
    assert refused >= expected_refusals


async def _assert_still_serving(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    ok = await running.stub.Recognize(raw_request(tone(0.5)), timeout=30)
    assert ok.utterance.label


async def test_oversized_and_empty_messages(start_server: StartServer) -> None:
    running: Running = await start_server()
    stub = running.stub
    limit = RELIABILITY_SETTINGS.max_message_bytes
    cases = {
        "over the gRPC limit": (pb.Audio(encoded=b"RIFF" + bytes(limit + 128 * 1024)), "RESOURCE_EXHAUSTED"),
        "over the decoder limit": (pb.Audio(encoded=b"RIFF" + bytes(limit + 1024)), "INVALID_ARGUMENT"),
        "no audio": (pb.Audio(), "INVALID_ARGUMENT"),
        "empty encoded": (pb.Audio(encoded=b""), "INVALID_ARGUMENT"),
        "empty raw": (pb.Audio(raw=pb.RawAudio(encoding=2, sample_rate_hz=16000)), "INVALID_ARGUMENT"),
    }
    for name, (audio, code) in cases.items():
        got, details, _ = await _outcome(stub.Recognize(pb.RecognizeRequest(audio=audio), timeout=30))
        assert got == code, (name, got, details)
        assert details.strip(), name
    await _assert_still_serving(running)


# ------------------------------------------------------------------------------------- streams


def _config(**kw: Any) -> pb.StreamRecognizeRequest:
    base: dict[str, Any] = {
        "encoding": pb.PCM_ENCODING_F32LE,
        "sample_rate_hz": 16000,
        "channels": 1,
        # Within the test server's 5 s maximum, so that only the fault under test is wrong.
        "segmentation": pb.SegmentationConfig(max_segment_s=2.0),
    }
    base.update(kw)
    return pb.StreamRecognizeRequest(config=pb.StreamConfig(**base))


def _audio(samples: np.ndarray) -> pb.StreamRecognizeRequest:
    return pb.StreamRecognizeRequest(audio=np.asarray(samples, "<f4").tobytes())


def _nan_chunk() -> np.ndarray:
    x = tone(0.5)
    x[777] = np.nan
    return x


def _seg(**kw: Any) -> pb.SegmentationConfig:
    kw.setdefault("max_segment_s", 2.0)
    return pb.SegmentationConfig(**kw)


def _with_audio(config: pb.StreamRecognizeRequest) -> list[pb.StreamRecognizeRequest]:
    return [config, _audio(tone(0.5))]


FIXED = pb.SEGMENTATION_MODE_FIXED
IA = "INVALID_ARGUMENT"
# name -> (messages, status, a word the message must contain)
MALFORMED_STREAMS: dict[str, tuple[list[pb.StreamRecognizeRequest], str, str]] = {
    "audio before config": ([_audio(tone(0.5))], IA, "config"),
    "two configs": ([_config(), _config()], IA, "config"),
    "config, audio, config": ([_config(), _audio(tone(0.2)), _config()], IA, "config"),
    "empty message": ([_config(), pb.StreamRecognizeRequest()], IA, "empty"),
    "no messages at all": ([], IA, "config"),
    "encoding unspecified": (_with_audio(_config(encoding=0)), IA, "encoding"),
    "encoding out of range": (_with_audio(_config(encoding=7)), IA, "encoding"),
    "sample rate 0": (_with_audio(_config(sample_rate_hz=0)), IA, "sample_rate"),
    "sample rate 1 Hz": (_with_audio(_config(sample_rate_hz=1)), IA, "sample rate"),
    "sample rate 4 GHz": (_with_audio(_config(sample_rate_hz=2**32 - 1)), IA, "sample rate"),
    "4 billion channels": (_with_audio(_config(channels=2**32 - 1)), IA, "channel"),
    "NaN samples": ([_config(), _audio(_nan_chunk())], IA, "NaN"),
    "Inf samples": ([_config(), _audio(np.full(8000, np.inf, np.float32))], IA, "infinite"),
    "segment longer than the maximum": (
        _with_audio(_config(segmentation=_seg(max_segment_s=1e9))),
        IA,
        "max",
    ),
    "negative min segment": (_with_audio(_config(segmentation=_seg(min_segment_s=-1.0))), IA, "min_segment"),
    # (min_segment_s above max_segment_s is clamped on purpose: the 1 s default must not break a short max.)
    "max segment under one frame": (
        _with_audio(_config(segmentation=_seg(max_segment_s=0.001))),
        IA,
        "at least one frame",
    ),
    "NaN silence": (_with_audio(_config(segmentation=_seg(min_silence_s=math.nan))), IA, "finite"),
    "unknown mode": (_with_audio(_config(segmentation=_seg(mode=9))), IA, "mode"),
    "fixed window too long": (
        _with_audio(_config(segmentation=_seg(mode=FIXED, window_s=1e6))),
        IA,
        "window",
    ),
    "fixed negative hop": (
        _with_audio(_config(segmentation=_seg(mode=FIXED, window_s=1.0, hop_s=-1.0))),
        IA,
        "hop",
    ),
    "fixed NaN window": (
        _with_audio(_config(segmentation=_seg(mode=FIXED, window_s=math.nan))),
        IA,
        "finite",
    ),
    "fixed infinite hop": (
        _with_audio(_config(segmentation=_seg(mode=FIXED, window_s=1.0, hop_s=math.inf))),
        IA,
        "finite",
    ),
    "chunk over the message limit": (
        [_config(),
         pb.StreamRecognizeRequest(audio=bytes(RELIABILITY_SETTINGS.max_message_bytes + 128 * 1024))],
        "RESOURCE_EXHAUSTED",
        "",
    ),
    "odd byte count for f32": ([_config(), pb.StreamRecognizeRequest(audio=b"\x00" * 16001)], IA, "frame"),
}
assert len(MALFORMED_STREAMS) == STREAM_CASES


async def _run_stream(running: Running, messages: Sequence[pb.StreamRecognizeRequest]) -> tuple[str, str]:
    call = running.stub.StreamRecognize(timeout=30)
    try:
        for message in messages:
            await call.write(message)
        await call.done_writing()
    except Exception:
        pass
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError:
        pass  # the status is read below
    code = await call.code()
    return code.name, await call.details() or ""


async def test_malformed_streams_get_a_clear_error_and_good_streams_are_unaffected(
    start_server: StartServer,
) -> None:
    running: Running = await start_server()
    good = [_config(segmentation=_seg(mode=FIXED, window_s=1.0)), _audio(tone(2.0, seed=5))]

    async def good_stream() -> list[list[float]]:
        call = running.stub.StreamRecognize(iter(good), timeout=30)
        return [list(r.segment.result.scores) for r in [r async for r in call] if r.HasField("segment")]

    reference = await good_stream()
    assert len(reference) == 2
    results = await asyncio.gather(
        *(_run_stream(running, messages) for messages, _, _ in MALFORMED_STREAMS.values()),
        *(good_stream() for _ in range(4)),
    )
    bad = results[: len(MALFORMED_STREAMS)]
    wrong = [
        (name, got, details)
        for (name, (_, want, word)), (got, details) in zip(MALFORMED_STREAMS.items(), bad, strict=True)
        if got != want or not details.strip() or word.lower() not in details.lower()
    ]
    assert not wrong, wrong
    for segs in results[len(MALFORMED_STREAMS) :]:
        assert len(segs) == len(reference)
        np.testing.assert_allclose(
            np.array([[s.score for s in seg] for seg in segs]),
            np.array([[s.score for s in seg] for seg in reference]),
            atol=1e-4,
        )
    assert running.server.service is not None and running.server.service.active_streams == 0
    await _assert_still_serving(running)
