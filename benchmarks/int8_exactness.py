"""int8 exact as served (issue 24): why a padded short clip's int8 answer moves, and what the server does now.

Two sections, one command, results under ``--out`` (results.json + README.md with the command, CPU flags and
the 1-minute load average before each row):

- ``kernel``: the mechanism without the model. ONE ONNX ``Conv`` (kernel 2, stride 2, as the last two layers
  of emotion2vec's CNN) run on a clip of T output frames alone, and on the same clip zero-padded to 599
  frames; the first T outputs are compared bit for bit. ONNX Runtime's SGEMM sums K = channels x kernel
  in blocks of 128 for a wide GEMM but of 256 for one of <= 64 columns (output frames), so once K > 128 a
  short clip alone and padded sums in different blocks: last-bit differences, in fp32 and therefore before
  every int8 quantiser (K = 128 is the control: one block either way).
- ``served``: int8 repositories through the server's ``Runner``: each clip alone vs. in a batch with a 20x
  louder 2.4 s mate, (a) padded into one batch (what the server did while the exporter let int8 claim
  ``batch_exact``) and (b) in the server's equal-length groups (``equal_length_batches``: what it does now),
  where the clip runs alone; and (c) with a 20x louder mate of its own length, in one group of two: the
  bound of equal-length batching itself.

``--build-odd DIR`` exports the exporter's ``odd`` checkpoint (seed 7) to int8 in DIR (about a minute) and
measures it. ``--quick``: the kernel section's short rows and 3 clips per duration, one thread (< 1 min on
the tiny model). Nothing here is a timing.

    python -m benchmarks.int8_exactness --build-odd ~/.cache/emotion2vec-bench/odd_int8 \\
        --out benchmarks/results/int8_exactness
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import load_average, machine_description
from benchmarks.soak import cpu_flags

SR = 16000
PADDED_FRAMES = 599
KERNEL_CHANNELS = (64, 96, 160, 512)  # K = 128 (one block either way: the control), 192, 320, 1024
KERNEL_FRAMES = (24, 49, 64, 65, 99, 199, 399)  # last CNN layer of 0.5, 1.0, 1.3, 1.3+, 2, 4, 8 s clips
DURATIONS_S = (0.5, 0.8, 1.3, 2.0, 3.7, 6.0)
MATE_S = 2.4
MATE_GAIN = 20.0


def _load1() -> float:
    return round(load_average()[0], 2)


def _conv_session(channels: int, threads: int) -> Any:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(channels)
    weight = (rng.standard_normal((channels, channels, 2)) / np.sqrt(2 * channels)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[2], strides=[2])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, channels, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, channels, None])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def kernel_rows(threads: Sequence[int], frames: Sequence[int]) -> list[dict[str, Any]]:
    """One Conv, a clip alone vs. zero-padded: how many of its outputs differ, and by how much."""
    rows = []
    for t in threads:
        for channels in KERNEL_CHANNELS:
            session = _conv_session(channels, t)
            for n in frames:
                load = _load1()
                x = np.random.default_rng(n).standard_normal((1, channels, 2 * n)).astype(np.float32)
                padded = np.zeros((1, channels, 2 * PADDED_FRAMES), np.float32)
                padded[..., : 2 * n] = x
                alone = session.run(None, {"x": x})[0]
                inside = session.run(None, {"x": padded})[0][..., :n]
                diff = np.abs(alone.astype(np.float64) - inside)
                # The same clip beside a 20x louder mate of its own length (no padding): how the threads
                # split a batch of two vs. one item.
                pair = np.concatenate([20.0 * np.random.default_rng(7 + n).standard_normal(x.shape), x])
                in_pair = session.run(None, {"x": pair.astype(np.float32)})[0][1:]
                pair_diff = np.abs(alone.astype(np.float64) - in_pair)
                rows.append({"threads": t, "channels": channels, "K": 2 * channels, "frames_alone": n,
                             "frames_padded": PADDED_FRAMES, "outputs_differing": int((diff > 0).sum()),
                             "outputs": int(diff.size), "max_abs_diff": float(diff.max()),
                             "max_abs_output": float(np.abs(alone).max()),
                             "pair_outputs_differing": int((pair_diff > 0).sum()),
                             "pair_max_abs_diff": float(pair_diff.max()), "loadavg_1m": load})
    return rows


def build_odd(directory: Path) -> Path:
    """The exporter's ``odd`` checkpoint (seed 7) exported to int8 in ``directory`` (reused if there)."""
    from emotion2vec_serving.export.checkpoint import write_checkpoint
    from emotion2vec_serving.export.onnx_export import export_repository

    repo = directory / "repo_int8"
    if (repo / "manifest.json").is_file():
        return repo
    checkpoint = write_checkpoint(directory / "checkpoint", size="odd", seed=7)
    return export_repository(checkpoint, repo, precision="int8", verify=False, progress=lambda _m: None)


