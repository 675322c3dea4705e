"""Real servers for the web front end: ``python -m emotion2vec_serving.server`` on free ports with the tiny
model, its HTTP listener (page + /v1 API) beside gRPC, and real encoded audio.

Two servers per session: ``open_server`` (no auth, default limits) and ``strict_server`` (a bearer token,
small limits: 4 MB uploads, 6 s recordings, 2 s of queued audio, so a 3 s file is shed with 429 and CORS
allowed for one origin).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from emotion2vec_serving.server.process import ServerProcess, free_port
from tests.polling import wait_until
from tests.server.audio_fixtures import encode, espeak_ng_wav, have_tool, make_signal

#: Tolerance of float comparisons between the web API and emotion.v1 (both float32 values).
TOL = 1e-6
TOKEN = "web-test-token-0123456789abcdef"
ALLOWED_ORIGIN = "https://allowed.example"
#: strict_server limits
MAX_UPLOAD_BYTES = 4_000_000
MAX_AUDIO_S = 6.0
MAX_QUEUE_AUDIO_S = 2.0

pytestmark = pytest.mark.skipif(not have_tool("ffmpeg"), reason="ffmpeg is needed to make test audio")


@dataclass
class WebServer:
    proc: ServerProcess
    http_port: int
    token: str | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def target(self) -> str:
        return self.proc.target

    def url(self, path: str) -> str:
        return self.base + path


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
         timeout: float = 60.0) -> Reply:
    """One HTTP request with the standard library; any status comes back as a Reply (no exception)."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def multipart(fields: Mapping[str, str], file_name: str, data: bytes,
              content_type: str = "application/octet-stream") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part (``file``) and text fields; (body, content type)."""
    boundary = "----emotion2vec-test-boundary-7d1f"
    out = bytearray()
    for name, value in fields.items():
        out += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode()
        out += f"{value}\r\n".encode()
    out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    out += data + f"\r\n--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def wait_for_http(server: WebServer, timeout_s: float = 30.0) -> None:
    """Bounded wait until the HTTP listener answers GET / (it starts with the gRPC port)."""

    def up() -> bool:
        try:
            return http("GET", server.url("/"), timeout=2).status == 200
        except OSError:
            return False

    wait_until(up, timeout_s, 0.05, f"HTTP listener on {server.base} never answered")


@pytest.fixture(scope="session")
def open_server(tiny_repo: Path) -> Iterator[WebServer]:
    port = free_port()
    with ServerProcess(tiny_repo, ["--no-warmup", "--http-port", str(port)], isolated_env=True) as proc:
        server = WebServer(proc, port)
        wait_for_http(server)
        yield server


@pytest.fixture(scope="session")
def strict_server(tiny_repo: Path) -> Iterator[WebServer]:
    from emotion2vec_serving.server.config import Settings

    port = free_port()
    args = ["--no-warmup", "--http-port", str(port), "--max-message-bytes", str(MAX_UPLOAD_BYTES),
            "--max-queue-audio-s", str(MAX_QUEUE_AUDIO_S), "--cors-allow-origins", ALLOWED_ORIGIN]
    # Issue 13 splits the limit: --max-audio-s bounds a whole recording, --max-duration-s one pass.
    args += ["--max-audio-s", str(MAX_AUDIO_S), "--max-segment-s", "4"] \
        if "max_audio_s" in Settings.__dataclass_fields__ else ["--max-duration-s", str(MAX_AUDIO_S)]
    with ServerProcess(tiny_repo, args, env={"EMOTION_AUTH_TOKENS": TOKEN}, isolated_env=True) as proc:
        server = WebServer(proc, port, token=TOKEN)
        wait_for_http(server)
        yield server


def close_json(actual: Any, expected: Any, path: str = "") -> None:
    """Deep equality of JSON-like values, floats within TOL."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert list(actual) == list(expected), (path, list(actual), list(expected))
        for key in expected:
            close_json(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            close_json(a, e, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert actual == pytest.approx(expected, abs=TOL), path
    else:
        assert actual == expected, path


def same_result(answer: dict[str, Any], expected: dict[str, Any]) -> None:
    """The answer is the CLI's result.json: same keys in the same order, same values (timings aside)."""
    assert list(answer) == list(expected)
    assert list(answer["timing"]) == list(expected["timing"])
    close_json({k: v for k, v in answer.items() if k != "timing"},
               {k: v for k, v in expected.items() if k != "timing"})


# ------------------------------------------------------------------------------------------ audio

#: Upload formats the page accepts, as (file name, audio_fixtures format).
FORMATS = [("tones.wav", "wav"), ("tones.mp3", "mp3"), ("tones.m4a", "m4a"), ("tones.flac", "flac"),
           ("tones.ogg", "ogg_vorbis"), ("tones.opus", "ogg_opus")]


def tone_file(fmt: str, duration_s: float, seed: int = 0, rate: int = 44100) -> bytes:
    return encode(make_signal(duration_s, rate, 1, seed=seed), rate, fmt)


@pytest.fixture(scope="session")
def upload_files() -> dict[str, bytes]:
    """One real file per accepted format (2 s, different signals so the scores differ)."""
    return {name: tone_file(fmt, 2.0, seed=i) for i, (name, fmt) in enumerate(FORMATS)}


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~7 s of espeak-ng speech: three sentences separated by 1 s silences, 16 kHz mono s16 WAV."""
    if not have_tool("espeak-ng"):
        pytest.skip("espeak-ng is needed for speech audio")
    import subprocess

    folder = tmp_path_factory.mktemp("speech")
    parts = []
    for i, text in enumerate(("I am so happy to see you today.", "Why did you do that to me?",
                              "This is the best news I have heard all year.")):
        src = folder / f"s{i}.wav"
        src.write_bytes(espeak_ng_wav(text))
        parts.append(src)
    out = folder / "speech.wav"
    inputs: list[str] = []
    for p in parts:
        inputs += ["-i", str(p)]
    n = len(parts)
    # Each sentence resampled to 16 kHz mono and followed by 1 s of silence (apad), then joined.
    graph = "".join(f"[{i}:a]aresample=16000,aformat=channel_layouts=mono,apad=pad_dur=1[a{i}];"
                    for i in range(n))
    graph += "".join(f"[a{i}]" for i in range(n)) + f"concat=n={n}:v=0:a=1[out]"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *inputs,
                    "-filter_complex", graph, "-map", "[out]", "-ar", "16000", "-ac", "1",
                    "-c:a", "pcm_s16le", str(out)], check=True, capture_output=True)
    return out
