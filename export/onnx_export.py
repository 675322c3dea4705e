"""Checkpoint -> ONNX model repository (``model.onnx`` + ``manifest.json``, see docs/DESIGN.md).

The TorchScript exporter (``dynamo=False``) is used: the dynamo exporter cannot express the model's
length-dependent shapes without guards. Tracing uses a *padded* two-item batch so that every masking
path is recorded, and a freshly built model, so that no cached ALiBi tensor becomes a constant.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from emotion2vec_serving.export.load import LoadedCheckpoint, load_checkpoint
from emotion2vec_serving.export.model import Emotion2vecBatchExact, build_model
from emotion2vec_serving.export.ort_run import OnnxModel, pad_batch
from emotion2vec_serving.export.signals import DEVIATION_LENGTHS_S, speech_like_set
from emotion2vec_serving.modelrepo import INPUT_NAMES, MANIFEST_FILE, MANIFEST_SCHEMA_VERSION, ONNX_FILE

__all__ = ["OPSET", "PRECISIONS", "export_onnx", "export_repository", "label_entries"]

OPSET = 17
PRECISIONS = ("fp32", "fp16", "int8")
#: Above this size the weights go to ``model.onnx.data`` (protobuf files cannot exceed 2 GB).
EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30
MIN_SAMPLES = 400

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_onnx(model: Emotion2vecBatchExact, path: Path, opset: int = OPSET) -> Path:
    """Trace ``model`` into ``path`` with dynamic batch and time axes; external data when large."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Padded dummy batch: item 0 fills the row, item 1 is shorter, so the masks are not all-true.
    gen = torch.Generator().manual_seed(0)
    waveform = torch.randn(2, 16000, generator=gen) * 0.1
    waveform[1, 11000:] = 0.0
    lengths = torch.tensor([16000, 11000], dtype=torch.int64)
    names = model.output_names
    axes: dict[str, dict[int, str]] = {
        "waveform": {0: "batch", 1: "samples"},
        "lengths": {0: "batch"},
    }
    for name in names:
        axes[name] = {0: "batch", 1: "frames"} if name.startswith("frame_") and name != "frame_lengths" else {
            0: "batch"
        }
    # Trace into a scratch directory: for models over 2 GB torch writes one file per tensor there.
    with tempfile.TemporaryDirectory(prefix="emotion-trace-") as tmp:
        traced = Path(tmp) / ONNX_FILE
        with torch.no_grad():
            torch.onnx.export(
                model,
                (waveform, lengths),
                str(traced),
                input_names=["waveform", "lengths"],
                output_names=list(names),
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
        external = traced.stat().st_size > EXTERNAL_DATA_THRESHOLD_BYTES or len(list(Path(tmp).iterdir())) > 1
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)
        if external:
            proto = onnx.load(str(traced))
            onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
        else:
            shutil.move(str(traced), str(path))
    return path


def _quantize_int8(fp32_path: Path, out_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # MatMul only: quantising the CNN convs too costs accuracy and, on CPU, speed (MODEL_NOTES.md).
    # reduce_range (7-bit weights) avoids the u8s8 overflow of AVX2 kernels: cosine 0.9998 vs 0.977.
    quantize_dynamic(
        str(fp32_path),
        str(out_path),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        reduce_range=True,
        use_external_data_format=fp32_path.stat().st_size > EXTERNAL_DATA_THRESHOLD_BYTES,
    )


def label_entries(tokens: tuple[str, ...]) -> list[dict[str, Any]]:
    """Manifest label rows from ``tokens.txt`` lines (``生气/angry``, ``<unk>``, ``unuse_3``)."""
    rows = []
    for i, token in enumerate(tokens):
        if "/" in token:
            zh, en = token.split("/", 1)
        elif token == "<unk>":
            zh, en = "", "unknown"
        else:
            zh, en = "", token
        rows.append({"index": i, "name": en, "name_zh": zh, "token": token,
                     "enabled": not token.startswith("unuse")})
    return rows


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    import onnxruntime

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    for dist in ("funasr", "emotion2vec-serving"):
        try:
            versions[dist.replace("-", "_")] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist.replace("-", "_")] = "not installed"
    return versions