def served_rows(repo: Path, threads: Sequence[int], seeds: int,
                durations: Sequence[float]) -> list[dict[str, Any]]:
    """Each clip alone vs. with a loud longer mate: padded into one batch, and in equal-length groups."""
    from emotion2vec_serving.export.signals import speech_like
    from emotion2vec_serving.modelrepo.manifest import load_manifest
    from emotion2vec_serving.server.runtime.contract import RunnerOptions
    from emotion2vec_serving.server.runtime.engines import equal_length_batches
    from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER
    from emotion2vec_serving.server.runtime.runner import Runner

    manifest = load_manifest(repo)
    mate = MATE_GAIN * speech_like(int(MATE_S * SR), seed=99)
    rows = []
    for t in threads:
        runner = Runner(manifest, RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=t))
        grouped = equal_length_batches(runner.run)
        try:
            for duration in durations:
                load = _load1()
                worst = {"padded": (0.0, -1), "equal_length_groups": (0.0, -1), "same_length_mate": (0.0, -1)}
                flipped = 0
                for seed in range(seeds):
                    clip = speech_like(int(duration * SR), seed=seed)
                    alone = runner.run([clip])[0].probs
                    padded = runner.run([mate, clip])[1].probs
                    groups = grouped([mate, clip])[1].probs
                    twin = grouped([MATE_GAIN * speech_like(len(clip), seed=1000 + seed), clip])[1].probs
                    assert all(x is not None for x in (alone, padded, groups, twin))
                    for mode, got in (("padded", padded), ("equal_length_groups", groups),
                                      ("same_length_mate", twin)):
                        d = float(np.abs(got.astype(np.float64) - alone).max())
                        if d > worst[mode][0]:
                            worst[mode] = (d, seed)
                    flipped += int(float(np.abs(padded - alone).max()) > 1e-5)
                rows.append({"repo": str(repo), "threads": t, "duration_s": duration, "clips": seeds,
                             "padded_max_abs_probs": worst["padded"][0],
                             "padded_worst_seed": worst["padded"][1],
                             "padded_clips_over_1e-5": flipped,
                             "grouped_max_abs_probs": worst["equal_length_groups"][0],
                             "same_length_mate_max_abs_probs": worst["same_length_mate"][0],
                             "loadavg_1m": load})
        finally:
            runner.close()
    return rows


def _model_line(repo: Path) -> str:
    from emotion2vec_serving.modelrepo.manifest import load_manifest

    m = load_manifest(repo)
    conf = m.source.config if m.source is not None else {}
    dims = {k: conf.get(k) for k in ("embed_dim", "num_heads", "depth")}
    audio = conf.get("modalities", {}).get("audio", {}) if isinstance(conf, dict) else {}
    prenet = audio.get("prenet_depth")
    return (f"{m.model_name} {m.precision} ({dims}, prenet_depth {prenet}, CNN "
            f"{_cnn_channels(conf)}), manifest batch_exact={m.batch_exact}, "
            f"batch_exact_equal_length={m.batch_exact_equal_length}")


