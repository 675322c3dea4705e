"""The demo model: a tiny random-weight checkpoint exported to an fp32 model repository.

Used by the server's ``--model demo`` (through ``python -m export.cli demo --out DIR``) and by tests. The
weights are random, so its answers mean nothing; its manifest says ``untrained: true``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from emotion2vec_serving.modelrepo import MANIFEST_FILE, ONNX_FILE

__all__ = ["DEMO_SEED", "DEMO_SIZE", "ensure_demo_repo"]

DEMO_SIZE = "tiny"
DEMO_SEED = 0


def _is_complete(repo: Path) -> bool:
    try:
        manifest = json.loads((repo / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (repo / ONNX_FILE).is_file() and manifest.get("untrained") is True


def ensure_demo_repo(out_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Build ``out_dir/checkpoint`` and the model repository ``out_dir/repo`` unless already there.

    Idempotent: a complete repository is reused as is. Returns the model repository directory.
    """
    out_dir = Path(out_dir)
    repo = out_dir / "repo"
    if _is_complete(repo):
        return repo
    # Imported here so that reusing an existing repository does not pay for importing torch.
    from emotion2vec_serving.export.checkpoint import write_checkpoint
    from emotion2vec_serving.export.onnx_export import export_repository

    say = progress or (lambda _message: None)
    checkpoint = write_checkpoint(out_dir / "checkpoint", size=DEMO_SIZE, seed=DEMO_SEED)
    # The parity check needs funasr and ~10 s; the demo model is covered by the test suite instead.
    return export_repository(checkpoint, repo, precision="fp32", verify=False, progress=say)
