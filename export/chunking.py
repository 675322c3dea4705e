"""Run the convolutional front end over the waveform in time chunks (an ONNX ``Loop``), exactly.

The front end (FunASR's ``local_encoder``: seven 1-D convolutions, total stride 320 samples, receptive field
400, each followed by a per-frame layer norm over channels and GELU) holds the largest activations of the
model: its first layer's output is 512 channels x one frame per 5 samples, ~6.5 MB per second of audio in
float32, and its input and output are live at once. For a batch of four 10.7 s clips that is +733 MiB of
peak RSS on the large model, against a 1.2 GB model (measured with ONNX Runtime's CPU arena; the
transformer's tensors are a few MB per second). Server memory then grows with the padded audio in flight.

Every output frame ``f`` of the front end depends only on samples ``[320 f, 320 f + 400)``, and the layer
norms are per frame, so the front end can run over chunks of ``N`` output frames (input windows of
``320 (N - 1) + 400`` samples, starting every ``320 N``) and the chunks' outputs concatenated: each frame
is computed from the same samples by the same kernels. This pass rewrites the exported graph so: the
front end's nodes move into the body of an ONNX ``Loop`` over the chunks, all batch items in each
iteration, and the peak follows ``batch x chunk`` instead of ``batch x longest clip``.

Chunks are balanced: a batch whose longest row has ``F`` frames runs ``n = ceil(F / chunk_frames)``
chunks of ``ceil(F / n)`` frames, so at most ``n - 1`` frames of extra convolution (over zeros past the row,
cut away) are computed. Fixed-size chunks measured 4-6 % slower through the server (large model, realistic
mix: a 2.1 s clip ran 4 s of convolution). Against the unchunked graph the outputs differ only by float
summation order (ONNX Runtime's SGEMM blocks the sums differently for GEMMs of <= 64 columns): <= 5e-6 on
any output of the large model (tests/export/test_front_end_chunks.py holds the odd model's probabilities to
1e-5). ``chunk_frames = 0`` leaves the graph as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx
from onnx import TensorProto, helper

__all__ = ["FRONT_END_PREFIX", "balanced_chunks", "chunk_front_end", "const_node", "front_end_geometry",
           "iter_nodes"]

#: Node-name prefix of the front end's nodes in the traced graph (the exporter names nodes by module path).
FRONT_END_PREFIX = "/local_encoder/"
_P = "front_end_chunks/"  # prefix of every value this pass adds
_CARRIED = ("padded", "step", "window")  # the loop's inputs besides the trip count


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs (``Loop``/``If``/``Scan`` bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            for sub in attr.graphs:
                yield from iter_nodes(sub)


def _attr(node: onnx.NodeProto, name: str) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    raise ValueError(f"{node.name}: no attribute {name!r}")


def front_end_geometry(convs: Iterable[onnx.NodeProto]) -> tuple[list[tuple[int, int]], int, int]:
    """``(kernel, stride)`` per conv in order, the total stride and the receptive field in samples."""
    layers = [(_attr(n, "kernel_shape")[0], _attr(n, "strides")[0]) for n in convs]
    stride, field = 1, 1
    for k, s in layers:
        field += (k - 1) * stride
        stride *= s
    return layers, stride, field


def const_node(name: str, values: list[int], scalar: bool = False) -> onnx.NodeProto:
    tensor = helper.make_tensor(name, TensorProto.INT64, [] if scalar else [len(values)], values)
    return helper.make_node("Constant", [], [name], value=tensor, name=name)


def balanced_chunks(prefix: str, count: str, most: int) -> tuple[list[onnx.NodeProto], str, str, str]:
    """Nodes splitting ``count`` items (an int64 scalar value) into ``n = ceil(count / most)`` chunks of
    ``ceil(count / n)`` items: at most ``n - 1`` items past the end, where fixed-size chunks could waste
    almost a whole chunk. Returns the nodes and the names of ``n``, ``n - 1`` and the chunk size."""
    n, n_less_one, size = prefix + "n_chunks", prefix + "n_less_one", prefix + "chunk_size"
    return [
        const_node(prefix + "most", [most], scalar=True),
        const_node(prefix + "most_less_one", [most - 1], scalar=True),
        const_node(prefix + "unit", [1], scalar=True),
        helper.make_node("Add", [count, prefix + "most_less_one"], [prefix + "up"], name=prefix + "up"),
        helper.make_node("Div", [prefix + "up", prefix + "most"], [n], name=n),
        helper.make_node("Sub", [n, prefix + "unit"], [n_less_one], name=n_less_one),
        helper.make_node("Add", [count, n_less_one], [prefix + "up2"], name=prefix + "up2"),
        helper.make_node("Div", [prefix + "up2", n], [size], name=size),
    ], n, n_less_one, size


def chunk_front_end(model: onnx.ModelProto, chunk_frames: int) -> onnx.ModelProto:
    """Rewrite ``model`` in place so the front end runs in chunks of at most ``chunk_frames`` output frames.

    The front end is found by its node names (``FRONT_END_PREFIX``): the nodes that depend on the input of
    its first ``Conv`` and carry the prefix, plus the prefixed ``Constant`` nodes only they use. It must
    have one input (``[batch, 1, samples]``) and one output (``[batch, channels, frames]``) used elsewhere.
    """
    if chunk_frames < 0:
        raise ValueError("chunk_frames must not be negative (0: no chunks)")
    if chunk_frames == 0:
        return model
    graph = model.graph
    nodes = list(graph.node)
    convs = [n for n in nodes if n.op_type == "Conv" and n.name.startswith(FRONT_END_PREFIX)]
    if not convs:
        raise ValueError(f"no front-end Conv (node names starting {FRONT_END_PREFIX!r}) in the graph")
    x_name = convs[0].input[0]
    layers, stride, field = front_end_geometry(convs)

    # The front end: prefixed nodes reachable from x_name (data edges), in graph order.
    reached = {x_name}
    body_ids: set[int] = set()
    for i, node in enumerate(nodes):
        if node.name.startswith(FRONT_END_PREFIX) and any(name in reached for name in node.input):
            body_ids.add(i)
            reached.update(node.output)
    produced = {out for i in body_ids for out in nodes[i].output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    # Constants (no inputs) used only by the front end move with it.
    for i, node in enumerate(nodes):
        users = consumers.get(node.output[0], []) if node.output else []
        if (node.op_type == "Constant" and node.name.startswith(FRONT_END_PREFIX) and users
                and all(c in body_ids for c in users)):
            body_ids.add(i)
            produced.update(node.output)
    graph_outputs = {o.name for o in graph.output}
    escaping = sorted({name for name in produced
                       if name in graph_outputs or any(c not in body_ids for c in consumers.get(name, []))})
    if len(escaping) != 1:
        raise ValueError(f"the front end should have one output used elsewhere, found {escaping}")
    y_name = escaping[0]
    elem_type = next((v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output)
                      if v.name == y_name), TensorProto.UNDEFINED)
    if elem_type == TensorProto.UNDEFINED:
        # The front end's output has the convolutions' weight type.
        weights = {t.name: t.data_type for t in graph.initializer}
        weights.update({v.name: v.type.tensor_type.elem_type for v in graph.input})
        elem_type = weights.get(convs[0].input[1], TensorProto.FLOAT)

    # Inside the body every value the front end makes is renamed (subgraph names must not repeat outer ones).
    def inner(name: str) -> str:
        if name == x_name:
            return _P + "chunk"
        return _P + "in/" + name if name in produced else name

    # Ranks are stated (OpenVINO converts a body only when its inputs' ranks are static).
    carried = {"padded": (elem_type, [None, 1, None]), "step": (TensorProto.INT64, []),
               "window": (TensorProto.INT64, [])}
    body_nodes: list[onnx.NodeProto] = [
        helper.make_node("Mul", [_P + "iter", _P + "step_in"], [_P + "start"], name=_P + "start"),
        helper.make_node("Add", [_P + "start", _P + "window_in"], [_P + "end"], name=_P + "end"),
        const_node(_P + "axis0", [0]),
        const_node(_P + "time_axis", [2]),
        helper.make_node("Unsqueeze", [_P + "start", _P + "axis0"], [_P + "starts"], name=_P + "starts"),
        helper.make_node("Unsqueeze", [_P + "end", _P + "axis0"], [_P + "ends"], name=_P + "ends"),
        helper.make_node("Slice", [_P + "padded_in", _P + "starts", _P + "ends", _P + "time_axis"],
                         [_P + "chunk"], name=_P + "chunk"),
        helper.make_node("Identity", [_P + "cond_in"], [_P + "cond_out"], name=_P + "cond"),
        *(helper.make_node("Identity", [_P + f"{v}_in"], [_P + f"{v}_out"], name=_P + f"{v}_out")
          for v in _CARRIED),
    ]
    for i in sorted(body_ids):
        node = onnx.NodeProto()
        node.CopyFrom(nodes[i])
        node.input[:] = [inner(n) if n else n for n in node.input]
        node.output[:] = [inner(n) for n in node.output]
        body_nodes.append(node)
    body = helper.make_graph(
        body_nodes, _P + "body",
        [helper.make_tensor_value_info(_P + "iter", TensorProto.INT64, []),
         helper.make_tensor_value_info(_P + "cond_in", TensorProto.BOOL, []),
         *(helper.make_tensor_value_info(_P + f"{v}_in", t, shape) for v, (t, shape) in carried.items())],
        [helper.make_tensor_value_info(_P + "cond_out", TensorProto.BOOL, []),
         *(helper.make_tensor_value_info(_P + f"{v}_out", t, shape) for v, (t, shape) in carried.items()),
         helper.make_tensor_value_info(inner(y_name), elem_type, [None, None, None])],
    )

    # Outside: frames F from the sample count, n chunks, N frames per chunk, the zero-padded input.
    outer: list[onnx.NodeProto] = [
        helper.make_node("Shape", [x_name], [_P + "x_shape"], name=_P + "x_shape"),
        const_node(_P + "two", [2], scalar=True),
        helper.make_node("Gather", [_P + "x_shape", _P + "two"], [_P + "samples"], name=_P + "samples"),
        const_node(_P + "one", [1], scalar=True),
        const_node(_P + "zero", [0], scalar=True),
        const_node(_P + "axis0_outer", [0]),
    ]
    length = _P + "samples"
    for j, (k, s) in enumerate(layers):  # L = (L - k) // s + 1, layer by layer (L >= k: the graph pads)
        outer += [
            const_node(f"{_P}k{j}", [k], scalar=True),
            const_node(f"{_P}s{j}", [s], scalar=True),
            helper.make_node("Sub", [length, f"{_P}k{j}"], [f"{_P}d{j}"], name=f"{_P}d{j}"),
            helper.make_node("Div", [f"{_P}d{j}", f"{_P}s{j}"], [f"{_P}q{j}"], name=f"{_P}q{j}"),
            helper.make_node("Add", [f"{_P}q{j}", _P + "one"], [f"{_P}l{j}"], name=f"{_P}l{j}"),
        ]
        length = f"{_P}l{j}"
    frames = length
    # n = ceil(F / chunk_frames) chunks of N = ceil(F / n) frames
    split, n_chunks, n_less_one, frames_per = balanced_chunks(_P, frames, chunk_frames)
    outer += [
        *split,
        const_node(_P + "stride", [stride], scalar=True),
        const_node(_P + "field_less_stride", [field - stride], scalar=True),
        # chunk j's window: samples [j * step, j * step + window)
        helper.make_node("Mul", [frames_per, _P + "stride"], [_P + "step"], name=_P + "step"),
        helper.make_node("Add", [_P + "step", _P + "field_less_stride"], [_P + "window"], name=_P + "window"),
        # zeros after the row up to the last window's end
        helper.make_node("Mul", [n_less_one, _P + "step"], [_P + "last_start"],
                         name=_P + "last_start"),
        helper.make_node("Add", [_P + "last_start", _P + "window"], [_P + "needed"], name=_P + "needed"),
        helper.make_node("Sub", [_P + "needed", _P + "samples"], [_P + "short"], name=_P + "short"),
        helper.make_node("Max", [_P + "short", _P + "zero"], [_P + "pad_end"], name=_P + "pad_end"),
        const_node(_P + "pad_head", [0, 0, 0, 0, 0]),
        helper.make_node("Unsqueeze", [_P + "pad_end", _P + "axis0_outer"], [_P + "pad_tail"],
                         name=_P + "pad_tail"),
        helper.make_node("Concat", [_P + "pad_head", _P + "pad_tail"], [_P + "pads"], axis=0,
                         name=_P + "pads"),
        helper.make_node("Pad", [x_name, _P + "pads"], [_P + "padded"], mode="constant", name=_P + "padded"),
        # The body's values from outside are loop-carried inputs, not outer-scope references: tools that
        # sort a graph by explicit inputs only (onnxruntime.quantization's quantize_dynamic) keep the order.
        helper.make_node("Loop", [n_chunks, "", *(_P + v for v in _CARRIED)],
                         [*(_P + f"{v}_final" for v in _CARRIED), _P + "stacked"], body=body,
                         name=_P + "loop"),
        # [n, B, C, N] -> [B, C, n, N] -> [B, C, n * N] -> the first F frames
        helper.make_node("Transpose", [_P + "stacked"], [_P + "moved"], perm=[1, 2, 0, 3], name=_P + "moved"),
        const_node(_P + "joined_shape", [0, 0, -1]),
        helper.make_node("Reshape", [_P + "moved", _P + "joined_shape"], [_P + "joined"], name=_P + "joined"),
        helper.make_node("Unsqueeze", [frames, _P + "axis0_outer"], [_P + "frames_1d"],
                         name=_P + "frames_1d"),
        const_node(_P + "zero_1d", [0]),
        const_node(_P + "time_axis_outer", [2]),
        helper.make_node("Slice", [_P + "joined", _P + "zero_1d", _P + "frames_1d", _P + "time_axis_outer"],
                         [y_name], name=_P + "frames"),
    ]
    first = min(body_ids)
    kept = [n for i, n in enumerate(nodes) if i not in body_ids]
    at = sum(1 for i in range(first) if i not in body_ids)
    del graph.node[:]
    graph.node.extend(kept[:at] + outer + kept[at:])
    # Value infos of values now inside the body would describe names that no longer exist outside.
    stale = [v for v in graph.value_info if v.name in produced and v.name != y_name]
    for v in stale:
        graph.value_info.remove(v)
    return model
