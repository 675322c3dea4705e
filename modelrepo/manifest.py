"""The model repository contract: ``manifest.json`` beside ``model.onnx``, written and read here only.

The one statement of the contract (file names, schema version, graph input/output names, every field of
docs/DESIGN.md's "Model repository" table as a dataclass), its writer ``write_manifest`` and its reader
``load_manifest``. The exporter and the benchmarks' null model write with the one, the server, the exporter's
tools (Triton layout, demo, verification) and the benchmarks read with the other; nobody else parses the
file. Standard library only, so the serving path never imports torch or the exporter.

Reading is strict about types and lenient about provenance: the fields the server serves with are required
(as they always were); the records that describe where a model came from (``source``, ``exporter``,
``deviation_from_fp32``, ``parity``, ``quantization``, ``notes``) and its ``warnings`` may be absent (older
or hand-written repositories), but a field that is present must have its type. Every refusal names the field
(``deviation_from_fp32.max_abs_probs``, ``labels[3].name``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from emotion2vec_serving.modelrepo.fields import JsonObject, ManifestError

__all__ = [
    "EMOTION2VEC_FRAMING",
    "HEADLESS_OUTPUT_NAMES",
    "INPUT_NAMES",
    "INT8_PADDING_NOTE",
    "MANIFEST_FILE",
    "MANIFEST_PRECISIONS",
    "MANIFEST_SCHEMA_VERSION",
    "ONNX_FILE",
    "OUTPUT_NAMES",
    "Deviation",
    "DownloadRecord",
    "FileDigest",
    "Framing",
    "Label",
    "ManifestError",
    "ModelManifest",
    "Parity",
    "Quantization",
    "Smoothing",
    "Source",
    "labels_from_tokens",
    "load_manifest",
    "write_manifest",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
#: The model file the exporter writes (the manifest's ``onnx_file`` names it; readers follow the manifest).
ONNX_FILE = "model.onnx"
#: Values of the manifest's ``precision``.
MANIFEST_PRECISIONS = ("fp32", "fp16", "int8")

#: Why an int8 model is never ``batch_exact`` (the exporter writes it in the manifest's notes; issue 24).
INT8_PADDING_NOTE = (
    "int8 is exact in batches of equal-length items only: padding changes the last bits of fp32 ops before "
    "the activation quantisers (ONNX Runtime's SGEMM sums a convolution in K-blocks of 128 or, for <= 64 "
    "output frames, 256, so a short clip rounds differently alone and padded), and int8 rounding turns some "
    "of those bits into whole steps; the server runs int8 batches as one group per length"
)

#: Graph inputs: ``waveform`` float32 [batch, samples] (16 kHz, right-padded), ``lengths`` int64 [batch].
INPUT_NAMES = ("waveform", "lengths")
#: Graph outputs. Models without a classifier head (emotion2vec_base) have only the last three.
OUTPUT_NAMES = ("logits", "probs", "frame_probs", "embedding", "frame_features", "frame_lengths")
HEADLESS_OUTPUT_NAMES = ("embedding", "frame_features", "frame_lengths")


class Framing(TypedDict):
    """The time geometry a repository states (``ModelManifest(**EMOTION2VEC_FRAMING, ...)``)."""

    sample_rate_hz: int
    frame_rate_hz: int
    frame_hop_samples: int
    receptive_field_samples: int
    min_samples: int


#: The emotion2vec family's framing, the same for every size and precision: 16 kHz in, one frame per 20 ms
#: (320 samples), a 25-ms receptive field, and items shorter than that zero-padded to it inside the graph.
#: Every writer (the exporter, the benchmarks' null model) takes it from here.
EMOTION2VEC_FRAMING = Framing(sample_rate_hz=16000, frame_rate_hz=50, frame_hop_samples=320,
                              receptive_field_samples=400, min_samples=400)


@dataclass(frozen=True)
class Label:
    """One row of the classifier head, in model order (manifest ``labels[i]``)."""

    index: int
    name: str  # English, e.g. "angry"; "unknown" for <unk>
    name_zh: str = ""  # Chinese, e.g. "生气"; "" when the token has none
    token: str = ""  # the line of tokens.txt, e.g. "生气/angry", "<unk>", "unuse_3"
    enabled: bool = True  # False for tokens starting with "unuse": masked out (probability 0)

    @classmethod
    def from_token(cls, index: int, token: str) -> Label:
        """The label of one ``tokens.txt`` line (``生气/angry``, ``<unk>``, ``unuse_3``)."""
        if "/" in token:
            zh, en = token.split("/", 1)
        elif token == "<unk>":
            zh, en = "", "unknown"
        else:
            zh, en = "", token
        return cls(index=index, name=en, name_zh=zh, token=token, enabled=not token.startswith("unuse"))

    @classmethod
    def from_json(cls, obj: JsonObject) -> Label:
        return cls(
            index=obj.integer("index"),
            name=obj.text("name"),
            name_zh=obj.text_or_none("name_zh") or "",
            token=obj.text_or_none("token") or "",
            enabled=obj.flag_or_none("enabled") is not False,
        )

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "name_zh": self.name_zh, "token": self.token,
                "enabled": self.enabled}


def labels_from_tokens(tokens: Iterable[str]) -> tuple[Label, ...]:
    """The manifest's labels from the lines of ``tokens.txt``, in head order."""
    return tuple(Label.from_token(i, token) for i, token in enumerate(tokens))