def measure_deviation(
    reference: Emotion2vecBatchExact, onnx_path: Path, clips: list[np.ndarray]
) -> dict[str, Any]:
    """Compare the ONNX model (clips run as one padded batch, and alone) with the fp32 torch model.

    ``max_abs_probs``/``min_cosine_embedding``: padded-batch ONNX vs fp32 reference, items alone.
    ``batch_consistency_max_abs_probs``: ONNX padded batch vs ONNX alone: dynamic int8 quantisation picks
    activation scales per tensor, i.e. per batch, so a quantised model is not exactly batch-invariant.
    """
    session = OnnxModel(onnx_path)
    batched = session.run_clips(clips)
    max_probs = 0.0
    min_cos = 1.0
    max_emb = 0.0
    consistency = 0.0
    for clip, got in zip(clips, batched, strict=True):
        with torch.no_grad():
            ref = reference(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
        ref_out = dict(zip(reference.output_names, ref, strict=True))
        emb_ref = ref_out["embedding"][0].numpy()
        emb = got["embedding"]
        cos = float(np.dot(emb, emb_ref) / (np.linalg.norm(emb) * np.linalg.norm(emb_ref) + 1e-12))
        min_cos = min(min_cos, cos)
        max_emb = max(max_emb, float(np.abs(emb - emb_ref).max()))
        alone = session.run_clips([clip])[0]
        if "probs" in got:
            max_probs = max(max_probs, float(np.abs(got["probs"] - ref_out["probs"][0].numpy()).max()))
            consistency = max(consistency, float(np.abs(got["probs"] - alone["probs"]).max()))
        else:
            consistency = max(consistency, float(np.abs(got["embedding"] - alone["embedding"]).max()))
    return {
        "max_abs_probs": max_probs,
        "min_cosine_embedding": min_cos,
        "max_abs_embedding": max_emb,
        "batch_consistency_max_abs": consistency,
        "inputs": f"speech_like_set seeds 1234.., durations {list(DEVIATION_LENGTHS_S)} s, one padded batch",
    }


def write_manifest(
    repo: Path,
    ck: LoadedCheckpoint,
    precision: str,
    output_names: tuple[str, ...],
    deviation: dict[str, Any],
    parity: dict[str, Any] | None,
    export_s: float,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "model_name": ck.model_name,
        "model_version": ck.sha256[:12],
        "untrained": ck.untrained,
        "precision": precision,
        "onnx_file": ONNX_FILE,
        "opset": OPSET,
        "sample_rate_hz": 16000,
        "frame_rate_hz": 50,
        "frame_hop_samples": 320,
        "receptive_field_samples": 400,
        "min_samples": MIN_SAMPLES,
        "embedding_dim": ck.embed_dim,
        "labels": label_entries(ck.tokens),
        "io": {"inputs": list(INPUT_NAMES), "outputs": list(output_names)},
        "source": {
            "checkpoint_sha256": ck.sha256,
            "path": str(ck.directory.resolve()),
            "weights_file": ck.weights_file.name,
            "config": ck.config["model_conf"] | {"modalities": ck.config["model_conf"]["modalities"]},
        },
        "exporter": _versions(),
        "export_seconds": round(export_s, 2),
        "deviation_from_fp32": deviation,
        "parity": parity,
        "notes": {
            "frame_probs": "head applied to each frame: this project's addition, not a FunASR output",
            "short_inputs": "items shorter than min_samples are zero-padded to 400 samples inside the graph",
            "batch_exact": "each item of a right-padded batch equals the item alone (1e-4 abs, fp32)",
        },
    }
    (repo / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    return manifest


def export_repository(
    source: str | Path,
    out_dir: str | Path,
    precision: str = "fp32",
    verify: bool = True,
    progress: Progress = _stderr,
    padding_fix: bool = True,
) -> Path:
    """Export ``source`` (checkpoint dir or model id) into the model repository ``out_dir``.

    With ``verify`` the repository is checked against FunASR (fp32 must match within 1e-4; other
    precisions report their maxima) and the measured maxima are stored in the manifest.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {PRECISIONS}")
    started = time.perf_counter()
    progress(f"[1/4] loading checkpoint {source}")
    ck = load_checkpoint(source)
    model = build_model(ck.config, ck.state_dict, ck.tokens, padding_fix=padding_fix)
    repo = Path(out_dir)
    if repo.exists():
        for name in (ONNX_FILE, ONNX_FILE + ".data", MANIFEST_FILE):
            (repo / name).unlink(missing_ok=True)
    repo.mkdir(parents=True, exist_ok=True)
    progress(f"[2/4] exporting {ck.model_name} ({sum(v.numel() for v in ck.state_dict.values()) / 1e6:.1f}M "
             f"parameters) to ONNX opset {OPSET}, {precision}")
    if precision == "int8":
        with tempfile.TemporaryDirectory(prefix="emotion-export-") as tmp:
            fp32_path = export_onnx(model, Path(tmp) / ONNX_FILE)
            progress("      quantising MatMul weights to int8 (dynamic quantisation)")
            _quantize_int8(fp32_path, repo / ONNX_FILE)
    elif precision == "fp16":
        half = build_model(ck.config, ck.state_dict, ck.tokens, padding_fix=padding_fix)
        export_onnx(half.to_compute_dtype(torch.float16), repo / ONNX_FILE)
    else:
        export_onnx(model, repo / ONNX_FILE)
    onnx.checker.check_model(str(repo / ONNX_FILE))
    export_s = time.perf_counter() - started
    progress(f"[3/4] measuring deviation from fp32 on {len(DEVIATION_LENGTHS_S)} speech-like clips")
    deviation = measure_deviation(model, repo / ONNX_FILE, speech_like_set())
    progress(f"      max |Δprobs| {deviation['max_abs_probs']:.2e}, "
             f"min cos(embedding) {deviation['min_cosine_embedding']:.6f}")
    write_manifest(repo, ck, precision, model.output_names, deviation, None, export_s)
    if verify:
        from emotion2vec_serving.export.verify import verify_repository

        progress("[4/4] verifying against FunASR (single clips and random padded batches)")
        report = verify_repository(ck.directory, repo, progress=progress,
                                   tolerance=1e-4 if precision == "fp32" else None)
        write_manifest(repo, ck, precision, model.output_names, deviation, report, export_s)
    else:
        progress("[4/4] parity check skipped (--no-verify)")
    return repo


def copy_repository(src: Path, dst: Path) -> None:
    """Copy a model repository (used to place demo models)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)


def dummy_inputs(seconds: float, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like inputs for quick checks and benchmarks."""
    clips = speech_like_set(tuple([seconds] * batch))
    return pad_batch(clips)
