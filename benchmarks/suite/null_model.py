"""A null model repository: the model contract of docs/DESIGN.md with (almost) no compute.

Serving it measures what gRPC, decoding, the batcher and the runner plumbing cost on their own, which is
the ceiling for requests per second whatever the model (target: >= 2,000 RPC/s). The graph reads both
inputs, so nothing is optimised away, and produces every contract output with the right shapes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from emotion2vec_serving.modelrepo import (
    EMOTION2VEC_FRAMING,
    INPUT_NAMES,
    ONNX_FILE,
    OUTPUT_NAMES,
    Deviation,
    ModelManifest,
    Source,
    labels_from_tokens,
    write_manifest,
)

LABELS = [
    ("angry", "生气"),
    ("disgusted", "厌恶"),
    ("fearful", "恐惧"),
    ("happy", "开心"),
    ("neutral", "中立"),
    ("other", "其他"),
    ("sad", "难过"),
    ("surprised", "吃惊"),
    ("unknown", ""),
]
EMBEDDING_DIM = 16


def build_null_model(out_dir: str | Path) -> Path:
    """Write ``model.onnx`` + ``manifest.json`` of the null model into ``out_dir``; return it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_labels, dim = len(LABELS), EMBEDDING_DIM
    init = [
        numpy_helper.from_array(np.linspace(-1, 1, n_labels, dtype=np.float32)[None, :], "label_w"),
        numpy_helper.from_array(np.linspace(0.5, 1.5, dim, dtype=np.float32)[None, :], "emb_w"),
        numpy_helper.from_array(np.array([400], dtype=np.int64), "rf"),
        numpy_helper.from_array(np.array([320], dtype=np.int64), "hop"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([n_labels], dtype=np.int64), "n_labels"),
        numpy_helper.from_array(np.array([dim], dtype=np.int64), "dim"),
    ]
    nodes = [
        # frames = (max(len, 400) - 400) // 320 + 1, per item and for the padded batch
        helper.make_node("Max", ["lengths", "rf"], ["len_c"]),
        helper.make_node("Sub", ["len_c", "rf"], ["len_m"]),
        helper.make_node("Div", ["len_m", "hop"], ["len_d"]),
        helper.make_node("Add", ["len_d", "one"], ["frame_lengths"]),
        helper.make_node("ReduceMax", ["frame_lengths"], ["t_max"], keepdims=1),
        helper.make_node("Shape", ["waveform"], ["wshape"]),
        helper.make_node("Slice", ["wshape", "axis0", "one"], ["batch"]),
        # one scalar of the waveform per item: its mean (cheap, and depends on the input)
        helper.make_node("ReduceMean", ["waveform"], ["wmean"], axes=[1], keepdims=1),
        helper.make_node("MatMul", ["wmean", "label_w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("MatMul", ["wmean", "emb_w"], ["embedding"]),
        helper.make_node("Unsqueeze", ["probs", "axis1"], ["probs3"]),
        helper.make_node("Concat", ["batch", "t_max", "n_labels"], ["fp_shape"], axis=0),
        helper.make_node("Expand", ["probs3", "fp_shape"], ["frame_probs"]),
        helper.make_node("Unsqueeze", ["embedding", "axis1"], ["emb3"]),
        helper.make_node("Concat", ["batch", "t_max", "dim"], ["ff_shape"], axis=0),
        helper.make_node("Expand", ["emb3", "ff_shape"], ["frame_features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "null_emotion_model",
        [
            helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_labels]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_labels]),
            helper.make_tensor_value_info("frame_probs", TensorProto.FLOAT, ["batch", "frames", n_labels]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim]),
            helper.make_tensor_value_info("frame_features", TensorProto.FLOAT, ["batch", "frames", dim]),
            helper.make_tensor_value_info("frame_lengths", TensorProto.INT64, ["batch"]),
        ],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="benchmarks")
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    (out / ONNX_FILE).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    write_manifest(out, ModelManifest(
        directory=out,
        model_name="null_model",
        model_version=digest[:12],
        untrained=True,
        precision="fp32",
        # What the server assumed before the field was written (fp32: batch-exact). Not measured: the mean
        # over the padded waveform does see padding, which does not matter for a plumbing benchmark.
        batch_exact=True,
        batch_exact_equal_length=True,
        onnx_file=ONNX_FILE,
        opset=17,
        **EMOTION2VEC_FRAMING,
        embedding_dim=dim,
        labels=labels_from_tokens(f"{zh}/{en}" if zh else "<unk>" for en, zh in LABELS),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        source=Source(checkpoint_sha256=digest, path="", config={"null_model": True}),
        exporter={"benchmarks.suite.null_model": "1"},
        deviation_from_fp32=Deviation(max_abs_probs=0.0, min_cosine_embedding=1.0,
                                      inputs="none: the null model is its own reference"),
    ))
    return out
