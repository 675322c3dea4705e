"""Padding a batch (server/runtime/runner.py ``_pad_batch``): the reused per-thread buffer gives exactly the
zero-padded batch, whatever an earlier, larger batch left in it, and never crosses threads."""

from __future__ import annotations

import threading

import numpy as np

from emotion2vec_serving.server.runtime.runner import PAD_SCRATCH_MAX_SAMPLES, PadScratch, _pad_batch


def _reference(batch: list[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(batch), width), dtype=np.float32)
    for i, w in enumerate(batch):
        out[i, : len(w)] = w
    return out


def test_the_reused_buffer_pads_exactly_after_larger_batches() -> None:
    rng = np.random.default_rng(0)
    scratch = PadScratch()
    shapes = [(8, 48000), (3, 16000), (5, 30000), (2, 1600), (8, 48000)]  # large, then smaller: stale data
    previous = None
    for n, width in shapes:
        batch = [(rng.standard_normal(int(rng.integers(width // 2, width + 1))) + 5).astype(np.float32)
                 for _ in range(n - 1)] + [np.full(width, 7.0, dtype=np.float32)]
        got = _pad_batch(batch, width, scratch)
        np.testing.assert_array_equal(got, _reference(batch, width))
        assert got.flags.c_contiguous and got.dtype == np.float32 and got.shape == (n, width)
        if previous is not None:
            assert np.shares_memory(got, previous), "the thread's buffer is reused, not reallocated"
        previous = got
    assert scratch.flat.size == 8 * 48000  # grown to the largest batch only


def test_a_batch_past_the_cap_gets_its_own_array() -> None:
    scratch = PadScratch()
    small = _pad_batch([np.ones(100, np.float32), np.ones(50, np.float32)], 100, scratch)
    width = PAD_SCRATCH_MAX_SAMPLES // 2 + 1
    big_batch = [np.ones(width, np.float32), np.ones(10, np.float32)]
    big = _pad_batch(big_batch, width, scratch)
    np.testing.assert_array_equal(big, _reference(big_batch, width))
    assert not np.shares_memory(big, small) and scratch.flat.size == 200


def test_threads_pad_into_buffers_of_their_own() -> None:
    scratch = PadScratch()
    results: dict[str, np.ndarray] = {}
    barrier = threading.Barrier(2)

    def pad(name: str, value: float) -> None:
        barrier.wait()
        results[name] = _pad_batch([np.full(300, value, np.float32), np.full(200, value, np.float32)], 300,
                                   scratch)

    threads = [threading.Thread(target=pad, args=(name, v)) for name, v in (("a", 1.0), ("b", 2.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not np.shares_memory(results["a"], results["b"])
    assert results["a"][0, 0] == 1.0 and results["b"][0, 0] == 2.0 and results["a"][1, 250] == 0.0


def test_one_exact_waveform_is_not_copied() -> None:
    w = np.arange(10, dtype=np.float32)
    assert np.shares_memory(_pad_batch([w], 10, PadScratch()), w)
