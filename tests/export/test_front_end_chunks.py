"""The convolutional front end in chunks (export/chunking.py): same answers, memory bounded by the chunk.

Real exports of generated checkpoints in the real layout, run by ONNX Runtime: the chunked graph against
the same checkpoint exported without chunks, on lengths around the receptive field and the chunk
boundaries, alone and in padded batches; and the peak memory of a long batch measured in a fresh process.
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

from emotion2vec_serving.export.checkpoint import write_checkpoint
from emotion2vec_serving.export.chunking import chunk_front_end, iter_nodes
from emotion2vec_serving.export.cli import build_parser
from emotion2vec_serving.export.onnx_export import (
    FRONT_END_CHUNK_S,
    export_repository,
    front_end_chunk_frames,
)

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


def _session(repo: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(repo / "model.onnx"), so, providers=["CPUExecutionProvider"])


def _batch(lengths: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    waveform = np.zeros((len(lengths), max(lengths)), np.float32)
    for i, n in enumerate(lengths):
        waveform[i, :n] = rng.standard_normal(n).astype(np.float32) * 0.1
    return {"waveform": waveform, "lengths": np.asarray(lengths, np.int64)}


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
    whole, chunked = _session(odd_repos[0.0]), _session(odd_repos[chunk_s])
    frames = front_end_chunk_frames(chunk_s)
    boundary = HOP * (frames - 1) + FIELD  # exactly one chunk's window
    rng = np.random.default_rng(0)
    cases = [[FIELD], [FIELD - 1], [FIELD + 1], [boundary], [boundary + 1], [boundary + HOP],
             [16000], [3 * 16000 + 17], [160_123, 1_200, FIELD + 1, boundary + HOP - 1]]
    names = [o.name for o in whole.get_outputs()]
    worst: dict[str, float] = {}
    for lengths in cases:
        feed = _batch(lengths, rng)
        for name, a, b in zip(names, whole.run(None, feed), chunked.run(None, feed), strict=True):
            assert a.shape == b.shape, (name, lengths)
            if a.dtype.kind == "f":
                worst[name] = max(worst.get(name, 0.0), float(np.max(np.abs(a - b))))
            else:
                np.testing.assert_array_equal(a, b)
    # Only the float summation order differs (measured: <= 1.2e-5 on features, <= 1e-6 on probabilities).
    assert worst["probs"] <= 1e-5 and worst["frame_probs"] <= 1e-5, worst
    assert max(worst.values()) <= 1e-4, worst


def test_an_item_is_the_same_alone_and_in_a_padded_batch(odd_repos: dict[float, Path]) -> None:
    """Batch-exact still: the chunks follow the batch's longest row, and the item's answer does not."""
    session = _session(odd_repos[FRONT_END_CHUNK_S])
    rng = np.random.default_rng(1)
    clip = rng.standard_normal(37_000).astype(np.float32) * 0.1
    alone = session.run(["probs", "embedding"], {"waveform": clip[None], "lengths": np.array([37_000])})
    feed = _batch([37_000, 90_000], rng)
    feed["waveform"][0, :37_000] = clip
    batched = session.run(["probs", "embedding"], feed)
    for a, b in zip(alone, batched, strict=True):
        assert float(np.max(np.abs(a[0] - b[0]))) <= 1e-5


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
    run(8, 160000)
    print(json.dumps((status("VmHWM") - before) / 2**20))
""")


def _peak_mib(repo: Path) -> float:
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}  # large blocks unmapped when freed
    out = subprocess.run([sys.executable, "-c", _PEAK, str(repo / "model.onnx")], check=True, env=env,
                         capture_output=True, text=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


def test_the_front_ends_memory_follows_the_chunk(odd_repos: dict[float, Path]) -> None:
    """Eight 10 s clips: the first conv's output alone is 8 x 160 x 32,000 x 4 B = 164 MB per copy."""
    whole, chunked = _peak_mib(odd_repos[0.0]), _peak_mib(odd_repos[FRONT_END_CHUNK_S])
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
