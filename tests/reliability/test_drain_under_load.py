"""SIGTERM while the real server process (``python -m server``) is under load.

- Drain: readiness flips to NOT_SERVING, every request the server accepted completes OK, new ones are
  refused with UNAVAILABLE ("shutting down") or cannot connect; the process exits 0.
- A second SIGTERM during a drain, and the grace limit, both end the process promptly.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import grpc.aio
from emotion.v1 import emotion_pb2 as pb
from emotion.v1 import emotion_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emotion2vec_serving.server.app import _DOUBLE_SIGNAL_S
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.grpc.health import SERVICE_NAME
from emotion2vec_serving.server.grpc.listeners import age_goaway_wait_s
from emotion2vec_serving.server.process import ServerProcess
from tests.support.calls import raw_request, tone
from tests.support.metrics import answered_by_server
from tests.support.polling import wait_until_async
from tests.support.servers import server_process


def _start(model_dir: Path, *extra: str) -> ServerProcess:
    flags = ("--max-duration-s", "10", "--max-queue-requests", "512", *extra)
    return server_process(model_dir, *flags, metrics=False, startup_timeout_s=60.0).start()


def _refused_before_acceptance(code: str, details: str) -> bool:
    """A call the server never accepted: the drain's own refusal, or no connection to send it on.

    Only these may fail during a drain. A call cut off after it was accepted (``Connection reset``,
    ``Socket closed``, a stream reset) is a lost request, whatever its status code.
    """
    if code != "UNAVAILABLE":
        return False
    text = details.lower()
    if "shutting down" in text:  # the core's drain refusal (errors.Draining)
        return True
    never_connected = "failed to connect" in text or "connection refused" in text
    return never_connected and "reset" not in text and "socket closed" not in text


async def test_sigterm_under_load_loses_no_accepted_request(
    tiny_repo: Path, server_procs: list[ServerProcess]
) -> None:
    # Default drain flags (no --max-connection-age-s): the drain's GOAWAYs still come while the server serves
    # (server/grpc/listeners.py), so the plain clients below lose nothing (issue 22, defect 8).
    server = _start(Path(tiny_repo), "--drain-grace-s", "20", "--max-batch-size", "4")
    server_procs.append(server)
    channel = grpc.aio.insecure_channel(server.target)
    stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
    request = raw_request(tone(4.0))
    expected = await stub.Recognize(request, timeout=30)

    stop = asyncio.Event()
    outcomes: list[tuple[float, float, str, str]] = []  # (sent, finished, code, details)
    health_changes: list[tuple[float, int]] = []

    async def worker() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await stub.Recognize(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                outcomes.append((sent, time.monotonic(), exc.code().name, exc.details() or ""))
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    await asyncio.sleep(0.02)
                continue
            got = [s.score for s in response.utterance.scores]
            want = [s.score for s in expected.utterance.scores]
            same = max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-4  # batch-exact tolerance
            outcomes.append((sent, time.monotonic(), "OK" if same else "WRONG_RESULT", ""))

    async def watch_health() -> None:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        try:
            async for resp in call:
                health_changes.append((time.monotonic(), resp.status))
                if resp.status == health_pb2.HealthCheckResponse.NOT_SERVING and len(health_changes) > 1:
                    break  # an open Watch would otherwise hold server.stop() for its whole grace
        except grpc.aio.AioRpcError:
            pass
        finally:
            call.cancel()

    watcher = asyncio.ensure_future(watch_health())
    workers = [asyncio.ensure_future(worker()) for _ in range(12)]
    await wait_until_async(lambda: sum(1 for o in outcomes if o[2] == "OK") >= 12, timeout_s=60,
                           message="load reached the server before SIGTERM")
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    rc = await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 60)
    exited_at = time.monotonic()
    stop.set()
    await asyncio.gather(*workers)
    watcher.cancel()
    await channel.close()

    assert rc == 0, server.log_tail(20)
    # The server's own account: every call that reached it, by outcome (logged once at exit). Each of them
    # must have been answered OK, and the clients must have seen exactly those answers. A call the clients
    # saw fail is then one the server never took: refused by the drain, or unable to connect once the
    # listener closed: refusals, not losses.
    answered = answered_by_server(server.log_path.read_text(encoding="utf-8", errors="replace"))
    seen = {("emotion_v1", "Recognize", "OK"): sum(o[2] == "OK" for o in outcomes) + 1}  # + the reference
    refused = sum(o[2] == "UNAVAILABLE" and "shutting down" in o[3].lower() for o in outcomes)
    if refused:  # calls that reached the core after it began refusing: counted there, answered UNAVAILABLE
        seen[("emotion_v1", "Recognize", "UNAVAILABLE")] = refused
    assert answered == seen, f"server answered {answered}, clients saw {seen}"
    lost = [o for o in outcomes if o[2] != "OK" and not _refused_before_acceptance(o[2], o[3])]
    assert not lost, f"accepted requests lost or wrong: {lost[:5]}"
    print(
        f"requests: {len(outcomes)}, OK {sum(o[2] == 'OK' for o in outcomes)}, refused "
        f"{sum(o[2] != 'OK' for o in outcomes)}, drain took {exited_at - sigterm_at:.2f} s; refusals: "
        f"{sorted({(o[2], o[3][:70]) for o in outcomes if o[2] != 'OK'})}"
    )
    # Requests in flight at SIGTERM finished OK during the drain.
    drained_ok = [o for o in outcomes if o[2] == "OK" and o[0] < sigterm_at < o[1]]
    assert drained_ok, "no request was in flight at SIGTERM; the test proves nothing"
    assert all(o[1] <= exited_at + 0.1 for o in drained_ok)
    # Readiness went NOT_SERVING at the start of the drain, before the process went away.
    not_serving = [t for t, status in health_changes if status == health_pb2.HealthCheckResponse.NOT_SERVING]
    assert any(sigterm_at <= t <= exited_at for t in not_serving), health_changes
    assert "stopped" in server.log_text()


async def _open_idle_stream(address: str) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall]:
    """A StreamRecognize call that has sent audio and stays open: accepted work that keeps a drain busy."""
    channel = grpc.aio.insecure_channel(address)
    call = emotion_pb2_grpc.EmotionRecognizerStub(channel).StreamRecognize(timeout=120)
    await call.write(
        pb.StreamRecognizeRequest(
            config=pb.StreamConfig(
                encoding=pb.PCM_ENCODING_F32LE,
                sample_rate_hz=16000,
                segmentation=pb.SegmentationConfig(mode=pb.SEGMENTATION_MODE_FIXED, window_s=1.0),
            )
        )
    )
    await call.write(pb.StreamRecognizeRequest(audio=tone(1.0).astype("<f4").tobytes()))
    await call.read()  # the first segment's result: the stream is established and counted in flight
    return channel, call


async def test_second_sigterm_forces_exit(tiny_repo: Path, server_procs: list[ServerProcess]) -> None:
    server = _start(Path(tiny_repo), "--drain-grace-s", "60")
    server_procs.append(server)
    channel, call = await _open_idle_stream(server.target)
    try:
        first_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        await wait_until_async(lambda: "draining" in server.log_text(), timeout_s=30,
                               message="the first SIGTERM started the drain")
        # The drain waits for the open stream: it is still served (positive evidence, not a sleep).
        await call.write(pb.StreamRecognizeRequest(audio=tone(1.0).astype("<f4").tobytes()))
        assert (await call.read()).WhichOneof("message") == "segment"
        # A second signal within _DOUBLE_SIGNAL_S of the first counts as a repeat (supervisors send two at
        # once); send this one clearly after that window.
        await wait_until_async(lambda: time.monotonic() >= first_at + _DOUBLE_SIGNAL_S + 0.5, timeout_s=10,
                               message="past the repeated-signal window")
        assert server.proc.poll() is None, "the drain did not wait for the open stream"
        second_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 30)
        assert time.monotonic() - second_at < 5.0
        assert rc != 0  # forced: not a clean drain
    finally:
        call.cancel()
        await channel.close()


async def test_grace_limit_ends_a_drain_that_cannot_finish(
    tiny_repo: Path, server_procs: list[ServerProcess]
) -> None:
    # The open stream keeps its connection open through the connection-age phase (its age GOAWAY comes within
    # age_goaway_wait_s); the grace is counted from there. A short age keeps the test short.
    server = _start(Path(tiny_repo), "--drain-grace-s", "1.5", "--max-connection-age-s", "1")
    server_procs.append(server)
    channel, call = await _open_idle_stream(server.target)
    try:
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 30)
        readiness_delay_s = Settings().drain_readiness_delay_s
        bound_s = readiness_delay_s + age_goaway_wait_s(1.0) + 1.5 + 5.0  # 5 s: a busy shared machine
        assert time.monotonic() - sent < bound_s, "the grace limit did not end the drain"
    finally:
        call.cancel()
        await channel.close()
