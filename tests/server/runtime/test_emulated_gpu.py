"""``--engine emulated-gpu`` (issue 24; benchmarks and tests only) through real server processes.

The emulated card runs no model but the server's GPU path is real: length buckets and the warm-up over
them, the batcher's batches, out-of-memory splitting (an emulated memory limit raising ONNX Runtime's BFC
arena message), the fallback to real CPU sessions and the return after the cool-down, and the marking of
what runs (engine and provider in GetModelInfo, the provider gauge).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc.aio
import numpy as np
import pytest
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from emotion2vec_serving.server.process import ServerProcess
from tests.support.audio import make_signal, pcm_bytes
from tests.support.metrics import metric_value
from tests.support.polling import wait_until
from tests.support.servers import server_process

PROVIDER = "EmulatedGpuExecutionProvider"


def _request(duration_s: float, seed: int) -> emotion_pb2.RecognizeRequest:
    signal = make_signal(duration_s, 16000, 1, seed=seed)
    raw = emotion_pb2.RawAudio(data=pcm_bytes(signal, "s16le"), encoding=emotion_pb2.PCM_ENCODING_S16LE,
                               sample_rate_hz=16000, channels=1)
    return emotion_pb2.RecognizeRequest(audio=emotion_pb2.Audio(raw=raw))


async def _burst(target: str, n: int, duration_s: float) -> list[emotion_pb2.RecognizeResponse]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        return list(await asyncio.gather(*(stub.Recognize(_request(duration_s, i), timeout=60)
                                           for i in range(n))))


async def _info(target: str) -> emotion_pb2.ModelInfo:
    async with grpc.aio.insecure_channel(target) as channel:
        return await emotion_pb2_grpc.EmotionRecognizerStub(channel).GetModelInfo(
            emotion_pb2.GetModelInfoRequest(), timeout=10)


@pytest.fixture(scope="module")
def emulated(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Warm-up on (it runs every length bucket), batches of up to 16 gathered for up to 50 ms."""
    log = tmp_path_factory.mktemp("emulated_gpu") / "server.log"
    flags = ("--engine", "emulated-gpu", "--warmup", "--max-duration-s", "4", "--max-batch-size", "16",
             "--max-queue-delay-ms", "50", "--drain-grace-s", "2")
    with server_process(tiny_repo, *flags, startup_timeout_s=90.0, log_path=log) as srv:
        yield srv


def test_emulated_gpu_is_marked_and_warmed_up(emulated: ServerProcess) -> None:
    info = asyncio.run(_info(emulated.target))
    assert info.engine == "emulated-gpu" and info.execution_provider == PROVIDER
    assert metric_value(emulated.scrape(), "emotion_execution_provider", provider=PROVIDER) == 1.0
    log = emulated.log_text()
    assert "EMULATED GPU" in log and "for benchmarks and tests only" in log
    assert "warm-up done" in log


def test_concurrent_requests_run_in_batches(emulated: ServerProcess) -> None:
    responses = asyncio.run(_burst(emulated.target, 24, 1.0))
    assert len(responses) == 24 and all(r.utterance.label for r in responses)
    text = emulated.scrape()
    batches = metric_value(text, "emotion_batch_size_count")
    alone = metric_value(text, "emotion_batch_size_bucket", le="1.0")
    assert batches >= 1 and batches - alone >= 1, f"{batches} batches, {alone} of one request"
    assert max(r.timing.batch_size for r in responses) > 1
    # Every request ran at its length bucket: padded audio >= useful audio, and the run was sleep, not CPU.
    assert metric_value(text, "emotion_padded_audio_seconds_total") >= metric_value(
        text, "emotion_useful_audio_seconds_total") > 0


def test_a_batch_over_the_emulated_memory_splits(tiny_repo: Path, tmp_path: Path) -> None:
    """45 MiB of emulated memory and 10 MiB per item-second: five 1 s items do not fit, four do."""
    flags = ("--engine", "emulated-gpu", "--emulated-gpu", "weights_mb=0,act_mb_per_s=10,attn_mb_per_s2=0",
             "--gpu-mem-limit-mb", "45", "--max-duration-s", "2", "--max-batch-size", "16",
             "--max-queue-delay-ms", "100", "--no-adaptive-batching", "--drain-grace-s", "2")
    with server_process(tiny_repo, *flags, startup_timeout_s=90.0, log_path=tmp_path / "server.log") as srv:
        responses = asyncio.run(_burst(srv.target, 16, 0.9))
        assert len(responses) == 16 and all(r.utterance.label for r in responses)
        text = srv.scrape()
        assert metric_value(text, "emotion_batch_failures_total", retried="true") >= 1
        # Only batches that fit ran: at most four items (the histogram's le=4 bucket holds every batch).
        assert metric_value(text, "emotion_batch_size_bucket", le="4.0") == metric_value(
            text, "emotion_batch_size_count")
        assert "EMULATED GPU: out of memory: a batch of" in srv.log_text()
        assert np.all([r.timing.batch_size <= 4 for r in responses])


def test_a_failed_emulated_device_falls_back_to_the_cpu_and_returns(tiny_repo: Path, tmp_path: Path) -> None:
    """The device fails after two batches for 1 s: the batch reruns on a real ONNX Runtime CPU session, and
    after the 0.5 s cool-down a probe finds the device working again."""
    flags = ("--engine", "emulated-gpu", "--emulated-gpu", "fail_after=2,fail_for_s=1",
             "--gpu-failures-before-fallback", "1", "--gpu-cooldown-s", "0.5", "--max-duration-s", "2",
             "--drain-grace-s", "2")
    with server_process(tiny_repo, *flags, startup_timeout_s=90.0, log_path=tmp_path / "server.log") as srv:
        responses = [asyncio.run(_burst(srv.target, 1, 1.0))[0] for _ in range(3)]  # the third fails over
        assert all(r.utterance.label for r in responses)
        assert metric_value(srv.scrape(), "emotion_provider_fallbacks_total", from_provider=PROVIDER,
                            to_provider="CPUExecutionProvider", reason="runtime_failure") == 1.0
        wait_until(lambda: metric_value(srv.scrape(), "emotion_execution_provider", provider=PROVIDER) == 1.0,
                   timeout_s=30.0, interval_s=0.2, message="back on the emulated GPU")
        recovered = {"from_provider": "CPUExecutionProvider", "to_provider": PROVIDER, "reason": "recovered"}
        assert metric_value(srv.scrape(), "emotion_provider_fallbacks_total", **recovered) == 1.0
        assert asyncio.run(_burst(srv.target, 1, 1.0))[0].utterance.label
        assert asyncio.run(_info(srv.target)).execution_provider == PROVIDER
        assert "EMULATED GPU: the device works again" in srv.log_text()
