"""The online latency model: recovers known cost curves and tells whether batching pays."""

from __future__ import annotations

import math
import random

import pytest

from emotion2vec_serving.batching import LatencyModel

SR = 16000


def feed(model: LatencyModel, f, runs: int = 200, seed: int = 0, noise: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    for _ in range(runs):
        n = rng.randint(1, 8)
        L = int(rng.uniform(1, 30) * SR)
        model.observe(n, L, f(n, L) * (1 + rng.uniform(-noise, noise)))


def test_not_ready_before_enough_runs() -> None:
    model = LatencyModel(min_observations=8)
    assert model.predict(1, SR) is None and model.batching_pays(SR, 8) is None
    assert model.best_batch_size(SR, 8) == 8  # explores with what is queued
    assert model.estimated_drain_s(10, SR * 10, 8) == 0.0


def test_recovers_quadratic_cost_exactly() -> None:
    model = LatencyModel()
    feed(model, lambda n, L: 0.01 + 0.002 * n * L / SR + 0.0001 * n * (L / SR) ** 2)
    a, b, c, d = model.coefficients  # type: ignore[misc]
    assert a == pytest.approx(0.01, rel=1e-3)
    assert b == pytest.approx(0.002, rel=1e-3)
    assert c == pytest.approx(0.0001, rel=1e-3)
    assert d == pytest.approx(0.0, abs=1e-6)
    assert model.predict(4, 10 * SR) == pytest.approx(0.01 + 0.08 + 0.04, rel=1e-3)


def test_gpu_like_batching_pays_cpu_like_does_not() -> None:
    gpu, cpu = LatencyModel(), LatencyModel()
    feed(gpu, lambda n, L: 0.02 + 0.002 * n * L / SR, noise=0.05)
    # Measured on 2 cores: 3.2 audio-s/s at batch 1, 2.7 at batch 8.
    feed(cpu, lambda n, L: 0.005 + 0.31 * n * L / SR * (1 + 0.025 * (n - 1)), noise=0.05)
    assert gpu.batching_pays(5 * SR, 8) is True and gpu.best_batch_size(5 * SR, 8) == 8
    assert cpu.batching_pays(5 * SR, 8) is False and cpu.best_batch_size(5 * SR, 8) == 1


def test_window_forgets_an_old_regime() -> None:
    model = LatencyModel(window=64)
    feed(model, lambda n, L: 0.02 + 0.002 * n * L / SR)
    assert model.batching_pays(5 * SR, 8)
    feed(model, lambda n, L: 0.31 * n * L / SR * (1 + 0.03 * (n - 1)), runs=64, seed=1)
    assert not model.batching_pays(5 * SR, 8)


def test_drain_estimate_follows_the_fit() -> None:
    model = LatencyModel()
    feed(model, lambda n, L: 0.31 * n * L / SR)  # no fixed cost: batch size 1
    assert model.estimated_drain_s(10, 10 * 5 * SR, 8) == pytest.approx(10 * 0.31 * 5, rel=0.02)
    assert model.estimated_drain_s(10, 10 * 5 * SR, 8, instances=2) == pytest.approx(
        10 * 0.31 * 5 / 2, rel=0.02
    )


def test_explore_due_after_only_single_runs() -> None:
    model = LatencyModel(explore_every=3)
    for _ in range(3):
        model.observe(1, SR, 0.3)
    assert model.explore_due
    model.observe(2, SR, 0.6)
    assert not model.explore_due


def short_noisy_runs(model: LatencyModel, seed: int) -> None:
    """1–3 s clips on a loaded machine: one run in five delayed by up to 0.3 s by the scheduler."""
    rng = random.Random(seed)
    for _ in range(20):
        sec = rng.choice([0.5, 1.0, 1.5, 2.0, 3.0])
        t = 0.004 + 0.003 * sec + 0.0002 * sec * sec
        model.observe(1, int(sec * SR), t + (rng.uniform(0, 0.3) if rng.random() < 0.2 else 0.0))


def test_longer_than_measured_scales_linearly_from_the_longest_run() -> None:
    # What failed in CI: a server that had only run short clips predicted ~24 s for a 0.27-s run of a
    # 30-s segment (the quadratic term fitted on noise) and refused it against a 30-s deadline.
    for seed in range(200):
        model = LatencyModel()
        short_noisy_runs(model, seed)
        edge, far = model.predict(1, 3 * SR), model.predict(1, 30 * SR)
        assert edge is not None and far is not None
        assert far == pytest.approx(edge * 10, rel=1e-9)
        assert far < 5.0, seed  # the noisiest fit of the 200 stays far below 27 s
        edge4, far4 = model.predict(4, 3 * SR), model.predict(4, 30 * SR)
        assert edge4 is not None and far4 == pytest.approx(edge4 * 10, rel=1e-9)
    # Within the measured lengths the fitted curve is used as it is.
    model = LatencyModel()
    feed(model, lambda n, L: 0.01 + 0.002 * n * L / SR + 0.0001 * n * (L / SR) ** 2)
    assert model.predict(1, 29 * SR) == pytest.approx(0.01 + 0.058 + 0.0841, rel=1e-3)


def test_longest_measured_follows_the_window() -> None:
    model = LatencyModel(window=8, min_observations=4)
    model.observe(1, 20 * SR, 2.0)
    for _ in range(8):
        model.observe(1, SR, 0.1)  # the 20-s run leaves the window
    for _ in range(4):
        model.observe(1, 2 * SR, 0.2)
    # Cost 0.1 s per audio second; 10 s is now beyond the longest run in the window (2 s): linear from there.
    assert model.predict(1, 10 * SR) == pytest.approx(1.0, rel=1e-6)


def test_a_dominant_run_leaving_the_window_leaves_no_rounding_residue() -> None:
    """Multi-item and long runs mixed with many single short ones: when the last run with a nonzero
    ``n(n-1)ℓ`` term (or a 30-s segment) leaves the sliding window, subtracting it must not leave a negative
    residue on the normal matrix's diagonal. It once did, and ``math.sqrt`` raised "math domain error"
    inside the batcher: a 10-minute recording failed with INTERNAL (seen in CI)."""
    rng = random.Random(1)
    for _trial in range(300):
        model = LatencyModel(window=8, min_observations=2)
        for _ in range(40):
            if rng.random() < 0.15:
                model.observe(rng.randint(1, 16), int(rng.uniform(10, 30) * 16000), rng.uniform(0.1, 3))
            else:
                model.observe(1, int(rng.uniform(0.05, 3) * 16000), rng.uniform(0.001, 0.3))
            prediction = model.predict(2, 16000)
            assert prediction is None or (math.isfinite(prediction) and prediction > 0)
            coef = model.coefficients
            assert coef is None or all(math.isfinite(c) for c in coef)