@dataclass(frozen=True)
class Deviation:
    """``deviation_from_fp32``: the exported graph measured against the fp32 torch model.

    Absent fields (``None``) were not measured: repositories written before they were, or the null model.
    """

    max_abs_probs: float  # padded-batch ONNX vs the fp32 reference, items alone
    min_cosine_embedding: float
    max_abs_embedding: float | None = None
    batch_consistency_max_abs: float | None = None  # ONNX in a padded batch vs ONNX alone
    equal_length_consistency_max_abs: float | None = None  # ... in a batch of its own length (no padding)
    top1_agreement: float | None = None  # share of clips with the reference's top label; None: headless
    inputs: str | None = None  # what was measured on
    #: int8: ``equal_length_consistency_max_abs`` measured per ONNX Runtime intra-op thread count (the bound
    #: of equal-length batches, which depends on how the threads split a convolution: issue 24).
    equal_length_consistency_by_threads: Mapping[int, float] | None = None

    @classmethod
    def from_json(cls, obj: JsonObject) -> Deviation:
        return cls(
            max_abs_probs=obj.number("max_abs_probs"),
            min_cosine_embedding=obj.number("min_cosine_embedding"),
            max_abs_embedding=obj.number_or_none("max_abs_embedding"),
            batch_consistency_max_abs=obj.number_or_none("batch_consistency_max_abs"),
            equal_length_consistency_max_abs=obj.number_or_none("equal_length_consistency_max_abs"),
            top1_agreement=obj.number_or_none("top1_agreement"),
            inputs=obj.text_or_none("inputs"),
            equal_length_consistency_by_threads=_by_threads(obj, "equal_length_consistency_by_threads"),
        )

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.equal_length_consistency_by_threads is None:
            del out["equal_length_consistency_by_threads"]  # absent before issue 24: rewritten unchanged
        else:
            out["equal_length_consistency_by_threads"] = {
                str(k): v for k, v in sorted(self.equal_length_consistency_by_threads.items())}
        return out


def _by_threads(obj: JsonObject, key: str) -> dict[int, float] | None:
    """``{"1": 1.2e-07, "4": 0.0018}``: thread counts (decimal keys) to numbers."""
    sub = obj.obj_or_none(key)
    if sub is None:
        return None
    out = {}
    for name in sub.names():
        if not name.isdigit() or int(name) < 1:
            raise sub.error(name, "is not a thread count (a positive integer)")
        out[int(name)] = sub.number(name)
    return out


