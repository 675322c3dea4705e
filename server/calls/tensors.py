"""The Open Inference Protocol (KServe v2 / Triton) model contract, shared by its gRPC and REST front ends.

Protocol-neutral: numpy arrays and core types only (no protobuf, no gRPC, no HTTP library). ``oip_grpc``
and ``oip_rest`` turn their wire tensors into :class:`InTensor`, call :func:`parse_infer`, run the core, and
turn the :class:`OutTensor` list of :func:`build_outputs` back into wire tensors.

The model, served under its manifest name, version ``"1"``:

- inputs, one of:
  - ``WAVEFORM`` FP32 ``[batch, samples]``: mono float samples in [-1, 1] at 16 kHz, or at the rate of the
    optional ``SAMPLE_RATE`` INT32 ``[batch]`` input (resampled). One tensor holds equal-length rows: send
    recordings of different lengths as separate requests, or as ``AUDIO``.
  - ``AUDIO`` BYTES ``[batch]``: each element a whole encoded file (WAV/MP3/M4A/FLAC/OGG).
- outputs (``PROBS`` and ``LABEL`` when the request names none):
  - ``PROBS`` FP32 ``[batch, labels]``: probabilities in model label order (disabled labels 0);
  - ``LABEL`` BYTES ``[batch]``: the top label's English name;
  - ``EMBEDDING`` FP32 ``[batch, dim]``: the utterance embedding;
  - ``FRAME_PROBS`` FP32 ``[batch, frames, labels]``: per-frame probabilities (50 Hz). Items of different
    lengths are padded with zero rows to the longest; the output's ``frame_counts`` parameter (a JSON list)
    gives each item's real frame count.

A batch of ``n`` becomes ``n`` batcher items (``EmotionCore.recognize_many``): each is batched like any
other request and the answer equals sending them one by one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.server.calls.errors import InvalidRequest, ModelNotFound
from emotion2vec_serving.server.calls.types import AudioInput, ModelCard, Recognition, RecognizeOptions

__all__ = [
    "INPUTS",
    "MODEL_VERSION",
    "OUTPUTS",
    "PLATFORM",
    "InTensor",
    "InferPlan",
    "OutTensor",
    "build_outputs",
    "check_model",
    "deserialize_bytes",
    "from_raw",
    "model_config",
    "model_metadata",
    "parse_infer",
    "serialize_bytes",
    "server_metadata",
    "server_version",
]

#: The one version every model is served under.
MODEL_VERSION = "1"
#: ``platform`` in the model metadata and configuration.
PLATFORM = "onnxruntime_onnx"
#: Server metadata: name and the protocol extensions this server implements.
SERVER_NAME = "emotion2vec-serving"
EXTENSIONS = ("model_configuration", "binary_tensor_data", "parameters")
INPUTS = ("WAVEFORM", "AUDIO", "SAMPLE_RATE")
OUTPUTS = ("PROBS", "LABEL", "EMBEDDING", "FRAME_PROBS")
DEFAULT_OUTPUTS = ("PROBS", "LABEL")

# Wire datatype -> numpy dtype (little-endian) for the fixed-size types a client may send.
_NUMPY = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}  # fmt: skip


@dataclass
class InTensor:
    """One request input: ``data`` is a numpy array of ``shape`` (or a list of bytes for BYTES)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any


