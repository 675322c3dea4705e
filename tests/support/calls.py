"""emotion.v1 requests the tests send: deterministic signals as raw f32le PCM, and the scores of an answer."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import numpy as np
from emotion.v1 import emotion_pb2 as pb

from tests.support.audio import make_signal
from tests.support.servers import Running

__all__ = ["RATE", "audio_of", "raw_request", "recognize", "scores", "tone"]

RATE = 16000


def tone(duration_s: float, *, freq_hz: float = 220.0, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A deterministic float32 mono test signal (tone + a little noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq_hz * t) + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def raw_request(samples: np.ndarray, rate: int = RATE, **fields: Any) -> pb.RecognizeRequest:
    """A Recognize request carrying ``samples`` as raw f32le PCM."""
    audio = pb.Audio(
        raw=pb.RawAudio(
            data=np.asarray(samples, "<f4").tobytes(),
            encoding=pb.PCM_ENCODING_F32LE,
            sample_rate_hz=rate,
            channels=1,
        )
    )
    return pb.RecognizeRequest(audio=audio, **fields)


def scores(response: pb.RecognizeResponse) -> np.ndarray:
    """The utterance scores of an answer, in the order sent."""
    return np.array([s.score for s in response.utterance.scores], np.float32)


def audio_of(n_samples: int, seed: int = 0) -> pb.Audio:
    """Exactly ``n_samples`` of ``make_signal`` at 16 kHz as raw f32le PCM."""
    sig = make_signal(n_samples / RATE, rate=RATE, seed=seed)[:n_samples, 0]
    assert sig.shape[0] == n_samples
    return pb.Audio(raw=pb.RawAudio(data=sig.astype("<f4").tobytes(), encoding=pb.PCM_ENCODING_F32LE,
                                    sample_rate_hz=RATE, channels=1))


def recognize(
    running: Running, n_samples: int, seed: int = 0, **kwargs: float
) -> Awaitable[pb.RecognizeResponse]:
    """Recognize (with the embedding) of ``audio_of(n_samples, seed)`` on an in-process server."""
    call: Awaitable[pb.RecognizeResponse] = running.stub.Recognize(
        pb.RecognizeRequest(audio=audio_of(n_samples, seed), return_embedding=True), **kwargs)
    return call
