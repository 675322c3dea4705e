"""Performance settings: --batch-policy through the real server, ONNX Runtime memory/CPU options on real
sessions, the shared run watchdog, and the defaults chosen from benchmarks/README.md."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.config import SettingsError, parse_settings
from emotion2vec_serving.server.runtime.contract import RunnerOptions
from emotion2vec_serving.server.runtime.engines.onnxruntime import ort_session_factory
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER
from emotion2vec_serving.server.runtime.runner import Runner
from emotion2vec_serving.server.runtime.watchdog import Watchdog
from tests.support.calls import RATE, recognize
from tests.support.faults import FaultyFactory
from tests.support.polling import wait_until
from tests.support.polling import wait_until_async as until
from tests.support.servers import Running, StartServer

pytestmark = pytest.mark.timeout(120)


def test_batch_policy_and_ort_settings_parse_from_flags_and_environment() -> None:
    defaults = parse_settings([], env={})
    assert defaults.batch_policy == "length_aware"
    assert (defaults.ort_allow_spinning, defaults.ort_cpu_arena, defaults.ort_arena_shrinkage) == (
        False, True, True)
    assert (defaults.max_duration_s, defaults.warmup_max_s) == (30.0, 10.0)
    s = parse_settings(["--batch-policy", "fifo", "--ort-allow-spinning", "--no-ort-arena-shrinkage"],
                       env={"EMOTION_BATCH_POLICY": "equal_shape", "EMOTION_ORT_CPU_ARENA": "false"})
    assert s.batch_policy == "fifo"  # the flag wins over the environment
    assert (s.ort_allow_spinning, s.ort_cpu_arena, s.ort_arena_shrinkage) == (True, False, False)
    assert parse_settings([], env={"EMOTION_BATCH_POLICY": "equal_shape"}).batch_policy == "equal_shape"
    with pytest.raises(SettingsError, match="batch policy 'lifo'"):
        parse_settings(["--batch-policy", "lifo"], env={})


async def _batches_through_server(start_server: StartServer, policy: str) -> list[list[int]]:
    """Hold the runner on a first request while four of alternating lengths queue; return the batches."""
    gate = threading.Event()
    factory = FaultyFactory(gate=gate)
    # One fixed runner instance: the first request holds the only runner (adaptive runs two at once).
    running: Running = await start_server(factory, batch_policy=policy, max_batch_size=2, runner_instances=1,
                                          adaptive_batching=False, max_queue_delay_ms=0.0)
    batcher = running.server.batcher
    assert batcher is not None
    lengths = [RATE // 2, 2 * RATE, RATE // 2 + 160, 2 * RATE + 160]
    try:
        first = asyncio.ensure_future(recognize(running, RATE))
        await until(lambda: len(factory.entered) == 1)
        rest = []
        for i, n in enumerate(lengths):  # one at a time: arrival order is what FIFO batches by
            rest.append(asyncio.ensure_future(recognize(running, n, seed=i)))
            await until(lambda k=i + 1: batcher.queued_requests == k)  # type: ignore[misc]
    finally:
        gate.set()
    responses = await asyncio.gather(first, *rest)
    assert all(r.utterance.label for r in responses)
    return [sorted(b) for b in factory.batches[1:]]


async def test_fifo_policy_pads_short_with_long_in_arrival_order(start_server: StartServer) -> None:
    batches = await _batches_through_server(start_server, "fifo")
    assert batches == [[RATE // 2, 2 * RATE], [RATE // 2 + 160, 2 * RATE + 160]]


async def test_length_aware_policy_groups_similar_lengths(start_server: StartServer) -> None:
    batches = await _batches_through_server(start_server, "length_aware")
    assert batches == [[RATE // 2, RATE // 2 + 160], [2 * RATE, 2 * RATE + 160]]


async def test_equal_shape_policy_never_pads(start_server: StartServer) -> None:
    batches = await _batches_through_server(start_server, "equal_shape")
    assert sorted(batches) == [[n] for n in sorted([RATE // 2, 2 * RATE, RATE // 2 + 160, 2 * RATE + 160])]


def test_session_factory_applies_spinning_and_arena_options(manifest: ModelManifest) -> None:
    on = ort_session_factory(manifest.onnx_path, [CPU_PROVIDER],
                             RunnerOptions(allow_spinning=True, cpu_arena=True))
    off = ort_session_factory(manifest.onnx_path, [CPU_PROVIDER],
                              RunnerOptions(allow_spinning=False, cpu_arena=False))
    so_on, so_off = on.session.get_session_options(), off.session.get_session_options()  # type: ignore[attr-defined]
    assert so_on.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so_off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so_on.enable_cpu_mem_arena and not so_off.enable_cpu_mem_arena


def test_outputs_leave_the_arena_when_the_run_returns(manifest: ModelManifest) -> None:
    """ONNX Runtime's own outputs alias its arena (a numpy array over the OrtValue); a call holding a view of
    one kept an arena region from every shrink until it let go. The session hands out copies instead, with
    the same values."""
    session = ort_session_factory(manifest.onnx_path, [CPU_PROVIDER], RunnerOptions(intra_op_threads=1))
    wave = (0.1 * np.random.default_rng(2).standard_normal((1, 2 * RATE))).astype(np.float32)
    feeds = {"waveform": wave, "lengths": np.array([2 * RATE], np.int64)}
    raw = session.session.run(None, feeds)  # type: ignore[attr-defined]
    assert any(not out.flags.owndata for out in raw), "ONNX Runtime returns arrays over its own tensors"
    handle = session.new_run_handle()  # type: ignore[attr-defined]
    ours = session.run(None, feeds, handle)
    for out, ref in zip(ours, raw, strict=True):
        assert out.flags.owndata and out.base is None
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize(("arena", "shrink", "timeout_s"), [(True, True, 60.0), (True, True, 0.0),
                                                            (False, True, 60.0), (False, False, 0.0)])
def test_memory_options_give_the_same_results(manifest: ModelManifest, arena: bool, shrink: bool,
                                              timeout_s: float) -> None:
    """Shrinkage goes through RunOptions (with or without the watchdog); without an arena it is skipped
    rather than making ONNX Runtime refuse the run."""
    rng = np.random.default_rng(1)
    batch = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (RATE, 3 * RATE)]
    base = Runner(manifest, RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=1))
    runner = Runner(manifest, RunnerOptions(providers=(CPU_PROVIDER,), intra_op_threads=1, cpu_arena=arena,
                                            arena_shrinkage=shrink, run_timeout_s=timeout_s))
    for _ in range(2):  # the second run reuses (or re-grows) the arena after a shrink
        got, want = runner.run(batch), base.run(batch)
        for g, w in zip(got, want, strict=True):
            assert g.probs is not None and w.probs is not None
            np.testing.assert_allclose(g.probs, w.probs, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(g.embedding, w.embedding, rtol=1e-4, atol=1e-5)
    runner.close()
    base.close()


class _Flag:
    """A run handle that records ``terminate()``."""

    def __init__(self) -> None:
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True


def test_watchdog_terminates_only_runs_past_their_deadline_and_forgets_finished_ones() -> None:
    dog = Watchdog()
    try:
        slow, fast = _Flag(), _Flag()
        t_slow = dog.arm(slow, 0.05)
        t_fast = dog.arm(fast, 30.0)
        wait_until(lambda: slow.terminated, 5.0, 0.005, "the run past its deadline was not terminated")
        assert not fast.terminated
        assert dog.disarm(t_slow) is True  # the runner learns the run was cut off by the watchdog
        assert dog.disarm(t_fast) is False
        # Thousands of finished runs (the steady state) leave no pile of entries behind.
        for _ in range(5000):
            dog.disarm(dog.arm(_Flag(), 120.0))
        assert len(dog._heap) <= 64
        # A later, shorter deadline wakes the sleeping thread (it sleeps towards the 120 s ones otherwise).
        late = _Flag()
        dog.arm(_Flag(), 120.0)
        dog.arm(late, 0.05)
        wait_until(lambda: late.terminated, 5.0, 0.005, "a later, shorter deadline did not wake the watchdog")
    finally:
        dog.close()
