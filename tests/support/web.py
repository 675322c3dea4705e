"""Helpers of the web front end tests (tests/server/http): the server processes' handle, HTTP requests with
the standard library, multipart bodies, JSON comparison with the CLI's result, and real encoded audio."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from emotion2vec_serving.server.process import ServerProcess
from tests.support.audio import encode, make_signal
from tests.support.polling import wait_until

#: Tolerance of float comparisons between the web API and emotion.v1 (both float32 values).
TOL = 1e-6
TOKEN = "web-test-token-0123456789abcdef"
ALLOWED_ORIGIN = "https://allowed.example"
#: strict_server limits
MAX_UPLOAD_BYTES = 4_000_000
MAX_AUDIO_S = 6.0
MAX_QUEUE_AUDIO_S = 2.0


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

#: Upload formats the page accepts, as (file name, tests/support/audio.py format).
FORMATS = [("tones.wav", "wav"), ("tones.mp3", "mp3"), ("tones.m4a", "m4a"), ("tones.flac", "flac"),
           ("tones.ogg", "ogg_vorbis"), ("tones.opus", "ogg_opus")]


def tone_file(fmt: str, duration_s: float, seed: int = 0, rate: int = 44100) -> bytes:
    return encode(make_signal(duration_s, rate, 1, seed=seed), rate, fmt)
