"""Checkpoint -> ONNX model repository (``model.onnx`` + ``manifest.json``, see docs/DESIGN.md).

The TorchScript exporter (``dynamo=False``) is used: the dynamo exporter cannot express the model's
length-dependent shapes without guards. Tracing uses a *padded* two-item batch so that every masking
path is recorded, and a freshly built model, so that no cached ALiBi tensor becomes a constant.
"""

from __future__ import annotations

import dataclasses
import gc
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from emotion2vec_serving.export.attention_chunks import chunk_attention
from emotion2vec_serving.export.chunking import chunk_front_end, iter_nodes
from emotion2vec_serving.export.load import LoadedCheckpoint, load_checkpoint
from emotion2vec_serving.export.model import Emotion2vecBatchExact, build_model
from emotion2vec_serving.export.ort_run import OnnxModel, pad_batch
from emotion2vec_serving.export.signals import DEVIATION_LENGTHS_S, speech_like, speech_like_set
from emotion2vec_serving.modelrepo import (
    EMOTION2VEC_FRAMING,
    INPUT_NAMES,
    MANIFEST_FILE,
    ONNX_FILE,
    Deviation,
    DownloadRecord,
    ModelManifest,
    Parity,
    Quantization,
    Source,
    labels_from_tokens,
    write_manifest,
)
from emotion2vec_serving.modelrepo.labels import check_labels
from emotion2vec_serving.modelrepo.manifest import INT8_PADDING_NOTE

__all__ = ["OPSET", "PRECISIONS", "export_onnx", "export_repository", "repository_manifest"]

OPSET = 17
#: ``int8``: batch-exact row-wise int8 (export/quantize.py); ``int8_dynamic``: ONNX Runtime's per-tensor
#: dynamic quantisation, whose answers depend on batch mates (kept only for comparison; never the default).
PRECISIONS = ("fp32", "fp16", "int8", "int8_dynamic")
#: Largest |Δprobs| between an item alone and in a padded batch for a repository to claim ``batch_exact``.
BATCH_EXACT_TOLERANCE = 1e-5
#: Above this size the weights go to ``model.onnx.data`` (protobuf files cannot exceed 2 GB).
EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30
MIN_SAMPLES = EMOTION2VEC_FRAMING["min_samples"]
#: The convolutional front end runs over the waveform in chunks of this many seconds of audio (all batch
#: items at once; export/chunking.py): the same outputs within float rounding, and its activations follow
#: the chunk instead of the longest clip. Large model, one 10.7 s clip: +97 MiB peak RSS against +157;
#: four: +353 against +733; the same speed (2 AMD EPYC cores, ONNX Runtime CPU). 0: one pass per row.
FRONT_END_CHUNK_S = 2.0
#: An attention of more than this many query rows (frames and extra tokens, 50 per second of audio: ~4.9 s)
#: runs over balanced chunks of at most this many (export/attention_chunks.py): the same outputs, bit for bit
#: on ONNX Runtime's CPU provider, and the scores' memory follows ``batch x heads x chunk x T`` instead of
#: ``T x T``. Large model: four 10.7 s clips +162 MiB peak RSS against +315, one 30 s clip +366 against
#: +654 (2 AMD EPYC cores, ONNX Runtime CPU). 0: whole attention matrices always.
ATTENTION_CHUNK_ROWS = 256

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def attention_chunk_rows_for(precision: str) -> int:
    """The default ``attention_chunk_rows`` of a precision: ``ATTENTION_CHUNK_ROWS``, 0 (whole) for fp16.

    fp16 is the GPU precision, where the loop's cost is not measured; and on ONNX Runtime's CPU provider
    (the fallback) an fp16 graph whose ``If`` branches both read one fp16 value gets a cast of it inserted
    under one name in each branch, which makes the saved optimised model (the adaptive runner's shared copy)
    invalid (``InsertedPrecisionFreeCast_...`` "used as output names multiple times")."""
    return 0 if precision == "fp16" else ATTENTION_CHUNK_ROWS


