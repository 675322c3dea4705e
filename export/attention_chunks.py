"""Run each attention over chunks of query rows (an ONNX ``Loop`` per layer), exactly.

Attention holds the model's largest activations once the front end runs in chunks (export/chunking.py):
the scores ``q k^T`` of a layer are ``[batch, heads, T, T]`` in float32, ``T`` = frames + 10 extra tokens
(50 frames per second of audio), and the bias, mask and softmax make one or two more of that size. For a
batch of four 10.7 s clips on the large model (16 heads) that is 76 MB per tensor, for one 30 s clip 146 MB:
peak memory grows with the square of the longest clip in flight.

Every row of the softmax depends on its own query row only (the bias and the key mask are indexed by the
row, the softmax runs over keys), so the nodes from the score ``MatMul`` to the ``MatMul`` with ``v`` can
run over chunks of query rows and the outputs be concatenated: each row is computed from the same values by
the same kernels, and the scores' peak follows ``batch x heads x chunk x T``. Chunks are balanced like the
front end's: ``T`` rows run as ``n = ceil(T / chunk_rows)`` chunks of ``ceil(T / n)`` rows; the last
chunk's rows of ``q`` and of the bias (ALiBi, ``[1, heads, T, T]``, one tensor for every layer) get zero
rows up to that size (their outputs are cut away), so every iteration has the same shape.

Attention of at most ``chunk_rows`` rows runs as before (an ``If`` per layer picks), where the scores are a
few MB anyway. The subgraphs cost ~2-3 % of a 3.75 s clip's run on the int8 large model whichever branch
runs (same-process alternating runs; fp32 within noise): the price of the bounded peak.
``chunk_rows = 0`` leaves the graph as it is.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from emotion2vec_serving.export.chunking import balanced_chunks, const_node

__all__ = ["ATTENTION_PREFIX", "chunk_attention"]

ATTENTION_PREFIX = "attention_chunks/"  # prefix of every value this pass adds
#: Ops allowed between the score MatMul and the MatMul with v (others mean a graph this pass does not know).
_REGION_OPS = {"MatMul", "Cast", "Add", "Where", "Softmax", "Slice", "Concat"}


def _index(nodes: list[onnx.NodeProto]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Each value's producing node and its consuming nodes (indices into ``nodes``)."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    return producer, consumers


def _regions(nodes: list[onnx.NodeProto], producer: dict[str, int],
             consumers: dict[str, list[int]]) -> list[list[int]]:
    """Per Softmax: the node indices from its score MatMul to its MatMul with ``v`` (graph order)."""
    found = []
    for s, node in enumerate(nodes):
        if node.op_type != "Softmax":
            continue
        # forward: Softmax -> (Cast) -> MatMul; other softmaxes (the classifier's) are not attention
        end: int | None = s
        while end is not None and nodes[end].op_type != "MatMul":
            users = consumers.get(nodes[end].output[0], [])
            end = users[0] if len(users) == 1 and nodes[users[0]].op_type in ("Cast", "MatMul") else None
        if end is None:
            continue
        # backward, breadth first: the nearest MatMul is the score MatMul
        start, queue, seen = None, [s], {s}
        while queue and start is None:
            i = queue.pop(0)
            for name in nodes[i].input:
                j = producer.get(name)
                if j is None or j in seen:
                    continue
                if nodes[j].op_type == "MatMul":
                    start = j
                    break
                seen.add(j)
                queue.append(j)
        if start is None:
            raise ValueError(f"{node.name}: no score MatMul before the softmax")
        # the region: descendants of the score MatMul that are ancestors of the MatMul with v
        down = {start}
        for i in range(start + 1, end + 1):
            if any(producer.get(name) in down for name in nodes[i].input):
                down.add(i)
        up = {end}
        for i in range(end, start - 1, -1):
            if i in up:
                up.update(producer[name] for name in nodes[i].input if name in producer)
        region = sorted(down & up)
        ops = {nodes[i].op_type for i in region}
        if not ops <= _REGION_OPS or sum(nodes[i].op_type == "Softmax" for i in region) != 1:
            raise ValueError(f"{node.name}: unexpected ops between the score MatMul and v: {sorted(ops)}")
        found.append(region)
    return found


def _renamed(node: onnx.NodeProto, names: dict[str, str], prefix: str) -> onnx.NodeProto:
    """A copy of ``node`` for a subgraph: its values renamed by ``names``, its name prefixed."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.input[:] = [names.get(n, n) for n in copy.input]
    copy.output[:] = [names.get(n, n) for n in copy.output]
    copy.name = prefix + copy.name
    return copy


