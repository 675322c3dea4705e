"""Batch-exactness of the exported graph: every item of a right-padded batch equals that item alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotion2vec_serving.export.ort_run import OnnxModel, pad_batch
from emotion2vec_serving.export.signals import speech_like

TOL = 1e-4
# From one sample to 60 s: below the receptive field, frame boundaries (400 + k·320), long clips.
LENGTHS = (1, 10, 399, 400, 401, 719, 720, 1039, 1041, 4000, 16000, 33_333, 160_000, 480_000, 960_000)


@pytest.fixture(scope="module")
def model(tiny_repo: Path) -> OnnxModel:
    return OnnxModel(tiny_repo / "model.onnx", threads=2)


@pytest.fixture(scope="module")
def clips() -> dict[int, np.ndarray]:
    return {n: speech_like(n, seed=n) for n in LENGTHS}


@pytest.fixture(scope="module")
def alone(model: OnnxModel, clips: dict[int, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    return {n: model.run_clips([clip])[0] for n, clip in clips.items()}


def _assert_same(got: dict, ref: dict, where: str) -> None:  # type: ignore[type-arg]
    assert got["frame_lengths"] == ref["frame_lengths"], where
    for name in ("logits", "probs", "embedding", "frame_features", "frame_probs"):
        diff = float(np.abs(got[name] - ref[name]).max())
        assert diff <= TOL, f"{where}: {name} differs by {diff:.2e}"


@pytest.mark.parametrize("seed", range(5))
def test_random_padded_batches_equal_items_alone(
    model: OnnxModel, clips: dict[int, np.ndarray], alone: dict[int, dict[str, np.ndarray]], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 6))
    lengths = [int(n) for n in rng.choice(LENGTHS, size=size, replace=False)]
    results = model.run_clips([clips[n] for n in lengths])
    for n, got in zip(lengths, results, strict=True):
        _assert_same(got, alone[n], f"length {n} in batch {lengths}")


def test_extra_padding_beyond_the_longest_item_changes_nothing(
    model: OnnxModel, alone: dict[int, dict[str, np.ndarray]]
) -> None:
    clip = speech_like(16000, seed=16000)
    waveform, _ = pad_batch([clip, np.zeros(48000, np.float32)])
    out = model.run(waveform, np.array([16000, 1], dtype=np.int64))
    n = int(out["frame_lengths"][0])
    assert n == alone[16000]["frame_lengths"]
    assert np.abs(out["probs"][0] - alone[16000]["probs"]).max() <= TOL
    assert np.abs(out["frame_features"][0, :n] - alone[16000]["frame_features"]).max() <= TOL
    # Frames past an item's length are padding and are zeroed, never garbage.
    assert not out["frame_features"][0, n:].any() and not out["frame_probs"][0, n:].any()


def test_batch_is_independent_of_amplitude_like_funasr(model: OnnxModel) -> None:
    clip = speech_like(8000, seed=3)
    a, b = model.run_clips([clip, 7.5 * clip])
    assert np.abs(a["probs"] - b["probs"]).max() <= TOL


def test_outputs_are_well_formed(alone: dict[int, dict[str, np.ndarray]]) -> None:
    for n, out in alone.items():
        assert out["frame_lengths"] == max(1, (max(n, 400) - 400) // 320 + 1)
        assert out["probs"].dtype == np.float32 and abs(float(out["probs"].sum()) - 1.0) < 1e-5
        assert np.allclose(out["frame_probs"].sum(axis=-1), 1.0, atol=1e-5)
        assert np.allclose(out["embedding"], out["frame_features"].mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("n", [1, 10, 250, 399])
def test_short_inputs_are_zero_padded_to_400_samples(model: OnnxModel, n: int) -> None:
    clip = speech_like(n, seed=n) + 0.05
    padded = np.concatenate([clip, np.zeros(400 - n, np.float32)])
    short, explicit = model.run_clips([clip])[0], model.run_clips([padded])[0]
    _assert_same(short, explicit, f"{n} samples")
    assert np.isfinite(short["probs"]).all()
