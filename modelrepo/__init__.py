"""The model repository contract shared by the exporter (writer) and the server (reader); stdlib only."""

from emotion2vec_serving.modelrepo.manifest import (
    HEADLESS_OUTPUT_NAMES,
    INPUT_NAMES,
    MANIFEST_FILE,
    MANIFEST_PRECISIONS,
    MANIFEST_SCHEMA_VERSION,
    ONNX_FILE,
    OUTPUT_NAMES,
    Label,
    ManifestError,
    ModelManifest,
    load_manifest,
)

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
