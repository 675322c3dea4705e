"""Run an exported model repository with ONNX Runtime on lists of clips (padding them into batches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = ["OnnxModel", "pad_batch"]


def pad_batch(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad float32 clips with zeros into ``(waveform[B, S], lengths[B])``."""
    longest = max(len(c) for c in clips)
    waveform = np.zeros((len(clips), longest), dtype=np.float32)
    for i, clip in enumerate(clips):
        waveform[i, : len(clip)] = clip
    return waveform, np.array([len(c) for c in clips], dtype=np.int64)


class OnnxModel:
    """An ONNX Runtime CPU session over ``model.onnx`` with named outputs."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, waveform: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {"waveform": waveform, "lengths": lengths})
        return dict(zip(self.output_names, outputs, strict=True))

    def run_clips(self, clips: list[np.ndarray]) -> list[dict[str, Any]]:
        """Run ``clips`` as one padded batch; return per-item outputs with padding frames cut off."""
        out = self.run(*pad_batch(clips))
        items = []
        for i in range(len(clips)):
            n = int(out["frame_lengths"][i])
            item: dict[str, Any] = {"frame_lengths": n}
            for name, value in out.items():
                if name == "frame_lengths":
                    continue
                item[name] = value[i, :n] if name.startswith("frame_") else value[i]
            items.append(item)
        return items