def front_end_chunk_frames(seconds: float) -> int:
    """Output frames per front-end chunk for ``seconds`` of audio (0: no chunks)."""
    if seconds < 0:
        raise ValueError("front_end_chunk_s must not be negative")
    hop = EMOTION2VEC_FRAMING["frame_hop_samples"]
    return 0 if seconds == 0 else max(1, round(seconds * EMOTION2VEC_FRAMING["sample_rate_hz"] / hop))


def export_onnx(model: Emotion2vecBatchExact, path: Path, opset: int = OPSET,
                front_end_chunk_s: float = FRONT_END_CHUNK_S,
                attention_chunk_rows: int = ATTENTION_CHUNK_ROWS) -> Path:
    """Trace ``model`` into ``path`` with dynamic batch and time axes; external data when large. The front
    end runs in chunks of ``front_end_chunk_s`` seconds (export/chunking.py), each attention in chunks of
    ``attention_chunk_rows`` query rows (export/attention_chunks.py); 0: not chunked."""
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
    # The graph is traced without its weights (export_params=False: they become graph inputs named like the
    # state dict) and the weights are then written tensor by tensor from the model itself. torch's own
    # weight export holds the ONNX protobuf, its serialised string and a Python copy of it at once: about
    # five copies of a large model (5.4 GB for a 1.26 GB checkpoint) against one here.
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
                export_params=False,
                # Folding would turn weights into new, unnamed tensors that only torch's weight export
                # knows; the one fold that matters (transposed Linear weights) is done in _attach_weights.
                do_constant_folding=False,
            )
        proto = onnx.load(str(traced))
    chunk_attention(proto, attention_chunk_rows)
    chunk_front_end(proto, front_end_chunk_frames(front_end_chunk_s))
    attach_weights(proto, model.state_dict(), path)
    return path


