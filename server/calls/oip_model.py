"""The Open Inference Protocol model contract's facts: names, metadata and Triton's model configuration.

Protocol-neutral (plain dicts in the REST JSON shape; the gRPC front end copies them into its messages).
The request side, tensors in and out, is :mod:`.tensors`.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

from emotion2vec_serving.server.calls.errors import ModelNotFound
from emotion2vec_serving.server.calls.limits import MAX_SPLIT_CHANNELS
from emotion2vec_serving.server.calls.types import ModelCard

__all__ = [
    "DEFAULT_OUTPUTS",
    "EXTENSIONS",
    "INPUTS",
    "MODEL_VERSION",
    "OUTPUTS",
    "PLATFORM",
    "SERVER_NAME",
    "check_model",
    "model_config",
    "model_metadata",
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
        # The "channels" request parameter: "mix" (default) or "split" (a channel dimension after the batch
        # one, at most this many channels an item; see server/calls/tensors.py).
        "max_split_channels": str(MAX_SPLIT_CHANNELS),
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
