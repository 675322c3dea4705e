"""The demo model: a tiny random-weight checkpoint exported to an fp32 model repository.

Used by the server's ``--model demo`` (through ``emotion-export demo --out DIR``) and by tests. The
weights are random, so its answers mean nothing; its manifest says ``untrained: true``.

``DIR`` *is* the model repository (``DIR/manifest.json``, ``DIR/model.onnx``): what ``emotion-export demo
--out /models/repository`` writes is what ``emotion-server --model /models/repository`` serves. The
intermediate checkpoint lives in a temporary directory and is deleted.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from emotion2vec_serving.modelrepo import ManifestError, load_manifest

__all__ = ["DEMO_SEED", "DEMO_SIZE", "ensure_demo_repo"]

DEMO_SIZE = "tiny"
DEMO_SEED = 0


def _is_complete(repo: Path) -> bool:
    try:
        return load_manifest(repo).untrained  # the model file is there too: load_manifest checks
    except ManifestError:
        return False


def ensure_demo_repo(out_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Build the demo model repository at ``out_dir`` unless a complete one is already there.

    Idempotent: a complete repository is reused as is. Returns ``out_dir``.
    """
    repo = Path(out_dir)
    if _is_complete(repo):
        return repo
    # Imported here so that reusing an existing repository does not pay for importing torch.
    from emotion2vec_serving.export.checkpoint import write_checkpoint
    from emotion2vec_serving.export.onnx_export import export_repository

    say = progress or (lambda _message: None)
    with tempfile.TemporaryDirectory(prefix="emotion-demo-") as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "checkpoint", size=DEMO_SIZE, seed=DEMO_SEED)
        # The parity check needs funasr and ~10 s; the demo model is covered by the test suite instead.
        return export_repository(checkpoint, repo, precision="fp32", verify=False, progress=say)