def _cnn_channels(conf: Any) -> str:
    try:
        spec = conf["modalities"]["audio"]["feature_encoder_spec"]
        return str(spec).split(",")[0].strip("[( ")
    except (KeyError, TypeError):
        return "?"


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        "# int8 exact as served: measurement",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} logical CPUs, CPU flags: "
        f"{' '.join(meta['cpu_flags']) or 'none of interest'}, "
        f"onnxruntime {meta['machine']['onnxruntime']}  ",
        f"Started {meta['started_utc']} UTC. {meta['load_note']}",
        "",
        "## Kernel: one Conv (kernel 2, stride 2), a clip alone vs. zero-padded to 599 frames",
        "",
        "The last two columns: the clip beside a 20x louder clip of its own length (batch of 2, no padding).",
        "",
        "| threads | channels | K | frames alone | padded: outputs differing | padded: max abs Δ "
        "| max abs output | pair: outputs differing | pair: max abs Δ | load 1 min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["kernel"]:
        lines.append(f"| {r['threads']} | {r['channels']} | {r['K']} | {r['frames_alone']} | "
                     f"{r['outputs_differing']} / {r['outputs']} | {r['max_abs_diff']:.2e} | "
                     f"{r['max_abs_output']:.2f} | {r['pair_outputs_differing']} | "
                     f"{r['pair_max_abs_diff']:.2e} | {r['loadavg_1m']:.2f} |")
    for repo, model in data["models"].items():
        lines += ["", f"## Served: `{repo}`", "", model, "",
                  f"Each clip alone vs. in a batch with a {MATE_GAIN:g}x louder {MATE_S} s mate; max |Δprob| "
                  "over the clips of each duration.", "",
                  "| threads | clip s | clips | padded (old: int8 claimed batch_exact) "
                  "| padded clips > 1e-5 | equal-length groups (now) | now, a loud mate of the same length "
                  "| load 1 min |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in data["served"]:
            if r["repo"] == repo:
                lines.append(f"| {r['threads']} | {r['duration_s']} | {r['clips']} | "
                             f"{r['padded_max_abs_probs']:.2e} | {r['padded_clips_over_1e-5']} | "
                             f"{r['grouped_max_abs_probs']:.2e} | "
                             f"{r['same_length_mate_max_abs_probs']:.2e} | {r['loadavg_1m']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repo", type=Path, action="append", default=[], help="int8 repository (repeatable)")
    p.add_argument("--build-odd", type=Path, default=None, help="export the odd checkpoint to int8 here")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seeds", type=int, default=12)
    p.add_argument("--durations", default=",".join(str(d) for d in DURATIONS_S), help="clip seconds")
    p.add_argument("--no-kernel", action="store_true", help="skip the kernel section")
    p.add_argument("--quick", action="store_true", help="short rows, 3 clips per duration, one thread")
    args = p.parse_args(argv)
    threads = [1] if args.quick else [int(t) for t in args.threads.split(",")]
    seeds = 3 if args.quick else args.seeds
    durations = (0.5, 1.3, 2.0) if args.quick else tuple(float(d) for d in args.durations.split(","))
    frames = (24, 99) if args.quick else KERNEL_FRAMES
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    repos = list(args.repo) + ([build_odd(args.build_odd)] if args.build_odd is not None else [])
    load_before = _load1()
    data: dict[str, Any] = {
        "meta": {"command": "python -m benchmarks.int8_exactness " + " ".join(sys.argv[1:] if argv is None
                                                                            else argv),
                 "machine": machine_description(), "cpu_flags": cpu_flags(), "started_utc": started,
                 "quick": args.quick,
                 "load_note": f"1-minute load average {load_before:.2f} at the start: the machine is shared; "
                              "nothing here is a timing, every number is a bit-level comparison."},
        "kernel": [] if args.no_kernel else kernel_rows(threads, frames),
        "models": {str(r): _model_line(r) for r in repos},
        "served": [row for r in repos for row in served_rows(r, threads, seeds, durations)],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (args.out / "measurement.md").write_text(markdown(data), encoding="utf-8")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
