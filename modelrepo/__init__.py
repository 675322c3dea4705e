"""The model repository contract shared by its writers (export/, the benchmarks' null model) and its readers
(server/, export/'s tools); standard library only."""

from emotion2vec_serving.modelrepo.fields import ManifestError
from emotion2vec_serving.modelrepo.manifest import (
    HEADLESS_OUTPUT_NAMES,
    INPUT_NAMES,
    MANIFEST_FILE,
    MANIFEST_PRECISIONS,
    MANIFEST_SCHEMA_VERSION,
    ONNX_FILE,
    OUTPUT_NAMES,
    Deviation,
    DownloadRecord,
    FileDigest,
    Label,
    ModelManifest,
    Parity,
    Quantization,
    Smoothing,
    Source,
    labels_from_tokens,
    load_manifest,
    write_manifest,
)

__all__ = [
    "HEADLESS_OUTPUT_NAMES",
    "INPUT_NAMES",
    "MANIFEST_FILE",
    "MANIFEST_PRECISIONS",
    "MANIFEST_SCHEMA_VERSION",
    "ONNX_FILE",
    "OUTPUT_NAMES",
    "Deviation",
    "DownloadRecord",
    "FileDigest",
    "Label",
    "ManifestError",
    "ModelManifest",
    "Parity",
    "Quantization",
    "Smoothing",
    "Source",
    "labels_from_tokens",
    "load_manifest",
    "write_manifest",
]
