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

Channel splitting (issue 21): the request parameter ``channels: "split"`` (default ``"mix"``: channels
averaged, as always) answers each channel of every item apart and adds a channel dimension after the batch
one: ``PROBS`` ``[batch, channels, labels]``, ``LABEL`` ``[batch, channels]``, ``EMBEDDING``
``[batch, channels, dim]``, ``FRAME_PROBS`` ``[batch, channels, frames, labels]``. Items with different
channel counts (AUDIO files) are padded with zero rows (LABEL: empty strings) to the most channels; every
output then carries a ``channel_counts`` parameter (a JSON list: each item's real channel count; with
``padded`` true when they differ), and ``FRAME_PROBS``' ``frame_counts`` is a list per item of each channel's
frame count. At most 8 channels an item. ``WAVEFORM`` rows are mono by definition: one channel each.

A batch of ``n`` becomes ``n`` batcher items (``EmotionCore.recognize_many``): each is batched like any
other request and the answer equals sending them one by one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.server.calls.channels import parse_channel_mode
from emotion2vec_serving.server.calls.errors import InvalidRequest
from emotion2vec_serving.server.calls.oip_model import DEFAULT_OUTPUTS, INPUTS, OUTPUTS
from emotion2vec_serving.server.calls.types import (
    AudioInput,
    ModelCard,
    Recognition,
    RecognizeOptions,
    SplitRecognition,
)

__all__ = [
    "InTensor",
    "InferPlan",
    "OutTensor",
    "build_outputs",
    "check_shape",
    "deserialize_bytes",
    "from_raw",
    "parse_infer",
    "serialize_bytes",
]

# Wire datatype -> numpy dtype (little-endian) for the fixed-size types a client may send.
_NUMPY = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}  # fmt: skip
_INT32_MAX = 2**31 - 1


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
    split: bool = False  # the "channels": "split" parameter: each channel answered apart



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


def _check_rank(name: str, dims: tuple[int, ...]) -> None:
    """The model's inputs' ranks (so that the first dimension is the batch, as the cap assumes)."""
    if name == "WAVEFORM" and len(dims) != 2:
        raise InvalidRequest(f"input WAVEFORM must have shape [batch, samples], got {list(dims)}")
    if name == "AUDIO" and (len(dims) not in (1, 2) or (len(dims) == 2 and dims[1] != 1)):
        raise InvalidRequest(f"input AUDIO must have shape [batch] (or [batch, 1]), got {list(dims)}")
    if name == "SAMPLE_RATE" and not dims:
        raise InvalidRequest("input SAMPLE_RATE needs a batch dimension (shape [batch]), got a scalar")


def check_shape(name: str, shape: Sequence[int], max_items: int | None = None) -> tuple[tuple[int, ...], int]:
    """(the shape as ints, its element count), before any data is converted: ``InvalidRequest`` for a
    negative dimension, or a batch (the first dimension) of more than ``max_items``.

    The count is exact (Python integers): a product beyond int64 (``[2**32, 2**32]``) is refused later by
    the data size check, never wrapped or overflowed.
    """
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidRequest(f"input {name}: negative dimension in shape {list(dims)}")
    _check_rank(name, dims)
    if max_items is not None and dims and dims[0] > max_items:
        raise InvalidRequest(
            f"input {name}: a batch of {dims[0]} items is more than this server takes in one request "
            f"(the limit is {max_items} items, --max-queue-requests); send the items in several requests"
        )
    return dims, math.prod(dims)


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes,
             max_items: int | None = None) -> InTensor:
    """An input sent as raw bytes (gRPC ``raw_input_contents``, REST binary tensor data).

    The shape is checked (``check_shape``) and held against the data's size before anything is converted.
    """
    shape, n = check_shape(name, shape, max_items)
    if datatype == "BYTES":
        if 4 * n > len(raw):  # every element has its 4-byte length
            raise InvalidRequest(f"input {name}: shape {list(shape)} holds {n} element(s), more than "
                                 f"{len(raw)} bytes of BYTES data can")
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


