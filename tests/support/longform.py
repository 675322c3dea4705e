"""Long generated speech for the long-recording tests and benchmarks: espeak-ng sentences laid end to end.

Each sentence is synthesised with espeak-ng (tests/support/audio.py), decoded to 16 kHz, trimmed
to its voiced part on the 20 ms grid the server's energy end-pointing uses (first and last 20 ms frames at
least -30 dBFS, well above the -40 dBFS threshold) and rounded to 16 bits. A recording is those clips at
known, grid-aligned positions with digital silence between them, so the test knows where the speech is
and what the server's segments should hold. ``concat_with_sox`` builds the same recording with sox from
the clips' WAV files (the tests check both agree).
"""

from __future__ import annotations

import functools
import io
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.server.audio.decode import decode_encoded
from emotion2vec_serving.server.audio.errors import AudioLimits
from tests.support.audio import espeak_ng_wav

Int16Array = npt.NDArray[np.int16]

RATE = 16000
GRID = 320  # the segmenter's 20 ms frame at 16 kHz

#: Short sentences without inner pauses (each becomes one segment when it stands alone).
SENTENCES = (
    "I am so happy to see you today.",
    "This is absolutely terrible news.",
    "Why would you do that to me?",
    "The weather is quite nice this morning.",
    "Please leave me alone right now.",
    "We won the match, what a day!",
)


@functools.lru_cache(maxsize=32)
def speech_clip(text: str, voice: str = "en") -> Int16Array:
    """One sentence as 16 kHz int16, trimmed to whole voiced 20 ms frames at both ends."""
    wav = espeak_ng_wav(text, voice)
    x = decode_encoded(wav, AudioLimits(max_duration_s=60.0))
    q = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    n = q.size // GRID
    frames = q[: n * GRID].astype(np.float64).reshape(n, GRID) / 32768.0
    loud = np.flatnonzero(np.mean(frames * frames, axis=1) >= 10 ** (-30 / 10))
    if loud.size == 0:
        raise ValueError(f"espeak-ng produced no voiced frame for {text!r}")
    clip: Int16Array = q[loud[0] * GRID : (loud[-1] + 1) * GRID].copy()
    return clip


@dataclass(frozen=True)
class Recording:
    """16 kHz int16 samples and the ``[start, end)`` sample spans of the clips inside them."""

    samples: Int16Array
    clips: tuple[tuple[int, int], ...]

    @property
    def duration_s(self) -> float:
        return self.samples.size / RATE

    def wav(self) -> bytes:
        return wav_bytes(self.samples)


def wav_bytes(samples: Int16Array, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, "<i2").tobytes())
    return buf.getvalue()


def _grid(seconds: float) -> int:
    return max(1, round(seconds * RATE / GRID)) * GRID


def recording(
    duration_s: float, gaps_s: tuple[float, ...] = (0.8, 1.2, 0.6, 1.5), lead_s: float = 0.5
) -> Recording:
    """Sentences (cycling through :data:`SENTENCES`) separated by silences (cycling through ``gaps_s``)
    until ``duration_s``; the end is silence."""
    total = _grid(duration_s)
    out = np.zeros(total, np.int16)
    pos = _grid(lead_s)
    spans: list[tuple[int, int]] = []
    i = 0
    while True:
        clip = speech_clip(SENTENCES[i % len(SENTENCES)])
        if pos + clip.size > total:
            break
        out[pos : pos + clip.size] = clip
        spans.append((pos, pos + clip.size))
        pos += clip.size + _grid(gaps_s[i % len(gaps_s)])
        i += 1
    return Recording(out, tuple(spans))


def two_clips(gap_s: float = 3.0, tail_s: float = 1.0) -> tuple[Recording, Int16Array, Int16Array]:
    """Two different sentences with ``gap_s`` of silence between them (and ``tail_s`` after)."""
    a, b = speech_clip(SENTENCES[0]), speech_clip(SENTENCES[1])
    lead, gap, tail = _grid(0.5), _grid(gap_s), _grid(tail_s)
    zeros = functools.partial(np.zeros, dtype=np.int16)
    samples = np.concatenate([zeros(lead), a, zeros(gap), b, zeros(tail)])
    first = (lead, lead + a.size)
    second = (first[1] + gap, first[1] + gap + b.size)
    return Recording(samples, (first, second)), a, b


def concat_with_sox(parts: list[Int16Array]) -> Int16Array:
    """The parts joined end to end by sox (WAV in, WAV out)."""
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for k, part in enumerate(parts):
            path = Path(tmp) / f"part{k}.wav"
            path.write_bytes(wav_bytes(part))
            names.append(str(path))
        out = Path(tmp) / "out.wav"
        subprocess.run(["sox", *names, str(out)], check=True, capture_output=True)
        with wave.open(str(out), "rb") as w:
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)

