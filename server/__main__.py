"""``emotion-server`` / ``python -m server``: resolve the model, then serve until SIGTERM.

``--model`` is one of:
- ``demo``: a tiny untrained model, built once into the cache by ``python -m export.cli demo`` in a
  subprocess (so torch is never loaded into the server process). Its scores are meaningless.
- a model repository directory (it has ``manifest.json``): served as is.
- a checkpoint directory or a model id: exported once into the cache by ``python -m export.cli onnx``
  in a subprocess (needs the ``export`` extra), then served.

Whichever it is, the model's enabled labels are then counted (``modelrepo.labels``): an emotion2vec+ model
with fewer than nine is served with a WARNING naming its revision (also in ``GetModelInfo``, ``/v1/model``
and the page), and ``--require-labels N`` refuses one with fewer than N (exit 2); the export subprocess gets
the same ``--require-labels``, so such a model is not even exported into the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import re
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from emotion2vec_serving.modelrepo.labels import LabelCountError, served_warnings
from emotion2vec_serving.modelrepo.manifest import MANIFEST_FILE, ManifestError, ModelManifest, load_manifest
from emotion2vec_serving.server.config import Settings, SettingsError, parse_settings
from emotion2vec_serving.server.tls import SecurityConfigError
from emotion2vec_serving.server.tracing import TracingConfigError

__all__ = ["ModelResolutionError", "check_model_labels", "main", "resolve_model"]

log = logging.getLogger("server")


class ModelResolutionError(RuntimeError):
    """``--model`` names nothing the server can serve."""


def _run_export(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "emotion2vec_serving.export.cli", *args]
    log.info("%s: %s", what, " ".join(cmd))
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise ModelResolutionError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}")


def _require_export_extra(model: str) -> None:
    missing = [name for name in ("torch", "funasr", "onnx") if importlib.util.find_spec(name) is None]
    if missing or importlib.util.find_spec("emotion2vec_serving.export") is None:
        raise ModelResolutionError(
            f"--model {model!r} is not a model repository (no {MANIFEST_FILE}), so it must be exported to "
            f"ONNX first, which needs the 'export' extra (missing: {', '.join(missing) or 'export'}). "
            "Install it with: pip install 'emotion2vec-serving[export]', or export elsewhere with "
            "'emotion-export onnx --source <checkpoint> --out <dir>' and pass --model <dir>."
        )


def resolve_model(settings: Settings) -> ModelManifest:
    """Turn ``--model`` into a loaded manifest, building or exporting into the cache when needed."""
    model = settings.model
    cache = Path(settings.model_cache_dir).expanduser()
    if model == "demo":
        repo = cache / "demo"  # `emotion-export demo --out DIR` writes the repository at DIR itself
        if not (repo / MANIFEST_FILE).is_file():
            _require_export_extra(model)
            _run_export(["demo", "--out", str(repo)], "building the demo model")
        manifest = load_manifest(repo)
        log.warning("=" * 78)
        log.warning("SERVING THE DEMO MODEL %s: random weights, its scores are UNTRAINED and MEANINGLESS",
                    manifest.model_name)
        log.warning("=" * 78)
        return manifest
    path = Path(model).expanduser()
    if (path / MANIFEST_FILE).is_file():
        return load_manifest(path)
    # A checkpoint directory or a model id: export once, keyed by what was asked for.
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(path.resolve()) if path.exists() else model).strip("_")
    key = hashlib.sha256(model.encode()).hexdigest()[:8]
    out = cache / "exports" / f"{slug[-60:]}-{key}"
    if not (out / MANIFEST_FILE).is_file():
        _require_export_extra(model)
        require = ["--require-labels", str(settings.require_labels)] if settings.require_labels > 0 else []
        _run_export(["onnx", "--source", model, "--out", str(out), *require], f"exporting {model}")
    manifest = load_manifest(out)
    if manifest.untrained:
        log.warning("the model %s is UNTRAINED: its scores are meaningless", manifest.model_name)
    return manifest


def check_model_labels(manifest: ModelManifest, settings: Settings) -> tuple[str, ...]:
    """Count the model's enabled labels: log each warning (the manifest's and this check's), refuse a model
    enabling fewer than ``--require-labels`` with ``ModelResolutionError``; returns the warnings."""
    try:
        warnings = served_warnings(manifest, settings.require_labels)
    except LabelCountError as exc:
        raise ModelResolutionError(f"refusing the model in {manifest.directory}: {exc}") from exc
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


#: Modules of the ``server`` extra (the plain install is the light client and has none of them).
SERVER_EXTRA_MODULES = (
    "onnxruntime", "av", "soxr", "soundfile", "prometheus_client", "grpc_reflection", "aiohttp",
)


def missing_server_extra() -> list[str]:
    """The ``server`` extra's modules that cannot be imported here (empty when the server can run)."""
    return [name for name in SERVER_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def raise_open_file_limit() -> None:
    """Raise the soft descriptor limit to the hard one (often 1024 -> 524288), as servers do: connections,
    model files and decoders all take descriptors, and the ports' default caps are a quarter of it each
    (``defaults.connection_cap``). Logged, never fatal."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = max(soft, 1 << 20)  # an explicit number: setting RLIM_INFINITY is refused on Linux
        if 0 <= soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open file limit raised from %d to %d", soft, hard)
    except (OSError, ValueError) as exc:
        log.warning("could not raise the open file limit: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        print(f"emotion-server: {exc}", file=sys.stderr)
        return 2
    missing = missing_server_extra()
    if missing:
        print(
            f"emotion-server: the server's dependencies are not installed (missing: {', '.join(missing)}); "
            "this is the light client install. Install the server with: "
            "pip install 'emotion2vec-serving[server]'",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise_open_file_limit()
    try:
        manifest = resolve_model(settings)
        check_model_labels(manifest, settings)
    except (ModelResolutionError, ManifestError) as exc:
        log.error("%s", exc)
        return 2
    from emotion2vec_serving.server.app import (
        run_server,  # after model resolution: keeps --help and errors fast
    )

    try:
        return asyncio.run(run_server(settings, manifest))
    except (SecurityConfigError, TracingConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