@dataclass
class OutTensor:
    """One response output: ``array`` in row-major order; BYTES outputs hold a 1-D object array of bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: npt.NDArray[Any]
    parameters: dict[str, str | int | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class InferPlan:
    """What one infer request asks for: the audio of each batch item and the outputs to return."""

    audios: tuple[AudioInput, ...]
    outputs: tuple[str, ...]
    options: RecognizeOptions
    priority: int
    deadline: float | None  # from the request's "timeout" parameter (microseconds), time.monotonic


# ------------------------------------------------------------------------------------------ model facts


def check_model(card: ModelCard, name: str, version: str) -> None:
    """``ModelNotFound`` unless ``name``/``version`` address the served model (empty version: the latest)."""
    # The refusal never names the served model: ModelReady is a probe that needs no token (auth.OIP_PROBES),
    # so a caller without one learns nothing by guessing; authorised callers read the name from the
    # metadata.
    if name != card.name:
        raise ModelNotFound(f"unknown model {name!r}")
    if version not in ("", MODEL_VERSION):
        raise ModelNotFound(f"unknown version {version!r} of model {name!r}: the only version is "
                            f"{MODEL_VERSION!r}")


def _label_names(card: ModelCard) -> list[str]:
    return [label.name for label in card.labels]


def _model_parameters(card: ModelCard) -> dict[str, str]:
    """Facts a client needs to read the outputs (all strings: the protocol's parameter values)."""
    return {
        "labels": json.dumps(_label_names(card)),
        "labels_zh": json.dumps([label.name_zh for label in card.labels], ensure_ascii=False),
        "enabled_labels": json.dumps([label.name for label in card.labels if label.enabled]),
        "sample_rate_hz": str(card.sample_rate_hz),
        "frame_rate_hz": f"{card.frame_rate_hz:g}",
        "embedding_dim": str(card.embedding_dim),
        "model_version": card.version,
        "precision": card.precision,
        "untrained": "true" if card.untrained else "false",
        "max_duration_s": f"{card.max_duration_s:g}",
        "min_duration_s": f"{card.min_duration_s:g}",
    }


def _tensor_specs(card: ModelCard) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    n = len(card.labels)
    inputs = [
        {"name": "WAVEFORM", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "AUDIO", "datatype": "BYTES", "shape": [-1]},
        {"name": "SAMPLE_RATE", "datatype": "INT32", "shape": [-1]},
    ]
    outputs = [
        {"name": "PROBS", "datatype": "FP32", "shape": [-1, n]},
        {"name": "LABEL", "datatype": "BYTES", "shape": [-1]},
        {"name": "EMBEDDING", "datatype": "FP32", "shape": [-1, card.embedding_dim]},
        {"name": "FRAME_PROBS", "datatype": "FP32", "shape": [-1, -1, n]},
    ]
    return inputs, outputs


def model_metadata(card: ModelCard) -> dict[str, Any]:
    """The model metadata object (REST JSON; the gRPC front end copies it into its message)."""
    inputs, outputs = _tensor_specs(card)
    return {
        "name": card.name, "versions": [MODEL_VERSION], "platform": PLATFORM,
        "inputs": inputs, "outputs": outputs, "parameters": _model_parameters(card),
    }  # fmt: skip


def server_version() -> str:
    """This package's version (``"0"`` in a checkout that was never installed)."""
    try:
        return metadata.version("emotion2vec-serving")
    except metadata.PackageNotFoundError:
        return "0"


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def _config_tensor(t: dict[str, Any], batched: bool) -> dict[str, Any]:
    # Batched: dims without the batch axis; a tensor of shape [batch] is Triton's dims [1], reshape [].
    dims = (t["shape"][1:] or [1]) if batched else t["shape"]
    kind = "STRING" if t["datatype"] == "BYTES" else t["datatype"]
    out = {"name": t["name"], "data_type": "TYPE_" + kind, "dims": list(dims)}
    return {**out, "reshape": {"shape": []}} if batched and len(t["shape"]) == 1 else out


def model_config(card: ModelCard) -> dict[str, Any]:
    """Triton's ``ModelConfig`` (proto field names) as Triton describes a dynamically batched model.

    Triton's tools add a batch axis to ``dims`` only when ``max_batch_size > 0`` (issue 24): it is
    ``--max-batch-size`` (a request may hold more rows: each is one batcher item), ``dims`` = the metadata's
    shapes without the batch axis (requests keep it), ``dynamic_batching`` = the batch policy's preferred
    sizes and longest queue delay. A card without a policy (``max_batch_size`` 0) is unbatched.
    """
    inputs, outputs = _tensor_specs(card)
    batched = card.max_batch_size > 0
    optional = {"SAMPLE_RATE", "WAVEFORM", "AUDIO"}  # one of WAVEFORM/AUDIO; SAMPLE_RATE optional
    config: dict[str, Any] = {
        "name": card.name, "platform": PLATFORM, "backend": "onnxruntime",
        "max_batch_size": card.max_batch_size,
        "input": [{**_config_tensor(t, batched), "optional": t["name"] in optional} for t in inputs],
        "output": [{**_config_tensor(t, batched), "label_filename": ""} for t in outputs],
        "parameters": {key: {"string_value": value} for key, value in _model_parameters(card).items()},
    }  # fmt: skip
    if batched:
        config["dynamic_batching"] = {"preferred_batch_size": list(card.preferred_batch_sizes),
                                      "max_queue_delay_microseconds": round(card.max_queue_delay_s * 1e6)}
    return config


# ------------------------------------------------------------------------------------------ raw tensors


def deserialize_bytes(raw: bytes, name: str) -> list[bytes]:
    """BYTES raw contents: each element is a 4-byte little-endian length followed by that many bytes."""
    out: list[bytes] = []
    view = memoryview(raw)
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise InvalidRequest(f"input {name}: truncated BYTES element length at offset {pos}")
        size = int.from_bytes(view[pos:pos + 4], "little")
        pos += 4
        if pos + size > len(view):
            raise InvalidRequest(f"input {name}: BYTES element of {size} bytes at offset {pos - 4} runs past "
                                 f"the end of the data ({len(view)} bytes)")
        out.append(bytes(view[pos:pos + size]))
        pos += size
    return out


def serialize_bytes(values: Sequence[bytes]) -> bytes:
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


def _count(shape: Sequence[int], name: str) -> int:
    if any(int(d) < 0 for d in shape):
        raise InvalidRequest(f"input {name}: negative dimension in shape {list(shape)}")
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> InTensor:
    """An input sent as raw bytes (gRPC ``raw_input_contents``, REST binary tensor data)."""
    shape = tuple(int(d) for d in shape)
    n = _count(shape, name)
    if datatype == "BYTES":
        values = deserialize_bytes(raw, name)
        if len(values) != n:
            raise InvalidRequest(f"input {name}: shape {list(shape)} holds {n} element(s), "
                                 f"the data {len(values)}")
        return InTensor(name, datatype, shape, values)
    dtype = _NUMPY.get(datatype)
    if dtype is None:
        raise InvalidRequest(f"input {name}: unknown datatype {datatype!r}")
    if len(raw) != n * dtype.itemsize:
        raise InvalidRequest(f"input {name}: shape {list(shape)} of {datatype} needs {n * dtype.itemsize} "
                             f"bytes, got {len(raw)}")
    return InTensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype).reshape(shape))


