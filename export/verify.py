"""Parity proof: an exported model repository against FunASR's own ``AutoModel`` on the same checkpoint.

FunASR runs one utterance at a time (its padded path is wrong, emotion2vec issue #37), so every reference is
a single clip. The ONNX model is run on each clip alone *and* inside random right-padded batches mixing
lengths from the minimum (400 samples) to 30 s; every item must match its single-clip FunASR reference:
utterance scores, utterance embedding (mean of FunASR's frame features) and frame features.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emotion2vec_serving.export.ort_run import OnnxModel
from emotion2vec_serving.export.signals import speech_like
from emotion2vec_serving.modelrepo import Parity, load_manifest

__all__ = ["PARITY_LENGTHS", "ParityError", "funasr_reference", "verify_repository"]

#: Single-clip lengths in samples: the minimum, around the frame boundaries, and up to 30 s.
PARITY_LENGTHS = (400, 401, 719, 720, 1040, 3210, 16000, 53_333, 160_000, 480_000)
DEFAULT_TOLERANCE = 1e-4


class ParityError(AssertionError):
    """The exported model disagrees with FunASR beyond the tolerance."""


def _load_funasr(checkpoint_dir: Path) -> Any:
    logging.getLogger().setLevel(logging.ERROR)
    from funasr import AutoModel

    return AutoModel(model=str(checkpoint_dir), disable_update=True, device="cpu", disable_pbar=True,
                     log_level="ERROR")


def funasr_reference(automodel: Any, clip: np.ndarray) -> dict[str, np.ndarray]:
    """FunASR's outputs for one clip: enabled-label ``scores``, frame ``feats`` [T, D] and their mean."""
    result = automodel.generate(clip, granularity="frame", extract_embedding=True, disable_pbar=True)[0]
    feats = np.asarray(result["feats"], dtype=np.float32)
    return {"scores": np.asarray(result.get("scores", []), dtype=np.float64), "feats": feats,
            "embedding": feats.mean(axis=0)}


def _compare(item: dict[str, Any], ref: dict[str, np.ndarray], enabled: np.ndarray) -> dict[str, float]:
    n = ref["feats"].shape[0]
    if item["frame_lengths"] != n:
        raise ParityError(f"frame count {item['frame_lengths']} != FunASR's {n}")
    out = {
        "embedding": float(np.abs(item["embedding"] - ref["embedding"]).max()),
        "frame_features": float(np.abs(item["frame_features"] - ref["feats"]).max()),
    }
    if "probs" in item:
        out["probs"] = float(np.abs(item["probs"][enabled] - ref["scores"]).max())
    return out


def verify_repository(
    checkpoint_dir: str | Path,
    repo_dir: str | Path,
    lengths: tuple[int, ...] = PARITY_LENGTHS,
    batches: int = 3,
    batch_size: int = 4,
    seed: int = 0,
    tolerance: float | None = DEFAULT_TOLERANCE,
    progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    automodel: Any = None,
) -> Parity:
    """Compare ``repo_dir/model.onnx`` with FunASR on ``checkpoint_dir``; return the maxima.

    Raises ParityError when a maximum exceeds ``tolerance`` (``None``: report only, for fp16/int8).
    """
    manifest = load_manifest(repo_dir)
    automodel = automodel if automodel is not None else _load_funasr(Path(checkpoint_dir))
    onnx_model = OnnxModel(manifest.onnx_path)
    enabled = np.array([label.enabled for label in manifest.labels], dtype=bool)
    rng = np.random.default_rng(seed)
    clips = [speech_like(n, seed=1000 + i) for i, n in enumerate(lengths)]
    refs = []
    for i, clip in enumerate(clips):
        progress(f"      FunASR reference {i + 1}/{len(clips)} ({len(clip) / 16000:.3f} s)")
        refs.append(funasr_reference(automodel, clip))
    maxima: dict[str, float] = {}

    def record(diffs: dict[str, float], where: str) -> None:
        for key, value in diffs.items():
            name = f"{where}_{key}"
            maxima[name] = max(maxima.get(name, 0.0), value)

    for clip, ref in zip(clips, refs, strict=True):
        record(_compare(onnx_model.run_clips([clip])[0], ref, enabled), "single")
    for b in range(batches):
        idx = rng.choice(len(clips), size=min(batch_size, len(clips)), replace=False)
        progress(f"      padded batch {b + 1}/{batches}: {[len(clips[i]) for i in idx]} samples")
        for i, item in zip(idx, onnx_model.run_clips([clips[i] for i in idx]), strict=True):
            record(_compare(item, refs[i], enabled), "batch")
    worst = max(maxima, key=lambda k: maxima[k])
    progress("      parity maxima: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(maxima.items())))
    if tolerance is not None and maxima[worst] > tolerance:
        raise ParityError(f"{worst} differs from FunASR by {maxima[worst]:.3e} > {tolerance:g}")
    return Parity(
        reference="funasr.AutoModel, one clip at a time",
        lengths_samples=tuple(lengths),
        batches=batches,
        batch_size=batch_size,
        tolerance=tolerance,
        max_abs=maxima,
        passed=tolerance is not None,
    )
