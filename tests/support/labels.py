"""Checkpoints as a hub download leaves them, for the label check's tests (issue 23): the real emotion2vec+
layout with random weights (``export.checkpoint.write_checkpoint``), named ``emotion2vec_plus_tiny`` (an
emotion2vec+ name, so the nine-emotion promise applies), with a README without the generated-model marker
(which would rename it ``emotion2vec_tiny_random``, a model that promises nothing) and the download record a
hub download writes beside the files (so the revision is known and named)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from emotion2vec_serving.modelrepo.manifest import DownloadRecord

__all__ = ["FIVE_LABEL_COMMIT", "NINE_LABEL_COMMIT", "hub_snapshot"]

#: Commits the download records name (any 40 hex digits: nothing is fetched).
FIVE_LABEL_COMMIT = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
NINE_LABEL_COMMIT = "9b9b9b9b9b9b9b9b9b9b9b9b9b9b9b9b9b9b9b9b"


def hub_snapshot(out: Path, tokens: Sequence[str], commit: str, revision: str = "master") -> Path:
    """Write ``out`` as a downloaded ``emotion2vec_plus_tiny`` snapshot at ``commit`` with ``tokens``."""
    from emotion2vec_serving.export.checkpoint import write_checkpoint
    from emotion2vec_serving.export.download import DOWNLOAD_RECORD

    write_checkpoint(out, size="tiny", seed=0, tokens=tokens)
    readme = "# emotion2vec_plus_tiny\n\nRandom weights in the hub layout.\n"
    (out / "README.md").write_text(readme, encoding="utf-8")
    record = DownloadRecord(hub="modelscope", repo_id="iic/emotion2vec_plus_tiny", revision=revision,
                            endpoint="http://127.0.0.1:9", pinned_default=True, commit=commit)
    (out / DOWNLOAD_RECORD).write_text(json.dumps(record.to_json(), indent=2) + "\n", encoding="utf-8")
    return out