def from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> InTensor:
    """An input sent as typed values (gRPC ``contents``, REST JSON ``data``, already flattened)."""
    shape = tuple(int(d) for d in shape)
    n = _count(shape, name)
    if len(values) != n:
        raise InvalidRequest(f"input {name}: shape {list(shape)} holds {n} element(s), "
                             f"the data {len(values)}")
    if datatype == "BYTES":
        data = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        return InTensor(name, datatype, shape, data)
    dtype = _NUMPY.get(datatype)
    if dtype is None:
        raise InvalidRequest(f"input {name}: unknown datatype {datatype!r}")
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"input {name}: data is not {datatype}: {exc}") from None
    return InTensor(name, datatype, shape, array.reshape(shape))


# ------------------------------------------------------------------------------------------ infer


def _batch_rows(t: InTensor) -> int:
    if not t.shape:
        raise InvalidRequest(f"input {t.name} needs a batch dimension (shape [batch, ...]), got a scalar")
    return t.shape[0]


def parse_infer(
    inputs: Sequence[InTensor],
    requested: Sequence[str],
    parameters: Mapping[str, Any],
    card: ModelCard,
) -> InferPlan:
    """Check one infer request and plan it; ``InvalidRequest`` says what is wrong, naming the tensor."""
    by_name: dict[str, InTensor] = {}
    for t in inputs:
        if t.name not in INPUTS:
            raise InvalidRequest(f"unknown input {t.name!r}: the model takes WAVEFORM (FP32 [batch, "
                                 "samples]) or AUDIO (BYTES [batch]), and optionally SAMPLE_RATE "
                                 "(INT32 [batch])")
        if t.name in by_name:
            raise InvalidRequest(f"input {t.name} is given twice")
        by_name[t.name] = t
    waveform, audio, rate = by_name.get("WAVEFORM"), by_name.get("AUDIO"), by_name.get("SAMPLE_RATE")
    if (waveform is None) == (audio is None):
        raise InvalidRequest("the request needs exactly one of the inputs WAVEFORM (FP32 [batch, samples]) "
                             "and AUDIO (BYTES [batch], encoded files)")
    audios: list[AudioInput]
    if waveform is not None:
        if waveform.datatype != "FP32":
            raise InvalidRequest(f"input WAVEFORM must be FP32, got {waveform.datatype}")
        if len(waveform.shape) != 2:
            raise InvalidRequest("input WAVEFORM must have shape [batch, samples], "
                                 f"got {list(waveform.shape)}")
        rows = waveform.shape[0]
        rates = [card.sample_rate_hz] * rows
        if rate is not None:
            if rate.datatype not in ("INT32", "INT64", "UINT32"):
                raise InvalidRequest(f"input SAMPLE_RATE must be INT32, got {rate.datatype}")
            values = np.asarray(rate.data).reshape(-1)
            if _batch_rows(rate) != rows or values.shape[0] != rows:
                raise InvalidRequest(f"input SAMPLE_RATE must have shape [{rows}] (one rate per WAVEFORM "
                                     f"row), got {list(rate.shape)}")
            rates = [int(v) for v in values]
        array = np.asarray(waveform.data, dtype=np.float32)
        audios = [AudioInput.from_waveform(array[i], rates[i]) for i in range(rows)]
    else:
        assert audio is not None
        if rate is not None:
            raise InvalidRequest("input SAMPLE_RATE goes with WAVEFORM only (AUDIO files carry their own "
                                 "rate)")
        if audio.datatype != "BYTES":
            raise InvalidRequest(f"input AUDIO must be BYTES, got {audio.datatype}")
        if len(audio.shape) not in (1, 2) or (len(audio.shape) == 2 and audio.shape[1] != 1):
            raise InvalidRequest("input AUDIO must have shape [batch] (or [batch, 1]), "
                                 f"got {list(audio.shape)}")
        audios = [AudioInput.from_encoded(data) for data in audio.data]
    if not audios:
        raise InvalidRequest("the request holds no audio (batch of 0)")
    outputs = tuple(requested) or DEFAULT_OUTPUTS
    for name in outputs:
        if name not in OUTPUTS:
            raise InvalidRequest(f"unknown output {name!r}: the model returns {', '.join(OUTPUTS)}")
    if len(set(outputs)) != len(outputs):
        raise InvalidRequest("an output is requested twice")
    priority = _int_parameter(parameters, "priority")
    timeout_us = _int_parameter(parameters, "timeout")
    deadline = time.monotonic() + timeout_us / 1e6 if timeout_us > 0 else None
    return InferPlan(
        audios=tuple(audios), outputs=outputs, options=RecognizeOptions(embedding="EMBEDDING" in outputs),
        priority=priority, deadline=deadline,
    )


