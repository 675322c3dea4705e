"""Helpers of the Open Inference Protocol tests: the emotion.v1 reference answer, the tritonclient.grpc probe
subprocess, and array (de)serialisation for it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

PROBE = Path(__file__).with_name("triton_grpc_probe.py")
TOLERANCE = 1e-5


@dataclass
class Reference:
    """What emotion.v1 Recognize answers for one audio: scores in model order, label, embedding, frames."""

    probs: npt.NDArray[np.float32]
    label: str
    embedding: npt.NDArray[np.float32]
    frame_probs: npt.NDArray[np.float32]


def v1_reference(target: str, audio: emotion_pb2.Audio) -> Reference:
    with grpc.insecure_channel(target) as channel:
        stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
        r = stub.Recognize(emotion_pb2.RecognizeRequest(
            audio=audio, granularity=emotion_pb2.GRANULARITY_FRAME, return_embedding=True), timeout=30)
    scores = sorted(r.utterance.scores, key=lambda s: s.index)
    return Reference(
        probs=np.array([s.score for s in scores], np.float32),
        label=r.utterance.label,
        embedding=np.array(r.embedding.values, np.float32),
        frame_probs=np.array([list(f.scores) for f in r.frames], np.float32),
    )


def v1_encoded(target: str, data: bytes) -> Reference:
    return v1_reference(target, emotion_pb2.Audio(encoded=data))


def v1_waveform(target: str, wave: npt.NDArray[np.float32], rate: int = 16000) -> Reference:
    raw = emotion_pb2.RawAudio(data=np.ascontiguousarray(wave, "<f4").tobytes(),
                               encoding=emotion_pb2.PCM_ENCODING_F32LE, sample_rate_hz=rate, channels=1)
    return v1_reference(target, emotion_pb2.Audio(raw=raw))


def encode_array(arr: npt.NDArray[Any]) -> dict[str, Any]:
    if arr.dtype == object:
        values = [base64.b64encode(v).decode() for v in arr.reshape(-1)]
        return {"shape": list(arr.shape), "bytes_b64": values}
    arr = np.ascontiguousarray(arr)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "b64": base64.b64encode(arr.tobytes()).decode()}


def decode_array(enc: dict[str, Any]) -> npt.NDArray[Any]:
    if "bytes_b64" in enc:
        out = np.empty(len(enc["bytes_b64"]), dtype=object)
        out[:] = [base64.b64decode(v) for v in enc["bytes_b64"]]
        return out.reshape(enc["shape"])
    return np.frombuffer(base64.b64decode(enc["b64"]), dtype=enc["dtype"]).reshape(enc["shape"])


def bytes_array(items: list[bytes]) -> npt.NDArray[Any]:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def run_grpc_probe(target: str, model: str, ops: list[dict[str, Any]]) -> list[Any]:
    """Run ``ops`` with tritonclient.grpc in a fresh interpreter (see triton_grpc_probe.py)."""
    proc = subprocess.run(
        [sys.executable, str(PROBE)], input=json.dumps({"target": target, "model": model, "ops": ops}),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results: list[Any] = json.loads(proc.stdout)
    return results

