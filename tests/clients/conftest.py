"""Fixtures for the client tests: a real server process serving the tiny model, and real audio files.

The server is started once per session as ``python -m server --model <tiny_repo>`` on free ports and
torn down with SIGTERM (its drain path) at the end.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotion2vec_serving.server.process import ServerProcess
from tests.support.clients import SR, AudioSet, running_server, speech_like


@pytest.fixture(scope="session")
def model_repo(request: pytest.FixtureRequest) -> Path:
    """The tiny model repository (``tiny_repo`` from tests/conftest.py)."""
    return Path(request.getfixturevalue("tiny_repo"))


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real ``python -m server`` process serving the tiny model."""
    with running_server(model_repo, tmp_path_factory.mktemp("server") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def target(server: ServerProcess) -> str:
    return server.target


# ------------------------------------------------------------------------------------------------ audio


@pytest.fixture(scope="session")
def audio(tmp_path_factory: pytest.TempPathFactory) -> AudioSet:
    """Real encoded files of several formats in one directory (plus a non-audio file to be ignored)."""
    d = tmp_path_factory.mktemp("audio")
    wav_samples = speech_like(6.0, SR, seed=1)
    sf.write(d / "speech.wav", wav_samples, SR, subtype="PCM_16")
    left = speech_like(4.0, 44100, seed=2)
    sf.write(d / "stereo.flac", np.stack([left, 0.5 * left], axis=1), 44100)
    sf.write(d / "short.ogg", speech_like(2.0, SR, seed=4, bursts=1), SR, format="OGG", subtype="VORBIS")
    mp3_src = d / "mp3_source.raw"
    mp3_src.write_bytes(speech_like(3.0, 22050, seed=3).tobytes())
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "f32le", "-ar", "22050", "-ac", "1", "-i", str(mp3_src),
         "-c:a", "libmp3lame", "-b:a", "64k", str(d / "voice.mp3")],
        check=True,
    )  # fmt: skip
    mp3_src.unlink()
    (d / "notes.txt").write_text("not audio\n")
    # The PCM_16 file is what the server decodes: compare against the quantised samples.
    decoded, _ = sf.read(d / "speech.wav", dtype="float32")
    return AudioSet(
        directory=d,
        wav=d / "speech.wav",
        flac=d / "stereo.flac",
        mp3=d / "voice.mp3",
        ogg=d / "short.ogg",
        wav_samples=decoded,
    )
