"""A generated recording archive for the archive-mode and cluster tests: real encoded files in nested
folders, five formats, mono and stereo, one broken file and one empty file; and espeak-ng clips of a given
voice and pitch (:func:`espeak_clips`), so that tests can make recordings of clearly different speakers.

Speech is espeak-ng's where the tool is installed (CI has it), else :func:`tests.support.clients.speech_like`.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tests.support.audio import encode, have_tool

__all__ = ["SENTENCES", "Archive", "espeak_clip", "espeak_clips", "make_archive", "write_clips"]

FloatArray = npt.NDArray[np.float32]
SR = 16000

SENTENCES = (
    "I have been waiting on the line for forty minutes and nobody helps me.",
    "Thank you so much, that solves my problem completely.",
    "Could you please tell me the balance of my account?",
    "This is the third time I am calling about the same broken router.",
    "Good morning, how can I help you today?",
    "I am afraid the delivery will be late again this week.",
    "That is wonderful news, I will tell my family tonight.",
    "Please hold while I transfer you to the billing department.",
)


@functools.lru_cache(maxsize=256)
def espeak_clip(text: str, voice: str = "en", pitch: int = 50, rate: int = SR) -> FloatArray:
    """One espeak-ng sentence as mono float32 at ``rate`` (speech_like noise bursts without espeak-ng)."""
    if not have_tool("espeak-ng"):
        from tests.support.clients import speech_like

        return speech_like(2.5, rate, seed=hash((text, voice, pitch)) % 1000)

    wav = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout  # fmt: skip
    # espeak-ng's streaming header declares no length: read it through ffmpeg's tolerant WAV demuxer.
    proc = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", "pipe:0", "-f", "f32le",
         "-ac", "1", "-ar", str(rate), "pipe:1"],
        input=wav, capture_output=True, check=True,
    )  # fmt: skip
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


def espeak_clips(n: int, voice: str = "en", pitch: int = 50, rate: int = SR) -> list[FloatArray]:
    """``n`` clips of one voice at one pitch (espeak-ng ``-v voice -p pitch``, pitch 0-99), each a different
    sentence (cycling through :data:`SENTENCES`, with a number appended past the first round)."""
    out = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        if i >= len(SENTENCES):
            text = f"{text} Number {i}."
        out.append(espeak_clip(text, voice, pitch, rate))
    return out


def write_clips(folder: Path, n: int, voice: str = "en", pitch: int = 50, fmt: str = "wav",
                prefix: str = "clip") -> list[Path]:  # fmt: skip
    """:func:`espeak_clips` encoded as ``fmt`` files (``fmt``: a key of ``tests.support.audio.FORMATS``)
    in ``folder``."""
    from tests.support.audio import FORMATS

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, clip in enumerate(espeak_clips(n, voice, pitch)):
        path = folder / f"{prefix}_{i:03d}.{FORMATS[fmt][0]}"
        path.write_bytes(encode(clip, SR, fmt))
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Archive:
    root: Path
    recordings: tuple[Path, ...]  # every audio file the archive holds (broken and empty ones included)
    stereo: tuple[Path, ...]
    broken: Path  # random bytes with an audio suffix
    empty: Path  # zero bytes

    @property
    def good(self) -> tuple[Path, ...]:
        return tuple(p for p in self.recordings if p not in (self.broken, self.empty))


@functools.lru_cache(maxsize=8)
def _encoded(fmt: str, index: int, stereo: bool) -> bytes:
    agent = espeak_clip(SENTENCES[index % len(SENTENCES)], "en", 35)
    if not stereo:
        return encode(agent, SR, fmt)
    # A call: the agent (low pitch) on the left, the customer (high pitch) on the right, different words.
    customer = espeak_clip(SENTENCES[(index + 3) % len(SENTENCES)], "en", 80)
    n = max(agent.size, customer.size)
    both = np.zeros((n, 2), np.float32)
    both[: agent.size, 0] = agent
    both[: customer.size, 1] = customer
    return encode(both, SR, fmt)


#: (relative path, ffmpeg format, stereo)
_LAYOUT = (
    ("2024/01/call_a.wav", "wav", True),
    ("2024/01/call_b.mp3", "mp3", False),
    ("2024/02/deep/call_c.flac", "flac", True),
    ("2024/02/call_d.ogg", "ogg_vorbis", False),
    ("agents/x/call_e.m4a", "m4a", True),
    ("call_f.wav", "wav", False),
)


def make_archive(root: Path, copies: int = 1) -> Archive:
    """Write the archive under ``root`` (``copies`` > 1 repeats the layout under ``copy_1/``... with the same
    contents) and a ``notes.txt`` that archive mode must ignore."""
    recordings: list[Path] = []
    stereo: list[Path] = []
    for c in range(copies):
        base = root if c == 0 else root / f"copy_{c}"
        for i, (rel, fmt, is_stereo) in enumerate(_LAYOUT):
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_encoded(fmt, i, is_stereo))
            recordings.append(path)
            if is_stereo:
                stereo.append(path)
    broken = root / "2024/02/broken.mp3"
    broken.write_bytes(np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    empty = root / "agents/empty.wav"
    empty.write_bytes(b"")
    (root / "agents/notes.txt").write_text("not audio\n")
    recordings += [broken, empty]
    return Archive(root, tuple(sorted(recordings)), tuple(stereo), broken, empty)
