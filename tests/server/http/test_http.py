"""The web front end's HTTP API without a browser: every status code, equality with emotion.v1, the
WebSocket stream, auth, CORS, security headers and the OpenAPI description, against real server processes."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from emotion2vec_serving.clients import EmotionClient
from emotion2vec_serving.clients.schema import recognition_json
from emotion2vec_serving.server.process import ServerProcess, free_port
from tests.support.metrics import metric_value
from tests.support.polling import wait_until_async
from tests.support.web import (
    ALLOWED_ORIGIN,
    MAX_AUDIO_S,
    MAX_QUEUE_AUDIO_S,
    MAX_UPLOAD_BYTES,
    TOKEN,
    TOL,
    WebServer,
    http,
    multipart,
    same_result,
    tone_file,
    wait_for_http,
)


def _auth(server: WebServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"} if server.token else {}


# ------------------------------------------------------------------------------------------ 200


def test_page_and_assets_with_strict_headers(open_server: WebServer) -> None:
    page = http("GET", open_server.url("/"))
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.body.decode()
    assert "<script>" not in html and "style=" not in html  # no inline code for the CSP to allow
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    total = len(page.body)
    for asset in ("app.js", "style.css", "worklet.js", "example.ogg"):
        reply = http("GET", open_server.url(f"/static/{asset}"))
        assert reply.status == 200, asset
        assert reply.headers["x-content-type-options"] == "nosniff"
        total += len(reply.body)
    script = http("GET", open_server.url("/static/app.js"))
    assert script.headers["content-type"].startswith("text/javascript")
    assert total < 300_000, f"page weight {total} bytes"


def test_recognize_equals_emotion_v1_for_raw_and_multipart_uploads(
    open_server: WebServer, upload_files: dict[str, bytes]
) -> None:
    with EmotionClient(open_server.target) as client:
        for name, data in upload_files.items():
            expected = client.recognize(data, granularity="frame", embedding=True)
            expected_json = recognition_json(expected, input_name=name)
            body, ctype = multipart({"granularity": "frame", "embedding": "true"}, name, data)
            reply = http("POST", open_server.url("/v1/recognize"), body, {"Content-Type": ctype})
            assert reply.status == 200, (name, reply.body[:300])
            answer = reply.json()
            embedding = answer.pop("embedding")
            same_result(answer, expected_json)
            assert expected.embedding is not None
            np.testing.assert_allclose(np.asarray(embedding, np.float32), expected.embedding, atol=TOL)

        data = upload_files["tones.wav"]
        plain = client.recognize(data)
        raw = http("POST", open_server.url("/v1/recognize?name=tones.wav"), data,
                   {"Content-Type": "audio/wav"})
        assert raw.status == 200
        same_result(raw.json(), recognition_json(plain, input_name="tones.wav"))
        # Query options work on a raw body too; smoothing changes the frames like the gRPC option does.
        smoothed = client.recognize(data, granularity="frame", smoothing_frames=5)
        reply = http("POST", open_server.url("/v1/recognize?granularity=frame&smoothing=5"), data)
        assert reply.status == 200
        same_result(reply.json(), recognition_json(smoothed))


def test_long_recording_segments_equal_emotion_v1(open_server: WebServer) -> None:
    card = http("GET", open_server.url("/v1/model")).json()
    long = tone_file("flac", card["max_duration_s"] + 5.0, seed=5, rate=16000)  # longer than one pass
    with EmotionClient(open_server.target) as client:
        expected = client.recognize(long, granularity="frame")
    assert len(expected.segments) >= 2
    reply = http("POST", open_server.url("/v1/recognize?granularity=frame&name=long.flac"), long)
    assert reply.status == 200, reply.body[:300]
    answer = reply.json()
    assert len(answer["segments"]) == len(expected.segments)
    schema_doc = http("GET", open_server.url("/openapi.json")).json()
    schema = schema_doc["components"]["schemas"]["Recognition"]
    assert set(answer) <= set(schema["properties"])
    for seg in answer["segments"]:
        assert set(seg) <= set(schema["properties"]["segments"]["items"]["properties"])
    for got in answer["segments"]:
        got.pop("timing")
    wanted = recognition_json(expected, input_name="long.flac")
    for seg in wanted["segments"]:
        seg.pop("timing")
    same_result(answer, wanted)

    with EmotionClient(open_server.target) as client:
        embedded = client.embed(long)
    reply = http("POST", open_server.url("/v1/embed"), long)
    assert reply.status == 200
    got = reply.json()
    np.testing.assert_allclose(np.asarray(got["embedding"], np.float32), embedded.embedding, atol=TOL)
    assert [(g["segment_id"], g["first_frame"], g["frame_count"]) for g in got["segments"]] == \
        [(e.segment_id, e.first_frame, e.frame_count) for e in embedded.segments]
    for g, e in zip(got["segments"], embedded.segments, strict=True):
        assert g["start_s"] == pytest.approx(e.start_s) and g["end_s"] == pytest.approx(e.end_s)
        np.testing.assert_allclose(np.asarray(g["embedding"], np.float32), e.embedding, atol=TOL)
    embedding_schema = schema_doc["components"]["schemas"]["Embedding"]
    assert set(got) <= set(embedding_schema["properties"])
    assert set(got["segments"][0]) <= set(embedding_schema["properties"]["segments"]["items"]["properties"])


def test_embed_and_model_equal_emotion_v1(open_server: WebServer, upload_files: dict[str, bytes]) -> None:
    data = upload_files["tones.flac"]
    with EmotionClient(open_server.target) as client:
        expected = client.embed(data, frames=True)
        info = client.model_info()
    body, ctype = multipart({"frames": "true"}, "tones.flac", data)
    reply = http("POST", open_server.url("/v1/embed"), body, {"Content-Type": ctype})
    assert reply.status == 200
    answer = reply.json()
    assert answer["input"] == "tones.flac" and answer["dim"] == expected.dim
    np.testing.assert_allclose(np.asarray(answer["embedding"], np.float32), expected.embedding, atol=TOL)
    assert expected.frames is not None
    np.testing.assert_allclose(np.asarray(answer["frames"], np.float32), expected.frames, atol=TOL)
    assert answer["model"] == expected.model.to_dict()

    card = http("GET", open_server.url("/v1/model")).json()
    assert card["model"] == info.model.to_dict()
    assert [(lb["index"], lb["name"], lb["name_zh"]) for lb in card["labels"]] == \
        [(lb.index, lb.name, lb.name_zh) for lb in info.labels]
    assert card["execution_provider"] == info.execution_provider
    assert card["embedding_dim"] == info.embedding_dim
    assert card["warnings"] == list(info.warnings) == []
    # The exporter's measurements as served: fp32 batches padded, so the padded batch measurement.
    assert card["max_abs_prob_vs_fp32"] == info.max_abs_prob_vs_fp32
    assert card["max_abs_prob_batch_vs_alone"] == info.max_abs_prob_batch_vs_alone
    assert info.max_abs_prob_batch_vs_alone is not None and 0.0 <= info.max_abs_prob_batch_vs_alone <= 1e-5


def test_openapi_describes_the_served_endpoints(open_server: WebServer) -> None:
    spec = http("GET", open_server.url("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {"/v1/recognize", "/v1/embed", "/v1/model", "/v1/stream"}
    recognition = spec["components"]["schemas"]["Recognition"]
    answer = http("POST", open_server.url("/v1/recognize?granularity=frame&embedding=true"),
                  tone_file("wav", 1.0)).json()
    # Every field the server sends is described, and every required one is sent.
    assert set(answer) <= set(recognition["properties"]), set(answer) - set(recognition["properties"])
    assert set(recognition["required"]) <= set(answer)
    card = http("GET", open_server.url("/v1/model")).json()
    assert set(card) <= set(spec["components"]["schemas"]["Model"]["properties"])
    for path, methods in spec["paths"].items():
        for method in methods:
            reply = http(method.upper(), open_server.url(path), b"" if method == "post" else None)
            assert reply.status != 404, (method, path)


# ------------------------------------------------------------------------------------------ errors


def test_400_for_audio_and_options_the_server_cannot_use(open_server: WebServer) -> None:
    data = tone_file("wav", 1.0)
    cases = {
        "/v1/recognize": b"this is not audio at all, just some text bytes",
        "/v1/recognize?granularity=word": data,
        "/v1/recognize?embedding=maybe": data,
        "/v1/recognize?smoothing=-2": data,
        "/v1/recognize?timeout_s=0": data,
        "/v1/embed": b"\x00" * 1000,
    }
    for path, body in cases.items():
        reply = http("POST", open_server.url(path), body)
        assert reply.status == 400, (path, reply.status, reply.body[:200])
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.json()["error"], path
    empty_form, ctype = multipart({"granularity": "frame"}, "x.wav", b"")
    no_file = empty_form.replace(b'name="file"; filename="x.wav"', b'name="other"')
    reply = http("POST", open_server.url("/v1/recognize"), no_file, {"Content-Type": ctype})
    assert reply.status == 400 and "file" in reply.json()["error"]


def test_400_too_long_and_413_too_large(strict_server: WebServer) -> None:
    long = tone_file("flac", MAX_AUDIO_S + 2.0, rate=16000)
    reply = http("POST", strict_server.url("/v1/recognize"), long, _auth(strict_server))
    assert reply.status == 400, reply.body[:300]
    assert "long" in reply.json()["error"]

    big = b"\x00" * (MAX_UPLOAD_BYTES + 200_000)
    reply = http("POST", strict_server.url("/v1/recognize"), big, _auth(strict_server))
    assert reply.status == 413 and str(MAX_UPLOAD_BYTES) in reply.json()["error"]
    body, ctype = multipart({}, "big.wav", big)
    reply = http("POST", strict_server.url("/v1/recognize"), body,
                 {**_auth(strict_server), "Content-Type": ctype})
    assert reply.status == 413


def test_404_for_unknown_paths(open_server: WebServer) -> None:
    for method, path in (("GET", "/v1/nothing"), ("POST", "/v1/recognise"), ("GET", "/static/missing.js"),
                         ("GET", "/static/..%2fweb.py")):
        reply = http(method, open_server.url(path), b"" if method == "POST" else None)
        assert reply.status == 404, path
        assert reply.json()["error"]


def test_401_without_a_valid_token_and_200_with_it(strict_server: WebServer) -> None:
    data = tone_file("wav", 1.0)
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
        reply = http("POST", strict_server.url("/v1/recognize"), data, headers)
        assert reply.status == 401, headers
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "token" in reply.json()["error"]
        assert http("GET", strict_server.url("/v1/model"), None, headers).status == 401
    assert http("POST", strict_server.url("/v1/recognize"), data, _auth(strict_server)).status == 200
    # The page itself and its description are public: they hold no data.
    assert http("GET", strict_server.url("/")).status == 200
    assert http("GET", strict_server.url("/openapi.json")).status == 200
    text = strict_server.proc.scrape()
    assert metric_value(text, "emotion_requests_total", rpc="Recognize", code="UNAUTHENTICATED",
                        protocol="http") >= 3


def test_429_with_retry_after_when_the_queue_is_full(strict_server: WebServer) -> None:
    # Queued audio is bounded at MAX_QUEUE_AUDIO_S: a longer recording is shed at once, a short one runs.
    busy = tone_file("wav", MAX_QUEUE_AUDIO_S + 1.0, rate=16000)
    reply = http("POST", strict_server.url("/v1/recognize"), busy, _auth(strict_server))
    assert reply.status == 429, reply.body[:300]
    assert int(reply.headers["retry-after"]) >= 1 and int(reply.headers["retry-after-ms"]) >= 1
    assert "overloaded" in reply.json()["error"]
    ok = http("POST", strict_server.url("/v1/recognize"), tone_file("wav", 1.0), _auth(strict_server))
    assert ok.status == 200


def test_cors_is_off_by_default_and_follows_the_allow_list(open_server: WebServer,
                                                           strict_server: WebServer) -> None:
    origin = {"Origin": ALLOWED_ORIGIN}
    reply = http("GET", open_server.url("/v1/model"), None, origin)
    assert reply.status == 200 and "access-control-allow-origin" not in reply.headers
    preflight = {**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    assert http("OPTIONS", open_server.url("/v1/recognize"), None, preflight).status == 403

    reply = http("OPTIONS", strict_server.url("/v1/recognize"), None, preflight)
    assert reply.status == 204 and reply.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in reply.headers["access-control-allow-headers"].lower()
    reply = http("GET", strict_server.url("/v1/model"), None, {**origin, **_auth(strict_server)})
    assert reply.status == 200 and reply.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    other = {"Origin": "https://evil.example"}
    reply = http("GET", strict_server.url("/v1/model"), None, {**other, **_auth(strict_server)})
    assert "access-control-allow-origin" not in reply.headers
    assert http("OPTIONS", strict_server.url("/v1/recognize"), None,
                {**preflight, **other}).status == 403


# ------------------------------------------------------------------------------------------ WebSocket


def _pcm16(path: Path) -> tuple[bytes, int]:
    import wave

    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return w.readframes(w.getnframes()), w.getframerate()


async def _ws_stream(url: str, pcm: bytes, rate: int, *, config_extra: dict[str, Any] | None = None,
                     protocols: tuple[str, ...] = ("emotion.v1",), headers: dict[str, str] | None = None,
                     chunk_bytes: int = 3200) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(url, protocols=protocols, headers=headers or {}) as ws:
        await ws.send_json({"encoding": "s16le", "sample_rate_hz": rate, **(config_extra or {})})
        for i in range(0, len(pcm), chunk_bytes):
            await ws.send_bytes(pcm[i:i + chunk_bytes])
        await ws.send_json({"end": True})
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                messages.append(json.loads(msg.data))
        messages.append({"type": "closed", "code": ws.close_code})
    return messages


async def test_websocket_stream_equals_stream_recognize(open_server: WebServer, speech_wav: Path) -> None:
    pcm, rate = _pcm16(speech_wav)
    url = open_server.url("/v1/stream").replace("http://", "ws://")
    messages = await _ws_stream(url, pcm, rate)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "started" and kinds[-2:] == ["summary", "closed"], kinds
    segments = [m for m in messages if m["type"] == "segment"]
    summary = messages[-2]
    assert len(segments) >= 2 and summary["segments"] == len(segments)

    def grpc_stream() -> list[Any]:
        with EmotionClient(open_server.target) as client:
            chunks = [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]  # the WebSocket's chunks
            return list(client.stream(chunks, sample_rate=rate, encoding="s16le"))

    expected = await asyncio.to_thread(grpc_stream)
    exp_segments = [e for e in expected if hasattr(e, "segment_id")]
    assert len(exp_segments) == len(segments)
    for got, exp in zip(segments, exp_segments, strict=True):
        assert got["segment_id"] == exp.segment_id and got["emotion"] == exp.label
        assert got["start_s"] == pytest.approx(exp.start_s, abs=1e-6)
        assert got["end_s"] == pytest.approx(exp.end_s, abs=1e-6)
        for label, score in exp.scores.items():
            assert got["scores"][label] == pytest.approx(score, abs=1e-5)
    exp_summary = expected[-1]
    assert summary["emotion"] == exp_summary.label
    assert summary["voiced_s"] == pytest.approx(exp_summary.voiced_s, abs=1e-6)
    text = open_server.proc.scrape()
    assert metric_value(text, "emotion_requests_total", rpc="StreamRecognize", code="OK", protocol="ws") >= 1


async def test_websocket_auth_errors_and_bad_config(strict_server: WebServer, open_server: WebServer) -> None:
    pcm = (np.sin(np.arange(16000) / 5) * 8000).astype("<i2").tobytes()
    url = strict_server.url("/v1/stream").replace("http://", "ws://")
    # No token: the upgrade succeeds (browsers cannot send headers), then an error message and close 4401.
    messages = await _ws_stream(url, pcm, 16000)
    assert messages[0]["type"] == "error" and messages[0]["status"] == 401
    assert messages[-1]["code"] == 4401
    # The token as a subprotocol, or in the config message, or as a header.
    for kwargs in ({"protocols": ("emotion.v1", f"bearer.{TOKEN}")}, {"config_extra": {"token": TOKEN}},
                   {"headers": {"Authorization": f"Bearer {TOKEN}"}}):
        extra: dict[str, Any] = {"segmentation": {"max_segment_s": 3.0}}  # this server's maximum is 4 s
        extra.update(kwargs.pop("config_extra", {}))  # type: ignore[call-overload]
        messages = await _ws_stream(url, pcm, 16000, config_extra=extra, **kwargs)  # type: ignore[arg-type]
        kinds = [m["type"] for m in messages]
        assert kinds[0] == "started" and kinds[-2:] == ["summary", "closed"], (kwargs, messages)
    # A wrong header token is refused before the upgrade.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, headers={"Authorization": "Bearer wrong-token-wrong-token"})
        assert refused.value.status == 401

    open_url = open_server.url("/v1/stream").replace("http://", "ws://")
    for config in ({"encoding": "mp3"}, {"sample_rate_hz": 0}, {"segmentation": {"mode": "words"}},
                   {"unknown_field": 1}):
        messages = await _ws_stream(open_url, pcm, 16000, config_extra=config)
        assert messages[0]["type"] == "error" and messages[0]["status"] == 400, (config, messages)
        assert messages[-1]["code"] == 4400
    # A plain GET on the stream endpoint explains itself.
    assert http("GET", open_server.url("/v1/stream")).status == 400


# ------------------------------------------------------------------------------------------ drain (503)


async def test_503_once_the_core_drains(tiny_repo: Path) -> None:
    """What the web API answers when the core refuses new work for the drain (``EmotionServer.stop``
    closes the listener soon after, but a call already on a connection meets exactly this)."""
    import dataclasses

    from emotion2vec_serving.modelrepo.manifest import load_manifest
    from tests.support.servers import SERVER_SETTINGS, serving

    async with serving(load_manifest(tiny_repo), dataclasses.replace(SERVER_SETTINGS, http_port=0)) as start:
        running = await start()
        base = f"http://127.0.0.1:{running.server.http_port}"
        data = tone_file("wav", 1.0)
        async with aiohttp.ClientSession() as session:
            async with session.post(base + "/v1/recognize", data=data) as r:
                assert r.status == 200
            core = running.server.core
            assert core is not None
            core.begin_drain()
            async with session.post(base + "/v1/recognize", data=data) as r:
                assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
                assert "shutting down" in (await r.json())["error"]
            async with session.ws_connect(base.replace("http", "ws") + "/v1/stream") as ws:
                await ws.send_json({"encoding": "s16le", "sample_rate_hz": 16000})
                refusal = await ws.receive_json(timeout=10)
                assert refusal["type"] == "error" and refusal["status"] == 503
                assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == 4503
        text = running.scrape()
        assert metric_value(text, "emotion_requests_total", rpc="Recognize", code="UNAVAILABLE",
                            protocol="http") == 1
        assert metric_value(text, "emotion_requests_total", rpc="StreamRecognize", code="UNAVAILABLE",
                            protocol="ws") == 1


async def test_sigterm_lets_an_open_stream_finish_then_the_listener_closes(tiny_repo: Path) -> None:
    port = free_port()
    with ServerProcess(tiny_repo, ["--no-warmup", "--http-port", str(port), "--drain-grace-s", "20"],
                       isolated_env=True) as proc:
        server = WebServer(proc, port)
        await asyncio.to_thread(wait_for_http, server)
        url = server.url("/v1/stream").replace("http://", "ws://")
        pcm = (np.sin(np.arange(32000) / 5) * 8000).astype("<i2").tobytes()
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(url, protocols=("emotion.v1",)) as ws:
            await ws.send_json({"encoding": "s16le", "sample_rate_hz": 16000})
            started = await ws.receive_json(timeout=10)
            assert started["type"] == "started"
            await ws.send_bytes(pcm[:16000])
            proc.proc.send_signal(signal.SIGTERM)

            def closed() -> bool:  # no new connections once the drain is under way
                try:
                    http("GET", server.url("/v1/model"), timeout=2)
                except OSError:
                    return True
                return False

            await wait_until_async(lambda: asyncio.to_thread(closed), 15.0, 0.05,
                                   "the HTTP listener stayed open")
            # The stream accepted before the drain still runs to its summary.
            await ws.send_bytes(pcm[16000:])
            await ws.send_json({"end": True})
            kinds = []
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    kinds.append(json.loads(msg.data)["type"])
            assert kinds and kinds[-1] == "summary", kinds
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0


def test_the_web_front_end_speaks_no_grpc() -> None:
    """The HTTP front ends are adapters over the core: no gRPC, no protobuf stubs, and of the client package
    only the wire constants and the result JSON schema (both standard library only)."""
    import ast

    folder = Path(__file__).resolve().parents[3] / "server" / "http"
    modules = sorted(folder.glob("*.py"))
    assert {"page.py", "v1.py", "websocket.py", "multipart.py", "openapi.py", "auth.py"} <= {
        p.name for p in modules}
    shared = {"emotion2vec_serving.clients.wire", "emotion2vec_serving.clients.schema"}
    for path in modules:
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        bad = {m for m in imported if m.split(".")[0] in {"grpc", "google", "emotion"}
               or (m.startswith("emotion2vec_serving.clients") and m not in shared)
               or m.startswith("emotion2vec_serving.server.grpc")}
        assert not bad, (path.name, bad)
