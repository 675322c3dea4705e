"""benchmarks/int8_exactness.py, quick mode, tiny int8 model: it runs end to end and writes its report.

Nothing about speed; the checks are that both sections produced complete, self-consistent rows and that the
report names its command, CPU flags and load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emotion2vec_serving.export.onnx_export import BATCH_EXACT_TOLERANCE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_int8_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emotion2vec_serving.export.onnx_export import export_repository

    return export_repository(tiny_checkpoint, tmp_path_factory.mktemp("int8"), precision="int8", verify=False,
                             progress=lambda _message: None)


def test_quick_mode_writes_consistent_results(tiny_int8_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.int8_exactness", "--quick", "--repo", str(tiny_int8_repo),
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert data["meta"]["quick"] and "int8_exactness --quick" in data["meta"]["command"]
    kernel = data["kernel"]
    assert len(kernel) == 4 * 2  # four channel counts x two clip lengths, one thread
    for row in kernel:
        assert row["K"] == 2 * row["channels"] and row["frames_padded"] == 599
        assert 0 <= row["outputs_differing"] <= row["outputs"] == row["channels"] * row["frames_alone"]
        assert (row["outputs_differing"] == 0) == (row["max_abs_diff"] == 0.0)
        assert 0 <= row["pair_outputs_differing"] <= row["outputs"]
        assert (row["pair_outputs_differing"] == 0) == (row["pair_max_abs_diff"] == 0.0)
        assert row["max_abs_diff"] <= 1e-4 * max(1.0, row["max_abs_output"])  # last bits, never more
    served = data["served"]
    assert [r["duration_s"] for r in served] == [0.5, 1.3, 2.0]
    for row in served:
        assert row["clips"] == 3 and 0 <= row["padded_clips_over_1e-5"] <= 3
        assert row["repo"] == str(tiny_int8_repo) and str(tiny_int8_repo) in data["models"]
        # What the server runs now: equal-length groups, each item's answer as alone.
        assert row["grouped_max_abs_probs"] <= BATCH_EXACT_TOLERANCE
        assert row["same_length_mate_max_abs_probs"] <= BATCH_EXACT_TOLERANCE
    report = (out / "measurement.md").read_text(encoding="utf-8")
    assert "CPU flags" in report and "load 1 min" in report and "int8_exactness --quick" in report
