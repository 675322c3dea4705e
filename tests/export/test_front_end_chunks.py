"""The convolutional front end in chunks (export/chunking.py): same answers, memory bounded by the chunk.

Real exports of generated checkpoints in the real layout, run by ONNX Runtime: the chunked graph against
the same checkpoint exported without chunks, on lengths around the receptive field and the chunk
boundaries, alone and in padded batches; and the peak memory of a long batch measured in a fresh process.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from emotion2vec_serving.export.checkpoint import write_checkpoint
from emotion2vec_serving.export.chunking import chunk_front_end, iter_nodes
from emotion2vec_serving.export.cli import build_parser
from emotion2vec_serving.export.onnx_export import (
    FRONT_END_CHUNK_S,
    export_repository,
    front_end_chunk_frames,
)
from tests.support.ort_probe import alone_vs_padded, peak_mib, worst_differences

QUIET = {"progress": lambda _m: None}
HOP, FIELD = 320, 400


@pytest.fixture(scope="module")
def odd_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """The ``odd`` checkpoint (160-channel CNN: convs that sum over more than 128 inputs) exported whole,
    in the default 2 s chunks, and in 0.1 s chunks (five frames: several chunks even for short clips)."""
    root = tmp_path_factory.mktemp("chunks")
    ckpt = write_checkpoint(root / "ckpt", "odd", seed=3)
    return {c: export_repository(ckpt, root / f"repo_{c}", verify=False, front_end_chunk_s=c, **QUIET)
            for c in (0.0, FRONT_END_CHUNK_S, 0.1)}


def test_the_graph_has_a_loop_only_when_chunked(odd_repos: dict[float, Path]) -> None:
    for chunk_s, repo in odd_repos.items():
        model = onnx.load(str(repo / "model.onnx"))
        loops = [n for n in model.graph.node
                 if n.op_type == "Loop" and n.name.startswith("front_end_chunks/")]
        top_convs = [n for n in model.graph.node
                     if n.op_type == "Conv" and n.name.startswith("/local_encoder/")]
        note = json.loads((repo / "manifest.json").read_text())["notes"].get("front_end_chunks")
        if chunk_s:
            assert len(loops) == 1 and not top_convs, chunk_s
            assert sum(1 for n in iter_nodes(loops[0].attribute[0].g) if n.op_type == "Conv") == 7
            assert note is not None and f"{chunk_s:g} s" in note
        else:
            assert not loops and len(top_convs) == 7 and note is None
        onnx.checker.check_model(model)


@pytest.mark.parametrize("chunk_s", [FRONT_END_CHUNK_S, 0.1])
def test_chunked_answers_equal_the_whole_row(odd_repos: dict[float, Path], chunk_s: float) -> None:
    frames = front_end_chunk_frames(chunk_s)
    boundary = HOP * (frames - 1) + FIELD  # exactly one chunk's window
    cases = [[FIELD], [FIELD - 1], [FIELD + 1], [boundary], [boundary + 1], [boundary + HOP],
             [16000], [3 * 16000 + 17], [160_123, 1_200, FIELD + 1, boundary + HOP - 1]]
    worst = worst_differences(odd_repos[0.0] / "model.onnx", odd_repos[chunk_s] / "model.onnx", cases)
    # Only the float summation order differs (measured: <= 1.2e-5 on features, <= 1e-6 on probabilities).
    assert worst["probs"] <= 1e-5 and worst["frame_probs"] <= 1e-5, worst
    assert max(worst.values()) <= 1e-4, worst


def test_an_item_is_the_same_alone_and_in_a_padded_batch(odd_repos: dict[float, Path]) -> None:
    """Batch-exact still: the chunks follow the batch's longest row, and the item's answer does not."""
    assert alone_vs_padded(odd_repos[FRONT_END_CHUNK_S] / "model.onnx") <= 1e-5


def test_the_front_ends_memory_follows_the_chunk(odd_repos: dict[float, Path]) -> None:
    """Eight 10 s clips: the first conv's output alone is 8 x 160 x 32,000 x 4 B = 164 MB per copy."""
    whole, chunked = (peak_mib(odd_repos[c] / "model.onnx", 8, 160_000) for c in (0.0, FRONT_END_CHUNK_S))
    assert whole > 250, whole  # two copies of the first conv's output at once (measured 318 MiB)
    assert chunked < 0.4 * whole, (chunked, whole)  # measured 81 MiB


def test_chunk_frames_and_the_cli_default() -> None:
    assert front_end_chunk_frames(0) == 0
    assert front_end_chunk_frames(2.0) == 100  # 20 ms frames
    assert front_end_chunk_frames(0.001) == 1
    with pytest.raises(ValueError):
        front_end_chunk_frames(-1)
    args = build_parser().parse_args(["onnx", "--source", "x", "--out", "y"])
    assert args.front_end_chunk_s == FRONT_END_CHUNK_S


def test_a_graph_without_a_front_end_is_refused() -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"], name="/other/Relu")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = onnx.helper.make_model(graph)
    with pytest.raises(ValueError, match="front-end Conv"):
        chunk_front_end(model, 10)
    assert chunk_front_end(model, 0) is model  # 0: untouched
    with pytest.raises(ValueError, match="negative"):
        chunk_front_end(model, -1)
