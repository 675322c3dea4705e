"""tests/support/ci_skips.py: under CI=true a skipped test (or a module skipped at import) fails the run;
locally it stays a skip; tests marked gpu may skip anywhere. Runs pytest itself on small test files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SKIPPING = '''
import pytest

def test_needs_a_missing_tool():
    pytest.skip("the tool is not installed")

@pytest.mark.skipif(True, reason="no such tool")
def test_marked_skip():
    pass

@pytest.mark.gpu
def test_needs_a_gpu():
    pytest.skip("no CUDA GPU")

def test_runs():
    pass
'''
MODULE_SKIP = '''
import pytest
pytest.importorskip("no_such_module_anywhere")

def test_never_collected():
    pass
'''


def _run(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_sample.py"
    test.write_text(source, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.support.ci_skips",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", os.devnull, str(test)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path, ci: str | None) -> None:
    done = _run(tmp_path, SKIPPING, ci)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 3 skipped" in done.stdout, done.stdout


def test_under_ci_a_skip_fails_and_names_the_reason(tmp_path: Path) -> None:
    done = _run(tmp_path, SKIPPING, "true")
    assert done.returncode == 1, done.stdout
    # The skip in the test body fails it; the skipif marker, evaluated at setup, makes a setup error. The
    # gpu-marked test may still skip.
    assert "1 failed, 1 passed, 1 skipped" in done.stdout and "1 error" in done.stdout, done.stdout
    assert "the tool is not installed" in done.stdout and "no such tool" in done.stdout
    assert "install it in .ci/run" in done.stdout


def test_under_ci_a_module_skipped_at_import_fails(tmp_path: Path) -> None:
    done = _run(tmp_path, MODULE_SKIP, "true")
    assert done.returncode != 0, done.stdout
    assert "no_such_module_anywhere" in done.stdout and "skipped under CI=true" in done.stdout, done.stdout
    local = _run(tmp_path, MODULE_SKIP, None)
    assert "1 skipped" in local.stdout and "failed" not in local.stdout, local.stdout