@dataclass(frozen=True)
class Smoothing:
    """Activation smoothing of row-wise int8 (``quantization.smoothing``)."""

    alpha: float
    calibration_clips: int

    @classmethod
    def from_json(cls, obj: JsonObject) -> Smoothing:
        return cls(alpha=obj.number("alpha"), calibration_clips=obj.integer("calibration_clips"))

    def to_json(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "calibration_clips": self.calibration_clips}


#: ``quantization`` keys that only row-wise int8 (export/quantize.py) records, written together.
_ROWWISE_KEYS = ("weight_bits", "activation_levels", "asymmetric", "matmuls_quantised", "smoothing",
                 "weight_bytes_fp32", "weight_bytes_int8")


@dataclass(frozen=True)
class Quantization:
    """``quantization`` (int8 only): method and layout; the measured numbers of row-wise int8."""

    method: str  # "int8_rowwise" | "int8_dynamic"
    weights: str
    activations: str
    ops: str
    weight_bits: int | None = None
    activation_levels: int | None = None
    asymmetric: bool | None = None
    matmuls_quantised: int | None = None
    smoothing: Smoothing | None = None
    weight_bytes_fp32: int | None = None
    weight_bytes_int8: int | None = None

    @property
    def rowwise(self) -> bool:
        """Whether the row-wise fields are recorded (``int8_rowwise``)."""
        return self.weight_bits is not None

    @classmethod
    def from_json(cls, obj: JsonObject) -> Quantization:
        smoothing = obj.obj_or_none("smoothing")
        return cls(
            method=obj.text("method"),
            weights=obj.text("weights"),
            activations=obj.text("activations"),
            ops=obj.text("ops"),
            weight_bits=obj.integer_or_none("weight_bits"),
            activation_levels=obj.integer_or_none("activation_levels"),
            asymmetric=obj.flag_or_none("asymmetric"),
            matmuls_quantised=obj.integer_or_none("matmuls_quantised"),
            smoothing=Smoothing.from_json(smoothing) if smoothing is not None else None,
            weight_bytes_fp32=obj.integer_or_none("weight_bytes_fp32"),
            weight_bytes_int8=obj.integer_or_none("weight_bytes_int8"),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"method": self.method, "weights": self.weights,
                                "activations": self.activations, "ops": self.ops}
        if self.rowwise:  # row-wise records state every one of its fields, smoothing null included
            data |= {key: getattr(self, key) for key in _ROWWISE_KEYS}
            data["smoothing"] = self.smoothing.to_json() if self.smoothing is not None else None
        return data


