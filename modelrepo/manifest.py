"""The model repository contract: ``manifest.json`` beside ``model.onnx``.

The one statement of the contract (file names, schema version, fields, graph input/output names) and its
reader. Written by ``export/`` and read by ``server/``; both import it from here, neither imports the
other. Standard library only, so the serving path never imports torch or the exporter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "HEADLESS_OUTPUT_NAMES",
    "INPUT_NAMES",
    "MANIFEST_FILE",
    "MANIFEST_PRECISIONS",
    "MANIFEST_SCHEMA_VERSION",
    "ONNX_FILE",
    "OUTPUT_NAMES",
    "Label",
    "ManifestError",
    "ModelManifest",
    "load_manifest",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
#: The model file the exporter writes (the manifest's ``onnx_file`` names it; readers follow the manifest).
ONNX_FILE = "model.onnx"
#: Values of the manifest's ``precision``.
MANIFEST_PRECISIONS = ("fp32", "fp16", "int8")

#: Graph inputs: ``waveform`` float32 [batch, samples] (16 kHz, right-padded), ``lengths`` int64 [batch].
INPUT_NAMES = ("waveform", "lengths")
#: Graph outputs. Models without a classifier head (emotion2vec_base) have only the last three.
OUTPUT_NAMES = ("logits", "probs", "frame_probs", "embedding", "frame_features", "frame_lengths")
HEADLESS_OUTPUT_NAMES = ("embedding", "frame_features", "frame_lengths")


class ManifestError(ValueError):
    """The model repository is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Label:
    """One row of the classifier head, in model order."""

    index: int
    name: str  # English, e.g. "angry"; "unknown" for <unk>
    name_zh: str  # Chinese, e.g. "生气"; "" when the token has none
    token: str  # the line of tokens.txt, e.g. "生气/angry", "<unk>", "unuse_3"
    enabled: bool  # False for tokens starting with "unuse": masked out (probability 0)


@dataclass(frozen=True)
class ModelManifest:
    """Everything the server needs to know about an exported model."""

    directory: Path
    model_name: str
    model_version: str
    precision: str  # "fp32" | "fp16" | "int8"
    onnx_file: str
    opset: int
    sample_rate_hz: int
    frame_rate_hz: float
    frame_hop_samples: int
    receptive_field_samples: int
    min_samples: int
    embedding_dim: int
    labels: tuple[Label, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    untrained: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def has_head(self) -> bool:
        return bool(self.labels)

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.onnx_file

    @property
    def batch_exact(self) -> bool:
        """Whether an item's outputs do not depend on its batch mates (manifest ``batch_exact``).

        Manifests before that field: fp32/fp16 are, the old (per-tensor dynamic) int8 is not.
        """
        return bool(self.raw.get("batch_exact", self.precision != "int8"))

    @property
    def batch_exact_equal_length(self) -> bool:
        """Whether outputs are independent of batch mates of exactly the same length (no padding)."""
        return bool(self.raw.get("batch_exact_equal_length", self.batch_exact))


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in data:
        raise ManifestError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise ManifestError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def load_manifest(directory: str | Path) -> ModelManifest:
    """Read and validate ``<directory>/manifest.json``; raise ManifestError naming what is wrong."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest (is {directory} a model repository?)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a JSON object")
    version = _require(data, "schema_version", int, path)
    if version != MANIFEST_SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema_version {version}, this server reads {MANIFEST_SCHEMA_VERSION}")
    labels = tuple(
        Label(
            index=int(_require(item, "index", int, path)),
            name=str(_require(item, "name", str, path)),
            name_zh=str(item.get("name_zh", "")),
            token=str(item.get("token", "")),
            enabled=bool(item.get("enabled", True)),
        )
        for item in _require(data, "labels", list, path)
    )
    if [label.index for label in labels] != list(range(len(labels))):
        raise ManifestError(f"{path}: label indices must be 0..{len(labels) - 1} in order")
    io = _require(data, "io", dict, path)
    manifest = ModelManifest(
        directory=directory,
        model_name=_require(data, "model_name", str, path),
        model_version=_require(data, "model_version", str, path),
        precision=_require(data, "precision", str, path),
        onnx_file=_require(data, "onnx_file", str, path),
        opset=_require(data, "opset", int, path),
        sample_rate_hz=_require(data, "sample_rate_hz", int, path),
        frame_rate_hz=float(_require(data, "frame_rate_hz", (int, float), path)),
        frame_hop_samples=_require(data, "frame_hop_samples", int, path),
        receptive_field_samples=_require(data, "receptive_field_samples", int, path),
        min_samples=_require(data, "min_samples", int, path),
        embedding_dim=_require(data, "embedding_dim", int, path),
        labels=labels,
        input_names=tuple(_require(io, "inputs", list, path)),
        output_names=tuple(_require(io, "outputs", list, path)),
        untrained=bool(data.get("untrained", False)),
        raw=data,
    )
    if manifest.precision not in MANIFEST_PRECISIONS:
        raise ManifestError(f"{path}: unknown precision {manifest.precision!r}")
    expected = OUTPUT_NAMES if manifest.has_head else HEADLESS_OUTPUT_NAMES
    missing = [name for name in expected if name not in manifest.output_names]
    if missing or tuple(manifest.input_names) != INPUT_NAMES:
        raise ManifestError(f"{path}: io names disagree with the contract (missing outputs {missing})")
    if "/" in manifest.onnx_file or "\\" in manifest.onnx_file or manifest.onnx_file.startswith("."):
        raise ManifestError(f"{path}: onnx_file must be a plain file name inside the repository")
    if not manifest.onnx_path.is_file():
        raise ManifestError(f"{manifest.onnx_path}: model file missing")
    return manifest
