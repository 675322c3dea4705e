"""Raw PCM at the model's rate that needs no resampling is converted on the event loop up to 8 s of samples
(issue 24: no thread hop for PCM that needs no decoding); longer audio still goes to the decode pool."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from emotion2vec_serving.batching import DynamicBatcher
from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.audio.errors import AudioLimits
from emotion2vec_serving.server.audio.pcm import decode_pcm
from emotion2vec_serving.server.calls.limits import CoreLimits
from emotion2vec_serving.server.calls.pipeline import Pipeline
from emotion2vec_serving.server.calls.types import AudioInput
from emotion2vec_serving.server.metrics import ServerMetrics

RATE = 16000
AUDIO = AudioLimits(max_duration_s=20.0, min_duration_s=0.1)
LIMITS = CoreLimits(audio=AUDIO, default_timeout_s=30.0, max_concurrent_streams=1, max_stream_duration_s=60.0,
                    stream_idle_timeout_s=30.0, stream_max_open_s=120.0)


class _CountingPool(ThreadPoolExecutor):
    """A real decode pool that remembers how many jobs it was given."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="test-decode")
        self.jobs = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


def _pcm(seconds: float, encoding: str) -> bytes:
    rng = np.random.default_rng(int(seconds * 10))
    x = 0.1 * rng.standard_normal(int(seconds * RATE))
    return (x.astype("<f4") if encoding == "f32le" else (x * 32767).astype("<i2")).tobytes()


@pytest.mark.parametrize(("seconds", "encoding", "hops"), [
    (6.0, "f32le", 0),   # 384 KB: went to the pool before (the cut-off was 256 KiB of bytes)
    (8.0, "f32le", 0),
    (8.0, "s16le", 0),
    (12.0, "f32le", 1),  # beyond 8 s of samples: the pool
    (12.0, "s16le", 1),
])
async def test_raw_pcm_at_the_model_rate_is_converted_inline_up_to_8_s(
    manifest: ModelManifest, seconds: float, encoding: str, hops: int
) -> None:
    pool = _CountingPool()
    batcher: DynamicBatcher[Any, Any] = DynamicBatcher(lambda batch: batch)
    pipeline = Pipeline(manifest, batcher, ServerMetrics(RATE), LIMITS, pool)
    data = _pcm(seconds, encoding)
    try:
        waveform, _ = await pipeline.decode(AudioInput.from_pcm(data, encoding, RATE))
    finally:
        pool.shutdown(wait=True)
    assert pool.jobs == hops
    expected = decode_pcm(data, "f32le" if encoding == "f32le" else "s16le", RATE, 1, AUDIO)
    np.testing.assert_array_equal(np.asarray(waveform), expected)