def chunk_attention(model: onnx.ModelProto, chunk_rows: int) -> onnx.ModelProto:
    """Rewrite ``model`` in place so every attention of more than ``chunk_rows`` query rows runs over
    balanced chunks of at most ``chunk_rows`` rows (an ``If`` per layer: shorter ones run as they were).

    A region is found per ``Softmax``: from the nearest ``MatMul`` before it (``q @ k^T``, ``q`` its first
    input, ``[batch, heads, T, head_dim]``) to the ``MatMul`` with ``v`` after it. Inputs added to the
    scores (``Add``) from outside are indexed ``[.., T, T]`` (the bias) and are chunked with ``q``; the
    other inputs (keys, values, the key mask, constants) are the same for every chunk.
    """
    if chunk_rows < 0:
        raise ValueError("chunk_rows must not be negative (0: no chunks)")
    if chunk_rows == 0:
        return model
    graph = model.graph
    nodes = list(graph.node)
    producer, consumers = _index(nodes)
    regions = _regions(nodes, producer, consumers)
    if not regions:
        raise ValueError("no Softmax (attention) in the graph")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    moved: set[int] = set()
    insert_before: dict[int, list[onnx.NodeProto]] = {}
    geometry: dict[str, tuple[str, str, str]] = {}  # rows from -> (n chunks, rows per chunk, row count 1-D)

    for k, region in enumerate(regions):
        p = f"{ATTENTION_PREFIX}{k}/"
        inside = set(region)
        produced = {out for i in region for out in nodes[i].output}
        first, last = nodes[region[0]], nodes[region[-1]]
        q, out = first.input[0], last.output[0]
        escaping = sorted(name for name in produced - {out} if set(consumers.get(name, ())) - inside
                          or name in {o.name for o in graph.output})
        if escaping:
            raise ValueError(f"{first.name}: attention values used outside it: {escaping}")
        external = [name for i in region for name in nodes[i].input if name and name not in produced]
        constants = sorted({producer[name] for name in external
                            if name in producer and nodes[producer[name]].op_type == "Constant"})
        const_names = {nodes[i].output[0] for i in constants}
        biases = sorted({name for i in region if nodes[i].op_type == "Add"
                         for name in nodes[i].input if name in external and name not in const_names})
        t = types.get(out)
        if t is None or not t.HasField("shape"):
            raise ValueError(f"no type or rank inferred for {out!r}")

        outer: list[onnx.NodeProto] = []
        rows_from = biases[0] if biases else q  # every layer shares the bias: the geometry is computed once
        if rows_from not in geometry:  # n = ceil(T / chunk_rows) chunks of c = ceil(T / n) rows
            g = f"{p}geometry/"
            split, n, _, size = balanced_chunks(g, g + "rows", chunk_rows)
            outer += [
                helper.make_node("Shape", [rows_from], [g + "rows_1d"], start=2, end=3, name=g + "rows_1d"),
                const_node(g + "zero", [0], scalar=True),
                helper.make_node("Gather", [g + "rows_1d", g + "zero"], [g + "rows"], name=g + "rows"),
                *split,
            ]
            geometry[rows_from] = (n, size, g + "rows_1d")
        n_chunks, c, rows_1d = geometry[rows_from]

        # The body reads the outer values directly: loop-carried copies would be copied every iteration and
        # kept as the loop's final outputs (+500 MiB for the large model, measured). Their shapes, joined,
        # are the one loop-carried input, so tools that sort a graph by explicit inputs only (onnxruntime's
        # quantize_dynamic) keep the loop after the values it reads.
        outer_values = list(dict.fromkeys(name for name in external if name not in const_names))
        if outer_values[0] != q:
            raise ValueError(f"{first.name}: q should be the attention's first outer value")
        outer += [helper.make_node("Shape", [name], [f"{p}dep{j}"], name=f"{p}dep{j}")
                  for j, name in enumerate(outer_values)]
        outer.append(helper.make_node("Concat", [f"{p}dep{j}" for j in range(len(outer_values))],
                                      [p + "deps"], axis=0, name=p + "deps"))

        # Chunk i: rows [i c, i c + c) of q and the biases; the last one gets zero rows past T (cut after).
        body_nodes = [
            helper.make_node("Mul", [p + "iter", c], [p + "start"], name=p + "start"),
            helper.make_node("Add", [p + "start", c], [p + "end"], name=p + "end"),
            const_node(p + "axis0", [0]),
            const_node(p + "row_axis", [2]),
            const_node(p + "pads_head", [0, 0, 0, 0, 0, 0]),
            const_node(p + "pads_tail", [0]),
            helper.make_node("Unsqueeze", [p + "start", p + "axis0"], [p + "starts"], name=p + "starts"),
            helper.make_node("Unsqueeze", [p + "end", p + "axis0"], [p + "ends"], name=p + "ends"),
            helper.make_node("Min", [p + "ends", rows_1d], [p + "ends_in_rows"], name=p + "ends_in_rows"),
            helper.make_node("Sub", [p + "ends", p + "ends_in_rows"], [p + "short"], name=p + "short"),
            helper.make_node("Concat", [p + "pads_head", p + "short", p + "pads_tail"], [p + "pads"], axis=0,
                             name=p + "pads"),
            helper.make_node("Identity", [p + "cond_in"], [p + "cond_out"], name=p + "cond"),
            helper.make_node("Identity", [p + "deps_in"], [p + "deps_out"], name=p + "deps_out"),
        ]
        rename = {name: p + "in/" + name for name in produced | const_names}
        for j, name in enumerate([q, *biases]):
            rename[name] = f"{p}rows{j}"
            body_nodes += [
                helper.make_node("Slice", [name, p + "starts", p + "ends_in_rows", p + "row_axis"],
                                 [f"{p}rows{j}/cut"], name=f"{p}rows{j}/cut"),
                helper.make_node("Pad", [f"{p}rows{j}/cut", p + "pads"], [f"{p}rows{j}"], mode="constant",
                                 name=f"{p}rows{j}"),
            ]
        body_nodes += [_renamed(nodes[i], rename, p + "in/") for i in constants + region]
        rank = len(t.shape.dim)
        body = helper.make_graph(
            body_nodes, p + "body",
            [helper.make_tensor_value_info(p + "iter", TensorProto.INT64, []),
             helper.make_tensor_value_info(p + "cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info(p + "deps_in", TensorProto.INT64, [None])],
            [helper.make_tensor_value_info(p + "cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info(p + "deps_out", TensorProto.INT64, [None]),
             helper.make_tensor_value_info(rename[out], t.elem_type, [None] * rank)],
        )
        chunked = [
            helper.make_node("Loop", [n_chunks, "", p + "deps"], [p + "deps_final", p + "stacked"], body=body,
                             name=p + "loop"),
            # [n, B, H, c, d] -> [B, H, n, c, d] -> [B, H, n c, d] -> the first T rows
            helper.make_node("Transpose", [p + "stacked"], [p + "moved"], perm=[1, 2, 0, 3, 4],
                             name=p + "moved"),
            helper.make_node("Shape", [p + "stacked"], [p + "bh"], start=1, end=3, name=p + "bh"),
            helper.make_node("Shape", [p + "stacked"], [p + "d"], start=4, end=5, name=p + "d"),
            const_node(p + "minus_one", [-1]),
            helper.make_node("Concat", [p + "bh", p + "minus_one", p + "d"], [p + "joined_shape"], axis=0,
                             name=p + "joined_shape"),
            helper.make_node("Reshape", [p + "moved", p + "joined_shape"], [p + "joined"], name=p + "joined"),
            const_node(p + "zero_1d", [0]),
            const_node(p + "row_axis_outer", [2]),
            helper.make_node("Slice", [p + "joined", p + "zero_1d", rows_1d, p + "row_axis_outer"],
                             [p + "chunked"], name=p + "rows"),
        ]
        # T <= chunk_rows: the nodes as they were (no slices or copies), the scores being small anyway. The
        # condition reads q's rows from the shapes above, so the If too stays after the values it reads when
        # a tool sorts by explicit inputs.
        whole_names = {name: p + "whole/" + name for name in produced | const_names}
        whole_nodes = [_renamed(nodes[i], whole_names, p + "whole/") for i in constants + region]
        outer += [
            const_node(p + "q_rows_at", [2], scalar=True),
            helper.make_node("Gather", [p + "deps", p + "q_rows_at"], [p + "q_rows"], name=p + "q_rows"),
            const_node(p + "max_whole", [chunk_rows], scalar=True),
            helper.make_node("Greater", [p + "q_rows", p + "max_whole"], [p + "long"], name=p + "long"),
            helper.make_node(
                "If", [p + "long"], [out], name=p + "if",
                then_branch=helper.make_graph(chunked, p + "chunked", [], [
                    helper.make_tensor_value_info(p + "chunked", t.elem_type, [None] * rank)]),
                else_branch=helper.make_graph(whole_nodes, p + "whole", [], [
                    helper.make_tensor_value_info(whole_names[out], t.elem_type, [None] * rank)])),
        ]
        moved.update(region)
        moved.update(i for i in constants if set(consumers[nodes[i].output[0]]) <= inside)
        insert_before.setdefault(region[-1], []).extend(outer)  # after every value it reads

    kept: list[onnx.NodeProto] = []
    for i, node in enumerate(nodes):
        kept.extend(insert_before.get(i, []))
        if i not in moved:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    gone = {out for i in moved for out in nodes[i].output}
    for vi in [vi for vi in graph.value_info if vi.name in gone]:
        graph.value_info.remove(vi)
    return model