@dataclass(frozen=True)
class FileDigest:
    """One downloaded file of a download record (``source.hub.files[path]``)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DownloadRecord:
    """``source.hub``: where a downloaded checkpoint came from (export/download.py writes it per snapshot)."""

    hub: str  # "modelscope" | "huggingface"
    repo_id: str
    revision: str  # the pinned revision, or --revision
    endpoint: str | None = None
    pinned_default: bool | None = None  # True: the pinned revision, False: --revision
    commit: str | None = None  # the commit the hub resolved the revision to, where it says
    files: tuple[FileDigest, ...] = ()

    @property
    def resolved_revision(self) -> str:
        """What a message names: the commit the hub resolved, else the requested revision."""
        return self.commit or self.revision

    @classmethod
    def from_json(cls, obj: JsonObject) -> DownloadRecord:
        files = obj.obj_or_none("files")
        digests = [] if files is None else [(path, files.obj(path)) for path in files.names()]
        return cls(
            hub=obj.text("hub"),
            repo_id=obj.text("repo_id"),
            revision=obj.text("revision"),
            endpoint=obj.text_or_none("endpoint"),
            pinned_default=obj.flag_or_none("pinned_default"),
            commit=obj.text_or_none("commit"),
            files=tuple(FileDigest(path, d.integer("size"), d.text("sha256")) for path, d in digests),
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str = "download record") -> DownloadRecord:
        """Check and type a download record read from a snapshot directory (``LoadedCheckpoint.hub``)."""
        return cls.from_json(JsonObject(record, "", where))

    def to_json(self) -> dict[str, Any]:
        return {"hub": self.hub, "endpoint": self.endpoint, "repo_id": self.repo_id,
                "revision": self.revision, "pinned_default": self.pinned_default, "commit": self.commit,
                "files": {f.path: {"size": f.size, "sha256": f.sha256} for f in self.files}}


@dataclass(frozen=True)
class Source:
    """``source``: the checkpoint the model was exported from."""

    checkpoint_sha256: str
    path: str  # the checkpoint directory at export time ("" when there was none)
    weights_file: str | None = None
    hub: DownloadRecord | None = None  # None: a local checkpoint
    config: Mapping[str, Any] = field(default_factory=dict)  # the checkpoint's model_conf, as it was

    @classmethod
    def from_json(cls, obj: JsonObject) -> Source:
        hub = obj.obj_or_none("hub")
        return cls(
            checkpoint_sha256=obj.text("checkpoint_sha256"),
            path=obj.text("path"),
            weights_file=obj.text_or_none("weights_file"),
            hub=DownloadRecord.from_json(hub) if hub is not None else None,
            config=obj.mapping_or_none("config") or {},
        )

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint_sha256": self.checkpoint_sha256, "path": self.path,
                "weights_file": self.weights_file,
                "hub": self.hub.to_json() if self.hub is not None else None, "config": dict(self.config)}


@dataclass(frozen=True)
class Parity:
    """``parity``: the exported graph measured against FunASR (export/verify.py)."""

    max_abs: Mapping[str, float]  # e.g. single_probs, batch_embedding: largest |difference|
    reference: str | None = None
    lengths_samples: tuple[int, ...] = ()
    batches: int | None = None
    batch_size: int | None = None
    tolerance: float | None = None  # None: maxima reported, none applied (fp16, int8)
    passed: bool | None = None  # True: within tolerance; False: no tolerance applied

    @classmethod
    def from_json(cls, obj: JsonObject) -> Parity:
        maxima = obj.obj("max_abs")
        return cls(
            max_abs={key: maxima.number(key) for key in maxima.names()},
            reference=obj.text_or_none("reference"),
            lengths_samples=tuple(obj.integers_or_none("lengths_samples") or ()),
            batches=obj.integer_or_none("batches"),
            batch_size=obj.integer_or_none("batch_size"),
            tolerance=obj.number_or_none("tolerance"),
            passed=obj.flag_or_none("passed"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "lengths_samples": list(self.lengths_samples),
                "batches": self.batches, "batch_size": self.batch_size, "tolerance": self.tolerance,
                "max_abs": dict(self.max_abs), "passed": self.passed}


@dataclass(frozen=True)
class ModelManifest:
    """Everything about an exported model: what the server serves with, and where the model came from."""

    directory: Path  # the repository (not a manifest field: where it was read from or is written to)
    model_name: str
    model_version: str  # first 12 hex digits of the checkpoint's sha256
    precision: str  # "fp32" | "fp16" | "int8"
    onnx_file: str
    opset: int
    sample_rate_hz: int
    frame_rate_hz: float
    frame_hop_samples: int
    receptive_field_samples: int
    min_samples: int
    embedding_dim: int
    labels: tuple[Label, ...]
    input_names: tuple[str, ...]  # manifest io.inputs
    output_names: tuple[str, ...]  # manifest io.outputs
    untrained: bool
    #: An item's outputs do not depend on its batch mates, padded or not (measured; 1e-5 on probabilities).
    #: Never true for int8, whatever a manifest says (``INT8_PADDING_NOTE``).
    batch_exact: bool
    #: ... do not depend on batch mates of exactly its length (no padding): what int8 guarantees.
    batch_exact_equal_length: bool
    quantization: Quantization | None = None
    source: Source | None = None
    exporter: Mapping[str, str] = field(default_factory=dict)  # versions of torch, onnx, ... this package
    export_seconds: float | None = None
    deviation_from_fp32: Deviation | None = None
    parity: Parity | None = None
    notes: Mapping[str, str] = field(default_factory=dict)
    #: What a user must know before trusting the model (e.g. an emotion2vec+ model that enables fewer than
    #: nine emotions, modelrepo/labels.py); absent in a manifest: none.
    warnings: tuple[str, ...] = ()

    @property
    def has_head(self) -> bool:
        return bool(self.labels)

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.onnx_file

    def batch_bound(self, threads: Iterable[int] | None, *, batched: bool = True) -> float | None:
        """The largest |Δprobability| between an item answered alone and the same item in a batch, as a server
        batches this model on ONNX Runtime's CPU provider with ``threads`` intra-op threads per session (every
        count its sessions use). None: not measured for that case.

        - not ``batched`` (``--max-batch-size 1``): 0, every item runs alone;
        - ``batch_exact`` (padded batches): the exporter's padded measurement, ``batch_consistency_max_abs``;
        - ``batch_exact_equal_length`` only (int8: equal-length groups): the per-thread-count measurement
          ``equal_length_consistency_by_threads``, the largest over ``threads``; None when a count in use was
          not measured (or ``threads`` is None: another engine or a GPU);
        - neither (the legacy per-tensor int8): None, its answers depend on the batch (~1e-2).
        """
        if not batched:
            return 0.0
        deviation = self.deviation_from_fp32
        if deviation is None:
            return None
        if self.batch_exact:
            return deviation.batch_consistency_max_abs
        by_threads = deviation.equal_length_consistency_by_threads
        if not self.batch_exact_equal_length or by_threads is None or threads is None:
            return None
        counts = set(threads)
        if not counts or not counts <= set(by_threads):
            return None
        return max(by_threads[n] for n in counts)

    @classmethod
    def from_json(cls, obj: JsonObject, directory: Path) -> ModelManifest:
        version = obj.integer("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            raise obj.error("schema_version", f"is {version}, this reader reads {MANIFEST_SCHEMA_VERSION}")
        precision = obj.text("precision")
        batch_exact = obj.flag_or_none("batch_exact")
        if batch_exact is None:  # manifests before the field: fp32/fp16 are, the old (per-tensor) int8 is not
            batch_exact = precision != "int8"
        equal_length = obj.flag_or_none("batch_exact_equal_length")
        if precision == "int8" and batch_exact:
            # Exporters before issue 24 claimed it for int8 when their measurement clips agreed padded;
            # padding is never exact for int8 (INT8_PADDING_NOTE): such a model runs in equal-length groups.
            equal_length = True if equal_length is None else equal_length
            batch_exact = False
        io = obj.obj("io")
        quantization, source = obj.obj_or_none("quantization"), obj.obj_or_none("source")
        deviation, parity = obj.obj_or_none("deviation_from_fp32"), obj.obj_or_none("parity")
        exporter, notes = obj.obj_or_none("exporter"), obj.obj_or_none("notes")
        return cls(
            directory=directory,
            model_name=obj.text("model_name"),
            model_version=obj.text("model_version"),
            precision=precision,
            onnx_file=obj.text("onnx_file"),
            opset=obj.integer("opset"),
            sample_rate_hz=obj.integer("sample_rate_hz"),
            frame_rate_hz=obj.number("frame_rate_hz"),
            frame_hop_samples=obj.integer("frame_hop_samples"),
            receptive_field_samples=obj.integer("receptive_field_samples"),
            min_samples=obj.integer("min_samples"),
            embedding_dim=obj.integer("embedding_dim"),
            labels=tuple(Label.from_json(item) for item in obj.objects("labels")),
            input_names=tuple(io.texts("inputs")),
            output_names=tuple(io.texts("outputs")),
            untrained=obj.flag_or_none("untrained") is True,
            batch_exact=batch_exact,
            batch_exact_equal_length=batch_exact if equal_length is None else equal_length,
            quantization=Quantization.from_json(quantization) if quantization is not None else None,
            source=Source.from_json(source) if source is not None else None,
            exporter={} if exporter is None else {key: exporter.text(key) for key in exporter.names()},
            export_seconds=obj.number_or_none("export_seconds"),
            deviation_from_fp32=Deviation.from_json(deviation) if deviation is not None else None,
            parity=Parity.from_json(parity) if parity is not None else None,
            notes={} if notes is None else {key: notes.text(key) for key in notes.names()},
            warnings=tuple(obj.texts_or_none("warnings") or ()),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json`` (key order as the exporter has always written it; ``warnings``
        only when there are some, so a manifest without them reads and rewrites unchanged)."""
        frame_rate: float | int = self.frame_rate_hz
        if isinstance(frame_rate, float) and frame_rate.is_integer():
            frame_rate = int(frame_rate)  # 50, as written before the manifest was typed
        data: dict[str, Any] = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "untrained": self.untrained,
            "precision": self.precision,
            "batch_exact": self.batch_exact,
            "batch_exact_equal_length": self.batch_exact_equal_length,
            "quantization": self.quantization.to_json() if self.quantization is not None else None,
            "onnx_file": self.onnx_file,
            "opset": self.opset,
            "sample_rate_hz": self.sample_rate_hz,
            "frame_rate_hz": frame_rate,
            "frame_hop_samples": self.frame_hop_samples,
            "receptive_field_samples": self.receptive_field_samples,
            "min_samples": self.min_samples,
            "embedding_dim": self.embedding_dim,
            "labels": [label.to_json() for label in self.labels],
            "io": {"inputs": list(self.input_names), "outputs": list(self.output_names)},
            "source": self.source.to_json() if self.source is not None else None,
            "exporter": dict(self.exporter),
            "export_seconds": self.export_seconds,
            "deviation_from_fp32": (self.deviation_from_fp32.to_json() if self.deviation_from_fp32 is not None
                                    else None),
            "parity": self.parity.to_json() if self.parity is not None else None,
            "notes": dict(self.notes),
        }
        if self.warnings:
            data["warnings"] = list(self.warnings)
        return data


