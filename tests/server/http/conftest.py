"""Real servers for the web front end: ``python -m emotion2vec_serving.server`` on free ports with the tiny
model, its HTTP listener (page + /v1 API) beside gRPC, and real encoded audio.

Two servers per session: ``open_server`` (no auth, default limits) and ``strict_server`` (a bearer token,
small limits: 4 MB uploads, 6 s recordings, 2 s of queued audio, so a 3 s file is shed with 429 and CORS
allowed for one origin).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emotion2vec_serving.server.process import free_port
from tests.support.audio import espeak_ng_wav, have_tool
from tests.support.servers import server_process
from tests.support.web import (
    ALLOWED_ORIGIN,
    FORMATS,
    MAX_AUDIO_S,
    MAX_QUEUE_AUDIO_S,
    MAX_UPLOAD_BYTES,
    TOKEN,
    WebServer,
    tone_file,
    wait_for_http,
)

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this folder makes its audio with ffmpeg. (A ``pytestmark`` in a conftest is ignored by
    pytest: it marks nothing.) Under CI a skip fails the run (tests/support/ci_skips.py)."""
    no_ffmpeg = pytest.mark.skipif(not have_tool("ffmpeg"), reason="ffmpeg is needed to make test audio")
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(no_ffmpeg)


@pytest.fixture(scope="session")
def open_server(tiny_repo: Path) -> Iterator[WebServer]:
    port = free_port()
    flags = ("--http-port", str(port))
    with server_process(tiny_repo, *flags, base=("--no-warmup",), isolated_env=True) as proc:
        server = WebServer(proc, port)
        wait_for_http(server)
        yield server


@pytest.fixture(scope="session")
def strict_server(tiny_repo: Path) -> Iterator[WebServer]:
    from emotion2vec_serving.server.config import Settings

    port = free_port()
    args = ["--http-port", str(port), "--max-message-bytes", str(MAX_UPLOAD_BYTES),
            "--max-queue-audio-s", str(MAX_QUEUE_AUDIO_S), "--cors-allow-origins", ALLOWED_ORIGIN]
    # Issue 13 splits the limit: --max-audio-s bounds a whole recording, --max-duration-s one pass.
    args += ["--max-audio-s", str(MAX_AUDIO_S), "--max-segment-s", "4"] \
        if "max_audio_s" in Settings.__dataclass_fields__ else ["--max-duration-s", str(MAX_AUDIO_S)]
    with server_process(tiny_repo, *args, base=("--no-warmup",), env={"EMOTION_AUTH_TOKENS": TOKEN},
                        isolated_env=True) as proc:
        server = WebServer(proc, port, token=TOKEN)
        wait_for_http(server)
        yield server


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
