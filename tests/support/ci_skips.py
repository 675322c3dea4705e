"""A pytest plugin: under CI (``CI=true``) a skipped test fails instead, so CI cannot pass by skipping.

A test that skips because a tool is missing (chromium, podman, ffmpeg, prometheus, espeak-ng, grpcurl...)
says that the machine lacks something ``.ci/run`` must install. Locally such skips stay skips. Expected skips
are only those of tests marked ``gpu`` (CI machines have no GPU) and ``xfail``. ``tests/conftest.py`` loads
this plugin; ``.ci/run`` also prints the skip summary (``-rs``).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

#: Markers whose tests may skip under CI: the machine is known not to have what they need.
EXPECTED_SKIP_MARKERS = ("gpu",)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail(report: pytest.TestReport | pytest.CollectReport, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"{what} skipped under CI=true: {_reason(report.longrepr)}. A skip in CI hides a "
                       "missing tool or package: install it in .ci/run (or mark the test gpu if it needs "
                       "one).")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if (_in_ci() and report.skipped and not hasattr(report, "wasxfail")
            and not any(item.get_closest_marker(m) for m in EXPECTED_SKIP_MARKERS)):
        _fail(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """A whole module skipped at import (``pytest.importorskip``, a module-level ``pytest.skip``)."""
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if _in_ci() and report.skipped:
        _fail(report, collector.nodeid)