def _int_parameter(parameters: Mapping[str, Any], name: str) -> int:
    value = parameters.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"parameter {name!r} must be an integer, got {value!r}")
    if value < 0:
        raise InvalidRequest(f"parameter {name!r} must not be negative, got {value}")
    return value


def build_outputs(plan: InferPlan, results: Sequence[Recognition], card: ModelCard) -> list[OutTensor]:
    """The requested output tensors, in the order requested."""
    batch = len(results)
    n_labels = len(card.labels)
    out: list[OutTensor] = []
    for name in plan.outputs:
        if name == "PROBS":
            probs = np.stack([np.asarray(r.probs, dtype=np.float32) for r in results])
            probs = probs.reshape(batch, n_labels)
            out.append(OutTensor(name, "FP32", (batch, n_labels), probs))
        elif name == "LABEL":
            labels = np.empty(batch, dtype=object)
            labels[:] = [r.utterance.label.encode() for r in results]
            out.append(OutTensor(name, "BYTES", (batch,), labels))
        elif name == "EMBEDDING":
            emb = np.stack([np.asarray(r.embedding, dtype=np.float32) for r in results])
            out.append(OutTensor(name, "FP32", tuple(int(d) for d in emb.shape), emb))
        elif name == "FRAME_PROBS":
            counts = [0 if r.frame_probs is None else int(r.frame_probs.shape[0]) for r in results]
            frames = np.zeros((batch, max(counts, default=0), n_labels), dtype=np.float32)
            for i, r in enumerate(results):
                if r.frame_probs is not None:
                    frames[i, :counts[i]] = r.frame_probs
            params: dict[str, str | int | bool] = {"frame_counts": json.dumps(counts),
                                                   "frame_rate_hz": f"{card.frame_rate_hz:g}"}
            if len(set(counts)) > 1:
                params["padded"] = True
            out.append(OutTensor(name, "FP32", tuple(int(d) for d in frames.shape), frames, params))
    return out
