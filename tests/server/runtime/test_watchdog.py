"""The run watchdog against a real ONNX Runtime session: ``RunOptions.terminate`` really aborts a run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.config import parse_settings
from emotion2vec_serving.server.runtime.contract import RunnerOptions, RunnerTimeout
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER
from emotion2vec_serving.server.runtime.runner import Runner

RATE = 16000


def test_a_real_session_run_past_the_timeout_is_terminated_and_the_session_reused(
    manifest: ModelManifest,
) -> None:
    timeouts: list[None] = []
    # 1 ms cannot run 20 s of audio even through the tiny model (~100 ms on one core): ORT must abort it.
    options = RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=1, instances=1, run_timeout_s=0.001)
    runner = Runner(manifest, options, on_run_timeout=lambda: timeouts.append(None))
    wave = (0.1 * np.random.default_rng(0).standard_normal(20 * RATE)).astype(np.float32)
    with pytest.raises(RunnerTimeout, match="run timeout") as caught:
        runner.run([wave])
    # The cause is ONNX Runtime's own refusal, not something the runner made up.
    assert "terminate flag" in str(caught.value.__cause__), caught.value.__cause__
    assert len(timeouts) == 1
    # The only session went back to the pool: with the watchdog relaxed, the same runner runs again.
    runner.options = dataclasses.replace(options, run_timeout_s=60.0)
    (result,) = runner.run([wave])
    assert result.probs is not None and np.isfinite(result.probs).all()
    assert len(timeouts) == 1
    runner.close()


def test_run_timeout_and_max_concurrent_rpcs_settings() -> None:
    defaults = parse_settings([], env={})
    assert defaults.run_timeout_s == 120.0 and defaults.max_concurrent_rpcs == 256
    s = parse_settings(["--max-concurrent-rpcs", "0"], env={"EMOTION_RUN_TIMEOUT_S": "0"})
    assert s.run_timeout_s == 0.0 and s.max_concurrent_rpcs == 0
    with pytest.raises(ValueError, match="run_timeout_s"):
        parse_settings([], env={"EMOTION_RUN_TIMEOUT_S": "-1"})