def attach_weights(proto: onnx.ModelProto, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Make the graph inputs named after ``weights`` initializers and save ``proto`` to ``path``.

    Tensors go one at a time into ``<path>.data`` (offsets aligned to 4 KiB, so ONNX Runtime can map them);
    a weight that only feeds a ``Transpose`` is stored transposed instead (what torch's constant folding
    does for Linear layers), so the served graph has no runtime transposes of weights. Models under
    ``EXTERNAL_DATA_THRESHOLD_BYTES`` are then rewritten as one self-contained file.
    """
    graph = proto.graph
    params = {i.name for i in graph.input if i.name in weights}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    top_level = {node.name for node in graph.node}
    for node in iter_nodes(graph):  # subgraphs too: the chunked front end's weights feed a Loop's body
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    stored: list[tuple[str, torch.Tensor]] = []
    for name in sorted(params):
        tensor = weights[name].detach()
        users = consumers.get(name, [])
        transposes = [n for n in users if n.op_type == "Transpose" and n.name in top_level]
        for node in transposes:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            order = perm if perm is not None else list(reversed(range(tensor.dim())))
            stored.append((node.output[0], tensor.permute(*order)))
            graph.node.remove(node)
        if len(transposes) < len(users):
            stored.append((name, tensor))
    kept_inputs = [i for i in graph.input if i.name not in params]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with data.open("wb") as fh:
        for name, tensor in stored:
            array = tensor.contiguous().numpy()
            proto_tensor = graph.initializer.add()
            proto_tensor.name = name
            proto_tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            proto_tensor.dims.extend(array.shape)
            if array.nbytes < 1024:
                proto_tensor.raw_data = array.tobytes()
                continue
            offset = (fh.tell() + 4095) // 4096 * 4096
            fh.write(b"\0" * (offset - fh.tell()))
            array.tofile(fh)
            total += array.nbytes
            proto_tensor.data_location = onnx.TensorProto.EXTERNAL
            where = (("location", data.name), ("offset", str(offset)), ("length", str(array.nbytes)))
            for key, value in where:
                entry = proto_tensor.external_data.add()
                entry.key, entry.value = key, value
            del array
    if total < EXTERNAL_DATA_THRESHOLD_BYTES:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(proto, str(path.parent))
        data.unlink()
    onnx.save_model(proto, str(path))


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


class RecordedReference:
    """The fp32 torch model's outputs on fixed clips, recorded so the model itself can be freed.

    Called like the model on one clip (``waveform[1, S]``, ``lengths[1]``), as ``measure_deviation`` does.
    """

    def __init__(self, model: Emotion2vecBatchExact, clips: list[np.ndarray]) -> None:
        self.clips = clips
        self.output_names = model.output_names
        self._outputs: dict[bytes, tuple[torch.Tensor, ...]] = {}
        with torch.no_grad():
            for clip in clips:
                outputs = model(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
                self._outputs[clip.tobytes()] = tuple(o.clone() for o in outputs)

    def __call__(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = waveform[0, : int(lengths[0])].numpy().tobytes()
        if waveform.shape[0] != 1 or key not in self._outputs:
            raise KeyError("RecordedReference answers only the single clips it recorded")
        return self._outputs[key]


def measure_deviation(
    reference: Emotion2vecBatchExact | RecordedReference, onnx_path: Path, clips: list[np.ndarray]
) -> Deviation:
    """Compare the ONNX model (clips run as one padded batch, and alone) with the fp32 torch model.

    ``max_abs_probs``/``min_cosine_embedding``: padded-batch ONNX vs fp32 reference, items alone.
    ``batch_consistency_max_abs``: ONNX padded batch vs ONNX alone: ``int8_dynamic`` picks activation scales
    per tensor, i.e. per batch, so that model is not batch-invariant (row-wise ``int8`` is).
    ``top1_agreement``: share of clips whose top label equals the fp32 reference's.
    ``equal_length_consistency_max_abs``: each clip alone vs. in a batch with a 20x louder mate of exactly its
    length (no padding): int8 rounds activations, so the last-bit differences that padding makes in the fp32
    ops before a quantiser (attention over padded keys) can flip a rounding and grow through the layers;
    without padding nothing differs.
    """
    session = OnnxModel(onnx_path)
    batched = session.run_clips(clips)
    max_probs = 0.0
    min_cos = 1.0
    max_emb = 0.0
    consistency = 0.0
    equal_length = 0.0
    agree = 0
    for i, (clip, got) in enumerate(zip(clips, batched, strict=True)):
        with torch.no_grad():
            ref = reference(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
        ref_out = dict(zip(reference.output_names, ref, strict=True))
        emb_ref = ref_out["embedding"][0].numpy()
        emb = got["embedding"]
        cos = float(np.dot(emb, emb_ref) / (np.linalg.norm(emb) * np.linalg.norm(emb_ref) + 1e-12))
        min_cos = min(min_cos, cos)
        max_emb = max(max_emb, float(np.abs(emb - emb_ref).max()))
        alone = session.run_clips([clip])[0]
        with_mate = session.run_clips([20.0 * speech_like(len(clip), seed=4321 + i), clip])[1]
        key = "probs" if "probs" in got else "embedding"
        equal_length = max(equal_length, float(np.abs(with_mate[key] - alone[key]).max()))
        if "probs" in got:
            max_probs = max(max_probs, float(np.abs(got["probs"] - ref_out["probs"][0].numpy()).max()))
            consistency = max(consistency, float(np.abs(got["probs"] - alone["probs"]).max()))
            agree += int(np.argmax(got["probs"]) == np.argmax(ref_out["probs"][0].numpy()))
        else:
            consistency = max(consistency, float(np.abs(got["embedding"] - alone["embedding"]).max()))
    return Deviation(
        max_abs_probs=max_probs,
        min_cosine_embedding=min_cos,
        max_abs_embedding=max_emb,
        batch_consistency_max_abs=consistency,
        equal_length_consistency_max_abs=equal_length,
        top1_agreement=agree / len(clips) if "probs" in batched[0] else None,
        inputs=f"speech_like_set seeds 1234.., durations {list(DEVIATION_LENGTHS_S)} s, one padded batch",
    )


#: Intra-op thread counts at which int8's equal-length consistency is measured: how ONNX Runtime splits a
#: convolution across its threads depends on the batch size, and a split into narrow GEMMs changes their
#: K-blocks (issue 24; benchmarks/results/int8_exactness): measured exact at 1-2 threads, not at 4.
EQUAL_LENGTH_THREADS = (1, 2, 4)


def equal_length_by_threads(onnx_path: Path, clips: list[np.ndarray],
                            threads: tuple[int, ...] = EQUAL_LENGTH_THREADS) -> dict[int, float]:
    """Per thread count: max |Δ| (probs, or embedding when headless) of each clip alone vs. in a batch with
    a 20x louder mate of exactly its length (no padding), the equal-length groups the server runs int8 in."""
    out = {}
    for t in threads:
        session = OnnxModel(onnx_path, threads=t)
        worst = 0.0
        for i, clip in enumerate(clips):
            alone = session.run_clips([clip])[0]
            with_mate = session.run_clips([20.0 * speech_like(len(clip), seed=4321 + i), clip])[1]
            key = "probs" if "probs" in alone else "embedding"
            worst = max(worst, float(np.abs(with_mate[key] - alone[key]).max()))
        out[t] = worst
        del session
    return out


def _within(measured: float | None) -> bool:
    return measured is not None and measured <= BATCH_EXACT_TOLERANCE


def repository_manifest(
    repo: Path,
    ck: LoadedCheckpoint,
    precision: str,
    output_names: tuple[str, ...],
    deviation: Deviation,
    parity: Parity | None,
    export_s: float,
    quantization: Quantization | None = None,
    warnings: tuple[str, ...] = (),
    front_end_chunk_s: float = 0.0,
    attention_chunk_rows: int = 0,
) -> ModelManifest:
    """The manifest of a repository exported from ``ck`` (written by ``modelrepo.write_manifest``)."""
    return ModelManifest(
        directory=repo,
        model_name=ck.model_name,
        model_version=ck.sha256[:12],
        untrained=ck.untrained,
        precision="int8" if precision.startswith("int8") else precision,
        # Measured, not assumed: an item alone equals the item in a padded batch within 1e-5 (probs). Never
        # for int8: a measurement on a few clips cannot show that padding flips no rounding for other clips
        # (issue 24: it did for short ones), so the server runs int8 in equal-length groups.
        batch_exact=not precision.startswith("int8") and _within(deviation.batch_consistency_max_abs),
        # Exact when batch mates have the same length (no padding): the server batches equal lengths only.
        batch_exact_equal_length=_within(deviation.equal_length_consistency_max_abs),
        quantization=quantization,
        onnx_file=ONNX_FILE,
        opset=OPSET,
        **EMOTION2VEC_FRAMING,
        embedding_dim=ck.embed_dim,
        labels=labels_from_tokens(ck.tokens),
        input_names=INPUT_NAMES,
        output_names=output_names,
        source=Source(
            checkpoint_sha256=ck.sha256,
            path=str(ck.directory.resolve()),
            weights_file=ck.weights_file.name,
            # Downloaded model ids: hub, repository, the pinned (or --revision) revision, file digests.
            hub=DownloadRecord.from_record(ck.hub) if ck.hub is not None else None,
            config=ck.config["model_conf"] | {"modalities": ck.config["model_conf"]["modalities"]},
        ),
        exporter=_versions(),
        export_seconds=round(export_s, 2),
        deviation_from_fp32=deviation,
        parity=parity,
        notes={
            "frame_probs": "head applied to each frame: this project's addition, not a FunASR output",
            "short_inputs": "items shorter than min_samples are zero-padded to 400 samples inside the graph",
            "batch_exact": "each item of a right-padded batch equals the item alone (1e-4 abs, fp32)",
        } | ({"int8_padding": INT8_PADDING_NOTE} if precision.startswith("int8") else {})
          | ({"front_end_chunks": f"the convolutional front end runs over {front_end_chunk_s:g} s chunks of "
              "the waveform (an ONNX Loop; the same outputs within float rounding, activations bounded by "
              "the chunk)"}
             if front_end_chunk_frames(front_end_chunk_s) else {})
          | ({"attention_chunks": f"an attention of more than {attention_chunk_rows} query rows runs over "
              "balanced chunks of at most that many (an ONNX If and Loop per layer; the same outputs, the "
              "scores' memory bounded by the chunk)"}
             if attention_chunk_rows else {}),
        warnings=warnings,
    )


def export_repository(
    source: str | Path,
    out_dir: str | Path,
    precision: str = "fp32",
    verify: bool = True,
    progress: Progress = _stderr,
    padding_fix: bool = True,
    revision: str | None = None,
    hub: str | None = None,
    require_labels: int | None = None,
    front_end_chunk_s: float = FRONT_END_CHUNK_S,
    attention_chunk_rows: int | None = None,
) -> Path:
    """Export ``source`` (checkpoint dir or model id) into the model repository ``out_dir``.

    The convolutional front end runs in chunks of ``front_end_chunk_s`` seconds of audio
    (``export/chunking.py``; 0: over the whole row at once) and each attention of more than
    ``attention_chunk_rows`` query rows in chunks (``export/attention_chunks.py``; 0: whole; None: the
    precision's default, ``attention_chunk_rows_for``); the manifest's notes say which.

    A model id is downloaded at its pinned revision (or ``revision``) from ``hub`` (default: each hub in
    turn), resumably (export/download.py). Memory: the checkpoint is memory-mapped and becomes the model's
    parameters without a copy, and the torch model is freed before ONNX Runtime loads the export, so the
    peak stays near two copies of the weights (benchmarks/RESULTS_export.md).

    With ``verify`` the repository is checked against FunASR (fp32 must match within 1e-4; other
    precisions report their maxima) and the measured maxima are stored in the manifest.

    The head's enabled labels are counted (``modelrepo.labels.check_labels``): an emotion2vec+ model with
    fewer than nine is exported with a warning (printed through ``progress`` and kept in the manifest's
    ``warnings``); with ``require_labels`` N, a model enabling fewer than N raises ``LabelCountError``
    before anything is written to ``out_dir``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {PRECISIONS}")
    started = time.perf_counter()
    if attention_chunk_rows is None:
        attention_chunk_rows = attention_chunk_rows_for(precision)
    progress(f"[1/4] loading checkpoint {source}")
    ck = load_checkpoint(source, revision=revision, hub=hub, progress=progress, mmap=True)
    record = DownloadRecord.from_record(ck.hub) if ck.hub is not None else None
    warning = check_labels(ck.model_name, labels_from_tokens(ck.tokens),
                           revision=record.resolved_revision if record is not None else None,
                           require=require_labels)
    if warning is not None:
        progress(f"      WARNING: {warning}")
    model = build_model(ck.config, ck.state_dict, ck.tokens, padding_fix=padding_fix, assign=True)
    # The fp32 torch outputs the export is compared with, computed now so that the torch model can go
    # before ONNX Runtime loads the exported copy of the weights.
    reference = RecordedReference(model, speech_like_set())
    repo = Path(out_dir)
    if repo.exists():
        for name in (ONNX_FILE, ONNX_FILE + ".data", MANIFEST_FILE):
            (repo / name).unlink(missing_ok=True)
    repo.mkdir(parents=True, exist_ok=True)
    progress(f"[2/4] exporting {ck.model_name} ({sum(v.numel() for v in ck.state_dict.values()) / 1e6:.1f}M "
             f"parameters) to ONNX opset {OPSET}, {precision}")
    quantization: Quantization | None = None
    if precision == "int8":
        from emotion2vec_serving.export.quantize import quantize_rowwise_int8

        with tempfile.TemporaryDirectory(prefix="emotion-export-") as tmp:
            fp32_path = export_onnx(model, Path(tmp) / ONNX_FILE, front_end_chunk_s=front_end_chunk_s,
                                    attention_chunk_rows=attention_chunk_rows)
            progress("      quantising MatMul weights to int8 (row-wise dynamic activations: batch-exact)")
            # Smoothing factors from generated speech (seeds apart from the deviation set's), each clip alone.
            calibration = [speech_like(int(16000 * d), seed=900 + i) for i, d in enumerate((1.0, 2.5, 4.0))]
            quantization = quantize_rowwise_int8(fp32_path, repo / ONNX_FILE, calibration=calibration)
    elif precision == "int8_dynamic":
        with tempfile.TemporaryDirectory(prefix="emotion-export-") as tmp:
            fp32_path = export_onnx(model, Path(tmp) / ONNX_FILE, front_end_chunk_s=front_end_chunk_s,
                                    attention_chunk_rows=attention_chunk_rows)
            progress("      quantising MatMul weights to int8 (per-tensor dynamic: NOT batch-exact)")
            _quantize_int8(fp32_path, repo / ONNX_FILE)
            quantization = Quantization(
                method="int8_dynamic", weights="int8 per tensor, 7-bit range",
                activations="uint8 dynamic, one scale per tensor (per batch): NOT batch-exact",
                ops="MatMul (ONNX Runtime quantize_dynamic)")
    elif precision == "fp16":
        half = build_model(ck.config, ck.state_dict, ck.tokens, padding_fix=padding_fix, assign=True)
        export_onnx(half.to_compute_dtype(torch.float16), repo / ONNX_FILE,
                    front_end_chunk_s=front_end_chunk_s, attention_chunk_rows=attention_chunk_rows)
        del half
    else:
        export_onnx(model, repo / ONNX_FILE, front_end_chunk_s=front_end_chunk_s,
                    attention_chunk_rows=attention_chunk_rows)
    onnx.checker.check_model(str(repo / ONNX_FILE))
    export_s = time.perf_counter() - started
    del model  # the torch weights (the mapped checkpoint) go before ONNX Runtime loads its own copy
    ck = dataclasses.replace(ck, state_dict={})
    gc.collect()
    progress(f"[3/4] measuring deviation from fp32 on {len(DEVIATION_LENGTHS_S)} speech-like clips")
    deviation = measure_deviation(reference, repo / ONNX_FILE, reference.clips)
    if precision.startswith("int8"):
        by_threads = equal_length_by_threads(repo / ONNX_FILE, reference.clips)
        deviation = dataclasses.replace(deviation, equal_length_consistency_by_threads=by_threads)
        progress("      alone vs equal-length mates by intra-op threads: " +
                 ", ".join(f"{t}: {v:.2e}" for t, v in by_threads.items()))
    progress(f"      max |Δprobs| {deviation.max_abs_probs:.2e}, "
             f"min cos(embedding) {deviation.min_cosine_embedding:.6f}, "
             f"alone vs batched {deviation.batch_consistency_max_abs:.2e}")
    manifest = repository_manifest(repo, ck, precision, reference.output_names, deviation, None, export_s,
                                   quantization, warnings=(warning,) if warning is not None else (),
                                   front_end_chunk_s=front_end_chunk_s,
                                   attention_chunk_rows=attention_chunk_rows)
    write_manifest(repo, manifest)
    if verify:
        from emotion2vec_serving.export.verify import verify_repository

        progress("[4/4] verifying against FunASR (single clips and random padded batches)")
        report = verify_repository(ck.directory, repo, progress=progress,
                                   tolerance=1e-4 if precision == "fp32" else None)
        write_manifest(repo, dataclasses.replace(manifest, parity=report))
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
