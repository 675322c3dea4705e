"""A Triton Inference Server model directory from an exported model repository.

Layout (what Triton's, and KServe's Triton runtime's, model repository expects)::

    <out>/<name>/config.pbtxt          inputs/outputs with types and dims, max_batch_size, dynamic batching
    <out>/<name>/labels.txt            the label names, for Triton's classification extension on probs/logits
    <out>/<name>/1/model.onnx          (+ model.onnx.data for large models): the same files, hard-linked when
                                       the file system allows, copied otherwise

Dims come from the ONNX graph itself (the batch axis dropped; symbolic axes become -1). Per-item scalars
(``lengths``, ``frame_lengths``, shape ``[batch]``) are declared as ``dims: [ 1 ]`` with ``reshape { shape:
[ ] }``, Triton's way of saying "one value per batch item". Triton's dynamic batcher only batches requests
whose shapes are equal, so clients of Triton send padded ``waveform`` rows with their true ``lengths``
(the model is batch-exact: padding never changes an item's answer).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx

from emotion2vec_serving.modelrepo import ONNX_FILE, load_manifest

__all__ = ["config_pbtxt", "write_triton_layout"]

_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}
LABELS_FILE = "labels.txt"


def _io_entry(value: onnx.ValueInfoProto, label_file: str | None) -> str:
    tensor = value.type.tensor_type
    if tensor.elem_type not in _TYPES:
        raise ValueError(f"{value.name}: ONNX element type {tensor.elem_type} has no Triton type here")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]  # batch axis off
    lines = [f'    name: "{value.name}"', f"    data_type: {_TYPES[tensor.elem_type]}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    else:
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    if label_file:
        lines.append(f'    label_filename: "{label_file}"')
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(model: onnx.ModelProto, name: str, max_batch_size: int = 8, labelled: bool = False,
                 max_queue_delay_us: int = 2000) -> str:
    """Triton's ``config.pbtxt`` (text protobuf ``inference.ModelConfig``) for the exported graph."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1 (the graph has a batch axis)")
    inputs = ",\n".join(_io_entry(v, None) for v in model.graph.input)
    outputs = ",\n".join(
        _io_entry(v, LABELS_FILE if labelled and v.name in ("probs", "logits") else None)
        for v in model.graph.output
    )
    return (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        "}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )


def _place(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_triton_layout(
    repo: str | Path, out: str | Path, name: str | None = None, max_batch_size: int = 8
) -> Path:
    """Write ``out/<name>/`` (config.pbtxt, labels.txt, 1/model.onnx[.data]) from the model repository
    ``repo``; returns ``out/<name>``."""
    manifest = load_manifest(repo)
    name = name or manifest.model_name
    onnx_file = manifest.onnx_path
    model = onnx.load(str(onnx_file), load_external_data=False)  # the graph only: no weights in memory
    target = Path(out) / name
    version = target / "1"
    version.mkdir(parents=True, exist_ok=True)
    _place(onnx_file, version / ONNX_FILE)
    data = onnx_file.with_name(onnx_file.name + ".data")
    if data.is_file():
        _place(data, version / data.name)
    labels = [label.name for label in manifest.labels]
    if labels:
        (target / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    (target / "config.pbtxt").write_text(
        config_pbtxt(model, name, max_batch_size=max_batch_size, labelled=bool(labels)), encoding="utf-8"
    )
    return target