def _check(manifest: ModelManifest, obj: JsonObject) -> None:
    """What the types alone do not say: the contract's values, and the model file being there."""
    if manifest.precision not in MANIFEST_PRECISIONS:
        raise obj.error("precision", f"is {manifest.precision!r}, not one of {MANIFEST_PRECISIONS}")
    if [label.index for label in manifest.labels] != list(range(len(manifest.labels))):
        raise obj.error("labels", f"indices must be 0..{len(manifest.labels) - 1} in order")
    if manifest.input_names != INPUT_NAMES:
        raise obj.error("io.inputs", f"is {list(manifest.input_names)}, not {list(INPUT_NAMES)}")
    expected = OUTPUT_NAMES if manifest.has_head else HEADLESS_OUTPUT_NAMES
    missing = [name for name in expected if name not in manifest.output_names]
    if missing:
        raise obj.error("io.outputs", f"lacks {missing} (the contract's outputs)")
    name = manifest.onnx_file
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise obj.error("onnx_file", "must be a plain file name inside the repository")
    if not manifest.onnx_path.is_file():
        raise ManifestError(f"{manifest.onnx_path}: model file missing")


def load_manifest(directory: str | Path) -> ModelManifest:
    """Read and validate ``<directory>/manifest.json``; raise ManifestError naming what is wrong."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest (is {directory} a model repository?)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable: {exc}") from exc
    obj = JsonObject(data, "", str(path))
    manifest = ModelManifest.from_json(obj, directory)
    _check(manifest, obj)
    return manifest


def write_manifest(directory: str | Path, manifest: ModelManifest) -> ModelManifest:
    """Validate ``manifest`` and write it as ``<directory>/manifest.json`` (the model file must be there).

    The file is checked exactly as ``load_manifest`` checks it before it replaces any earlier manifest
    (atomically), so a repository never holds one its readers refuse. Returns the manifest as read back.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    text = json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) + "\n"
    obj = JsonObject(json.loads(text), "", f"{path} (being written)")
    written = ModelManifest.from_json(obj, directory)
    _check(written, obj)
    # A plain file beside it (not mkstemp, whose 0600 would ignore the umask the repository is shared with).
    tmp = directory / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written
