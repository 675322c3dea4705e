"""Batch-exact int8: row-wise dynamic quantisation of the model's weight MatMuls.

ONNX Runtime's ``quantize_dynamic`` (kept as the exporter's ``int8_dynamic``) quantises a MatMul's
activation with ONE scale per tensor, chosen at run time from the whole tensor: in a batch, the loudest
item sets every item's scale, so a request's scores depend on its batch mates (measured ~1e-2 on
probabilities). This module rewrites every ``MatMul(X, W)`` whose ``W`` is a 2-D weight initializer into::

    lo, hi = min(X), max(X) over the last axis          # per row: per frame of each item
    s_x    = (hi - lo) / 127
    X_u7   = Round((X - lo) / s_x)                      # uint8 holding 0..127
    Y      = Cast(MatMulInteger(X_u7, W_i8), f32) * s_w * s_x + lo * colsum(W_deq)

with ``W_i8`` symmetric per output channel (``s_w``: one scale per column, full 8-bit range). Each row's
scale depends on that row only and the integer products are exact, so batch mates never change an item's
scales. Why 7-bit activations and 8-bit weights: ONNX Runtime's u8 x s8 kernels on AVX2 without VNNI add
pairs of products in 16 bits, which overflows with 255 x 127 x 2 > 32767; 127 x 127 x 2 does not (checked:
exact against int64 on this project's CPU). Measured on the large checkpoint, 7-bit activations with 8-bit
weights halve |Δprob| against 8-bit activations with 7-bit weights (``asymmetric``, ``activation_levels``
and ``weight_bits`` select the older layouts).

Padding: rows are independent, but padding changes the last bits of the fp32 ops before a quantiser; at a
rounding boundary that becomes a whole step, and over the layers it grows (~1e-3..1e-2 on probabilities).
The first op to differ is the CNN's convolution: ONNX Runtime's SGEMM sums ``K = channels x kernel`` in
blocks of 128 for a wide GEMM but of 256 when it has <= 64 columns (output frames), so a short clip alone
and the same clip padded sum in different blocks once K > 128 (benchmarks/results/int8_exactness). Which
clips flip a rounding depends on their content, so no measurement on a few clips can show padding harmless:
an int8 manifest never claims ``batch_exact``.
Batches of items of the same length are exact (every activation bit-identical; only the final mean over
frames differs, ~1e-7), so the server runs such a model in equal-length groups
(manifest ``batch_exact_equal_length``).

Attention's activation x activation MatMuls and the small classifier head stay fp32.

Smoothing (``calibration`` clips given): a few input channels of a layer-normed activation carry most of
its magnitude, and a per-row scale set by them leaves the other channels few levels. As in SmoothQuant, a
static per-input-channel factor ``f_k = sqrt(max|X_k| / max|W_k,:|)`` (activation maxima from running the
fp32 model on generated speech, each clip alone) moves that range into the weights: ``X W = (X / f)(f W)``.
``1 / f`` is a constant ``Mul`` before the quantiser, so it is the same for every item: still batch-exact.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from emotion2vec_serving.modelrepo import Quantization, Smoothing

__all__ = ["QUANTIZATION", "quantize_rowwise_int8"]

#: What the manifest records for a model built here (``quantize_rowwise_int8`` adds the measured numbers).
QUANTIZATION = Quantization(
    method="int8_rowwise",
    weights="int8 symmetric per output channel (8-bit)",
    activations="uint8 dynamic, 0..127, one scale and offset per row (per frame of each item)",
    ops="MatMul with a 2-D weight initializer (attention score MatMuls and the head stay fp32)",
)

EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30
_node = helper.make_node


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _targets(graph: onnx.GraphProto, min_output_dim: int) -> list[onnx.NodeProto]:
    inits = {t.name: t for t in graph.initializer}
    out = []
    for node in graph.node:
        w_init = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w_init is not None and len(w_init.dims) == 2 and w_init.dims[1] >= min_output_dim:
            out.append(node)
    return out


def activation_maxima(fp32_path: Path, clips: list[np.ndarray],
                      min_output_dim: int = 16) -> dict[str, np.ndarray]:
    """Per-input-channel max |X| of every MatMul to quantise, over ``clips`` each run alone (fp32)."""
    import tempfile

    import onnxruntime as ort

    model = onnx.load(str(fp32_path))
    names = sorted({node.input[0] for node in _targets(model.graph, min_output_dim)})
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    maxima: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="emotion-calib-") as tmp:
        path = Path(tmp) / "calib.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="calib.onnx.data", size_threshold=1024)
        del model
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for clip in clips:
            feeds = {"waveform": clip[None].astype(np.float32), "lengths": np.array([len(clip)], np.int64)}
            for name, value in zip(names, session.run(names, feeds), strict=True):
                m = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                maxima[name] = m if name not in maxima else np.maximum(maxima[name], m)
    return maxima


def quantize_rowwise_int8(fp32_path: Path, out_path: Path, *, weight_bits: int = 8, min_output_dim: int = 16,
                          calibration: list[np.ndarray] | None = None, smooth_alpha: float = 0.5,
                          asymmetric: bool = True, activation_levels: int = 127) -> Quantization:
    """Write the row-wise int8 model of ``fp32_path`` to ``out_path``; return what was quantised.

    ``min_output_dim``: MatMuls with fewer output columns (the classifier head) stay fp32.
    ``calibration``: clips for the smoothing factors (None: no smoothing).
    """
    maxima = activation_maxima(fp32_path, calibration, min_output_dim) if calibration else {}
    model = onnx.load(str(fp32_path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    qmax_w = float(2 ** (weight_bits - 1) - 1)
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = [_const("rq/eps", np.array(1e-30, dtype=np.float32))]
    if asymmetric:
        new_inits.append(_const("rq/levels", np.array(float(activation_levels), dtype=np.float32)))
    else:
        new_inits += [
            _const("rq/zero_point_u8", np.array(128, dtype=np.uint8)),
            _const("rq/qmax", np.array(127.0, dtype=np.float32)),
            _const("rq/offset", np.array(128.0, dtype=np.float32)),
        ]
    dropped: set[str] = set()
    quantised = 0
    weights_in = weights_out = 0
    for node in graph.node:
        w_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else ""
        w_init = inits.get(w_name)
        if w_init is None or len(w_init.dims) != 2 or w_init.dims[1] < min_output_dim:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(w_init).astype(np.float32)  # [K, N]
        x = node.input[0]
        p = f"rq/{quantised}"
        smooth = None
        if node.input[0] in maxima:
            a = np.maximum(maxima[node.input[0]], 1e-5)
            b = np.maximum(np.abs(w).max(axis=1), 1e-5)
            smooth = np.clip(a**smooth_alpha / b ** (1 - smooth_alpha), 1e-2, 1e2).astype(np.float32)
            w = w * smooth[:, None]
        scale_w = np.maximum(np.abs(w).max(axis=0), 1e-12) / qmax_w  # [N]
        w_q = np.clip(np.round(w / scale_w), -qmax_w, qmax_w).astype(np.int8)
        new_inits += [_const(f"{p}/w_q", w_q), _const(f"{p}/w_scale", scale_w.astype(np.float32))]
        if consumers.get(w_name, 0) == 1:
            dropped.add(w_name)
        if smooth is not None:
            new_inits.append(_const(f"{p}/inv_smooth", (1.0 / smooth).astype(np.float32)))
            new_nodes.append(_node("Mul", [x, f"{p}/inv_smooth"], [f"{p}/x_smooth"],
                                              name=f"{p}/Smooth"))
            x = f"{p}/x_smooth"
        y = node.output[0]
        if asymmetric:
            # Per row: X ~ min + s * q, q in 0..255; X W ~ s * (q W) + min * colsum(W).
            colsum = (w_q.astype(np.float64) * scale_w).sum(axis=0).astype(np.float32)
            new_inits.append(_const(f"{p}/w_colsum", colsum))
            new_nodes += [
                _node("ReduceMin", [x], [f"{p}/min"], name=f"{p}/ReduceMin", axes=[-1], keepdims=1),
                _node("ReduceMax", [x], [f"{p}/max"], name=f"{p}/ReduceMax", axes=[-1], keepdims=1),
                _node("Sub", [f"{p}/max", f"{p}/min"], [f"{p}/range"], name=f"{p}/Range"),
                _node("Max", [f"{p}/range", "rq/eps"], [f"{p}/range_nz"], name=f"{p}/Max"),
                _node("Div", [f"{p}/range_nz", "rq/levels"], [f"{p}/x_scale"], name=f"{p}/Scale"),
                _node("Sub", [x, f"{p}/min"], [f"{p}/x_shift"], name=f"{p}/Shift"),
                _node("Div", [f"{p}/x_shift", f"{p}/x_scale"], [f"{p}/x_scaled"], name=f"{p}/Div"),
                _node("Round", [f"{p}/x_scaled"], [f"{p}/x_round"], name=f"{p}/Round"),
                _node("Cast", [f"{p}/x_round"], [f"{p}/x_u8"], name=f"{p}/ToU8", to=TensorProto.UINT8),
                _node("MatMulInteger", [f"{p}/x_u8", f"{p}/w_q"], [f"{p}/y_i32"],
                                 name=f"{p}/MatMulInteger"),
                _node("Cast", [f"{p}/y_i32"], [f"{p}/y_f"], name=f"{p}/ToF32", to=TensorProto.FLOAT),
                _node("Mul", [f"{p}/y_f", f"{p}/w_scale"], [f"{p}/y_w"], name=f"{p}/MulW"),
                _node("Mul", [f"{p}/y_w", f"{p}/x_scale"], [f"{p}/y_s"], name=f"{p}/MulX"),
                _node("Mul", [f"{p}/min", f"{p}/w_colsum"], [f"{p}/y_min"], name=f"{p}/MulMin"),
                _node("Add", [f"{p}/y_s", f"{p}/y_min"], [y], name=f"{p}/AddMin"),
            ]
        else:
            new_nodes += [
                _node("Abs", [x], [f"{p}/abs"], name=f"{p}/Abs"),
                _node("ReduceMax", [f"{p}/abs"], [f"{p}/absmax"], name=f"{p}/ReduceMax", axes=[-1],
                                 keepdims=1),
                _node("Max", [f"{p}/absmax", "rq/eps"], [f"{p}/absmax_nz"], name=f"{p}/Max"),
                _node("Div", [f"{p}/absmax_nz", "rq/qmax"], [f"{p}/x_scale"], name=f"{p}/Scale"),
                _node("Div", [x, f"{p}/x_scale"], [f"{p}/x_scaled"], name=f"{p}/Div"),
                _node("Round", [f"{p}/x_scaled"], [f"{p}/x_round"], name=f"{p}/Round"),
                _node("Add", [f"{p}/x_round", "rq/offset"], [f"{p}/x_shift"], name=f"{p}/Shift"),
                _node("Cast", [f"{p}/x_shift"], [f"{p}/x_u8"], name=f"{p}/ToU8",
                                 to=TensorProto.UINT8),
                _node("MatMulInteger", [f"{p}/x_u8", f"{p}/w_q", "rq/zero_point_u8"],
                                 [f"{p}/y_i32"], name=f"{p}/MatMulInteger"),
                _node("Cast", [f"{p}/y_i32"], [f"{p}/y_f"], name=f"{p}/ToF32", to=TensorProto.FLOAT),
                _node("Mul", [f"{p}/y_f", f"{p}/w_scale"], [f"{p}/y_w"], name=f"{p}/MulW"),
                _node("Mul", [f"{p}/y_w", f"{p}/x_scale"], [y], name=f"{p}/MulX"),
            ]
        quantised += 1
        weights_in += w.nbytes
        weights_out += w_q.nbytes
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES:
        data = out_path.with_name(out_path.name + ".data")
        data.unlink(missing_ok=True)
        onnx.save_model(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(out_path))
    return dataclasses.replace(
        QUANTIZATION, weight_bits=weight_bits, activation_levels=activation_levels, asymmetric=asymmetric,
        matmuls_quantised=quantised,
        smoothing=Smoothing(alpha=smooth_alpha, calibration_clips=len(calibration)) if calibration else None,
        weight_bytes_fp32=weights_in, weight_bytes_int8=weights_out)
