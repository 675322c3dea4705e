"""Attention over chunks of query rows (export/attention_chunks.py): same answers, memory follows the chunk.

Real exports of a generated checkpoint in the real layout, run by ONNX Runtime: the chunked graph against
the same checkpoint exported with whole attention matrices, on lengths around the chunk boundaries, alone
and in padded batches; ONNX Runtime's own ``quantize_dynamic`` on the chunked graph; and the peak memory of
a long batch measured in a fresh process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from emotion2vec_serving.export.attention_chunks import chunk_attention
from emotion2vec_serving.export.checkpoint import write_checkpoint
from emotion2vec_serving.export.chunking import iter_nodes
from emotion2vec_serving.export.cli import build_parser
from emotion2vec_serving.export.onnx_export import (
    ATTENTION_CHUNK_ROWS,
    attention_chunk_rows_for,
    export_repository,
)
from tests.support.ort_probe import alone_vs_padded, padded_batch, peak_mib, session, worst_differences

QUIET = {"progress": lambda _m: None}
HOP, FIELD, EXTRA = 320, 400, 10  # frame hop and receptive field in samples; extra tokens before the frames
SMALL = 7  # rows per chunk: several chunks even for short clips, and T rarely a multiple of it


def _samples(tokens: int) -> int:
    """Samples of a clip whose attention has ``tokens`` rows (frames + the extra tokens)."""
    return FIELD + HOP * (tokens - EXTRA - 1)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The ``odd`` checkpoint (3 heads, 3 attention layers) with whole attention, the default chunks and
    chunks of ``SMALL`` rows."""
    root = tmp_path_factory.mktemp("attention")
    ckpt = write_checkpoint(root / "ckpt", "odd", seed=5)
    return {rows: export_repository(ckpt, root / f"repo_{rows}", verify=False, attention_chunk_rows=rows,
                                    **QUIET)
            for rows in (0, ATTENTION_CHUNK_ROWS, SMALL)}


def test_each_attention_is_a_loop_only_when_chunked(repos: dict[int, Path]) -> None:
    for rows, repo in repos.items():
        model = onnx.load(str(repo / "model.onnx"))
        ifs = [n for n in model.graph.node if n.op_type == "If" and n.name.startswith("attention")]
        top_softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
        note = json.loads((repo / "manifest.json").read_text())["notes"].get("attention_chunks")
        if rows:
            assert len(ifs) == 3, rows  # one per layer (prenet 1 + depth 2)
            for node in ifs:  # long: a loop over chunks; short: the nodes as they were
                branches = {a.name: a.g for a in node.attribute}
                chunked, whole = list(iter_nodes(branches["then_branch"])), branches["else_branch"].node
                assert [n.op_type for n in chunked].count("Loop") == 1
                assert [n.op_type for n in chunked].count("Softmax") == 1
                assert [n.op_type for n in whole].count("Softmax") == 1
            assert len(top_softmax) == 2  # the head's (probs, frame_probs) stay outside
            assert note is not None and f"more than {rows} query rows" in note
        else:
            assert not ifs and len(top_softmax) == 5 and note is None
        onnx.checker.check_model(model)


@pytest.mark.parametrize("rows", [ATTENTION_CHUNK_ROWS, SMALL])
def test_chunked_answers_equal_whole_attention(repos: dict[int, Path], rows: int) -> None:
    # T rows: exactly k chunks, one row more, one row less (T >= EXTRA + 1: one frame at least)
    around = [t for k in (1, 2, 3) for t in (k * rows - 1, k * rows, k * rows + 1) if t > EXTRA]
    cases = [*([_samples(t)] for t in around), [FIELD], [16000], [80_000 + 17],
             [160_123, 1_200, _samples(around[1]), FIELD]]  # a padded batch: the key mask inside the chunks
    worst = worst_differences(repos[0] / "model.onnx", repos[rows] / "model.onnx", cases)
    # Each row is computed by the same kernels from the same values (measured: 0 on the large model).
    assert max(worst.values()) <= 1e-6, worst


def test_an_item_is_the_same_alone_and_in_a_padded_batch(repos: dict[int, Path]) -> None:
    assert alone_vs_padded(repos[SMALL] / "model.onnx") <= 1e-5


def test_onnxruntime_quantize_dynamic_keeps_the_loops_after_their_values(repos: dict[int, Path],
                                                                          tmp_path: Path) -> None:
    """quantize_dynamic re-sorts the graph by explicit inputs: the loops' shape input keeps them in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path / "int8.onnx"
    quantize_dynamic(str(repos[SMALL] / "model.onnx"), str(out), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    onnx.checker.check_model(str(out))
    model = onnx.load(str(out))
    assert sum(n.op_type == "If" and n.name.startswith("attention") for n in model.graph.node) == 3
    feed = padded_batch([50_000, 20_000], np.random.default_rng(2))
    fp32 = session(repos[SMALL] / "model.onnx").run(["probs"], feed)[0]
    int8 = session(out).run(["probs"], feed)[0]
    assert int8.shape == fp32.shape and float(np.max(np.abs(int8 - fp32))) < 0.2


def test_attentions_memory_follows_the_chunk(repos: dict[int, Path]) -> None:
    """Eight 20 s clips: one layer's scores are 8 x 3 heads x 1,010^2 x 4 B = 98 MB per copy."""
    whole, chunked = (peak_mib(repos[rows] / "model.onnx", 8, 320_000) for rows in (0, ATTENTION_CHUNK_ROWS))
    assert whole > 190, whole  # two copies of a layer's scores at once (measured 314 MiB)
    assert chunked < 0.4 * whole, (chunked, whole)  # measured 87 MiB


def test_the_cli_default_and_refusals() -> None:
    args = build_parser().parse_args(["onnx", "--source", "x", "--out", "y"])
    assert args.attention_chunk_rows is None  # the precision's default:
    assert attention_chunk_rows_for("fp32") == attention_chunk_rows_for("int8") == ATTENTION_CHUNK_ROWS
    assert attention_chunk_rows_for("fp16") == 0
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"], name="/other/Relu")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = onnx.helper.make_model(graph)
    with pytest.raises(ValueError, match="no Softmax"):
        chunk_attention(model, 10)
    assert chunk_attention(model, 0) is model  # 0: untouched
    with pytest.raises(ValueError, match="negative"):
        chunk_attention(model, -1)
