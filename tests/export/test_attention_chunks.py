"""Attention over chunks of query rows (export/attention_chunks.py): same answers, memory follows the chunk.

Real exports of a generated checkpoint in the real layout, run by ONNX Runtime: the chunked graph against
the same checkpoint exported with whole attention matrices, on lengths around the chunk boundaries, alone
and in padded batches; ONNX Runtime's own ``quantize_dynamic`` on the chunked graph; and the peak memory of
a long batch measured in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
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


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _batch(lengths: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    waveform = np.zeros((len(lengths), max(lengths)), np.float32)
    for i, n in enumerate(lengths):
        waveform[i, :n] = rng.standard_normal(n).astype(np.float32) * 0.1
    return {"waveform": waveform, "lengths": np.asarray(lengths, np.int64)}


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
    whole, chunked = _session(repos[0] / "model.onnx"), _session(repos[rows] / "model.onnx")
    rng = np.random.default_rng(0)
    # T rows: exactly k chunks, one row more, one row less (T >= EXTRA + 1: one frame at least)
    around = [t for k in (1, 2, 3) for t in (k * rows - 1, k * rows, k * rows + 1) if t > EXTRA]
    cases = [*([_samples(t)] for t in around), [FIELD], [16000], [80_000 + 17],
             [160_123, 1_200, _samples(around[1]), FIELD]]  # a padded batch: the key mask inside the chunks
    names = [o.name for o in whole.get_outputs()]
    worst: dict[str, float] = {}
    for lengths in cases:
        feed = _batch(lengths, rng)
        for name, a, b in zip(names, whole.run(None, feed), chunked.run(None, feed), strict=True):
            assert a.shape == b.shape, (name, lengths)
            if a.dtype.kind == "f":
                assert np.all(np.isfinite(b)), (name, lengths)
                worst[name] = max(worst.get(name, 0.0), float(np.max(np.abs(a - b))))
            else:
                np.testing.assert_array_equal(a, b)
    # Each row is computed by the same kernels from the same values (measured: 0 on the large model).
    assert max(worst.values()) <= 1e-6, worst


def test_an_item_is_the_same_alone_and_in_a_padded_batch(repos: dict[int, Path]) -> None:
    session = _session(repos[SMALL] / "model.onnx")
    rng = np.random.default_rng(1)
    clip = rng.standard_normal(37_000).astype(np.float32) * 0.1
    alone = session.run(["probs", "embedding"], {"waveform": clip[None], "lengths": np.array([37_000])})
    feed = _batch([37_000, 90_000], rng)
    feed["waveform"][0, :37_000] = clip
    batched = session.run(["probs", "embedding"], feed)
    for a, b in zip(alone, batched, strict=True):
        assert float(np.max(np.abs(a[0] - b[0]))) <= 1e-5


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
    feed = _batch([50_000, 20_000], np.random.default_rng(2))
    fp32 = _session(repos[SMALL] / "model.onnx").run(["probs"], feed)[0]
    int8 = _session(out).run(["probs"], feed)[0]
    assert int8.shape == fp32.shape and float(np.max(np.abs(int8 - fp32))) < 0.2


_PEAK = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime as ort
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_cpu_mem_arena = False  # every tensor freed at once: the peak is what is live together
    so.enable_mem_pattern = False
    s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    def run(batch, n):
        w = (rng.standard_normal((batch, n)) * 0.1).astype(np.float32)
        s.run(["probs"], {"waveform": w, "lengths": np.full(batch, n, np.int64)})
    run(1, 16000)
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    before = status("VmRSS")
    run(8, 320000)
    print(json.dumps((status("VmHWM") - before) / 2**20))
""")


def _peak_mib(repo: Path) -> float:
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}  # large blocks unmapped when freed
    out = subprocess.run([sys.executable, "-c", _PEAK, str(repo / "model.onnx")], check=True, env=env,
                         capture_output=True, text=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


def test_attentions_memory_follows_the_chunk(repos: dict[int, Path]) -> None:
    """Eight 20 s clips: one layer's scores are 8 x 3 heads x 1,010^2 x 4 B = 98 MB per copy."""
    whole, chunked = _peak_mib(repos[0]), _peak_mib(repos[ATTENTION_CHUNK_ROWS])
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