def from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any],
                max_items: int | None = None) -> InTensor:
    """An input sent as typed values (gRPC ``contents``, REST JSON ``data``, already flattened).

    The front end checks the shape (``check_shape``) before it flattens or copies the values; here it is
    checked again and held against their number before they are converted.
    """
    shape, n = check_shape(name, shape, max_items)
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
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: 2**40 as INT32
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
    max_items: int | None = None,
) -> InferPlan:
    """Check one infer request and plan it; ``InvalidRequest`` says what is wrong, naming the tensor.

    ``max_items``: the most batch items one request may carry (the front ends have already refused more
    while parsing, before any per-item work; checked again here for any other caller).
    """
    by_name: dict[str, InTensor] = {}
    for t in inputs:
        check_shape(t.name, t.shape, max_items)
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
            bad = [r for r in rates if not 0 < r <= _INT32_MAX]
            if bad:
                raise InvalidRequest(f"input SAMPLE_RATE must hold positive INT32 rates in Hz, got {bad[0]}")
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
    channels = parameters.get("channels", "mix")
    if not isinstance(channels, str):
        raise InvalidRequest(f"parameter 'channels' must be \"mix\" or \"split\", got {channels!r}")
    return InferPlan(
        audios=tuple(audios), outputs=outputs, options=RecognizeOptions(embedding="EMBEDDING" in outputs),
        priority=priority, deadline=deadline, split=parse_channel_mode(channels),
    )


def _int_parameter(parameters: Mapping[str, Any], name: str) -> int:
    value = parameters.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"parameter {name!r} must be an integer, got {value!r}")
    if value < 0:
        raise InvalidRequest(f"parameter {name!r} must not be negative, got {value}")
    return value


def build_outputs(plan: InferPlan, results: Sequence[Recognition] | Sequence[SplitRecognition],
                  card: ModelCard) -> list[OutTensor]:
    """The requested output tensors, in the order requested."""
    if plan.split:
        return _build_split(plan, [r for r in results if isinstance(r, SplitRecognition)], card)
    return _build(plan, [r for r in results if isinstance(r, Recognition)], card)


def _build_split(plan: InferPlan, results: Sequence[SplitRecognition], card: ModelCard) -> list[OutTensor]:
    """The outputs with a channel dimension after the batch one (zero-padded to the most channels)."""
    batch = len(results)
    counts = [len(r.channels) for r in results]
    width = max(counts, default=0)
    per_item = [[c.recognition for c in r.channels] for r in results]
    params: dict[str, str | int | bool] = {"channel_counts": json.dumps(counts)}
    if len(set(counts)) > 1:
        params["padded"] = True
    n_labels = len(card.labels)
    out: list[OutTensor] = []
    for name in plan.outputs:
        if name == "PROBS":
            probs = np.zeros((batch, width, n_labels), np.float32)
            for i, recs in enumerate(per_item):
                for c, rec in enumerate(recs):
                    probs[i, c] = np.asarray(rec.probs, np.float32).reshape(n_labels)
            out.append(OutTensor(name, "FP32", probs.shape, probs, dict(params)))
        elif name == "LABEL":
            labels = np.empty((batch, width), dtype=object)
            labels[:] = b""
            for i, recs in enumerate(per_item):
                for c, rec in enumerate(recs):
                    labels[i, c] = rec.utterance.label.encode()
            out.append(OutTensor(name, "BYTES", (batch, width), labels, dict(params)))
        elif name == "EMBEDDING":
            dim = card.embedding_dim
            emb = np.zeros((batch, width, dim), np.float32)
            for i, recs in enumerate(per_item):
                for c, rec in enumerate(recs):
                    emb[i, c] = np.asarray(rec.embedding, np.float32).reshape(dim)
            out.append(OutTensor(name, "FP32", emb.shape, emb, dict(params)))
        elif name == "FRAME_PROBS":
            frame_counts = [[0 if rec.frame_probs is None else int(rec.frame_probs.shape[0]) for rec in recs]
                            for recs in per_item]
            longest = max((n for row in frame_counts for n in row), default=0)
            frames = np.zeros((batch, width, longest, n_labels), np.float32)
            for i, recs in enumerate(per_item):
                for c, rec in enumerate(recs):
                    if rec.frame_probs is not None:
                        frames[i, c, :frame_counts[i][c]] = rec.frame_probs
            fparams = {**params, "frame_counts": json.dumps(frame_counts),
                       "frame_rate_hz": f"{card.frame_rate_hz:g}"}
            if len({n for row in frame_counts for n in row}) > 1:
                fparams["padded"] = True
            out.append(OutTensor(name, "FP32", frames.shape, frames, fparams))
    return out


def _build(plan: InferPlan, results: Sequence[Recognition], card: ModelCard) -> list[OutTensor]:
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
