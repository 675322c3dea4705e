"""GPU-ready runner (issue 15), tested on CPU with real ONNX Runtime sessions of the tiny model.

A GPU is simulated only through the runner's ``SessionFactory`` seam: a real CPU session that reports
CUDA as its provider and fails while a switch says the "device" is broken. Everything under test (the
runner's padding, failure accounting, fallback and return, the batcher's splitting) is the real code.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emotion2vec_serving.batching import BatchPolicy, DynamicBatcher
from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.config import parse_settings
from emotion2vec_serving.server.runtime.buckets import LengthBuckets, parse_length_buckets
from emotion2vec_serving.server.runtime.contract import (
    RunnerError,
    RunnerOptions,
    SessionLike,
    is_out_of_memory,
    split_on_error,
)
from emotion2vec_serving.server.runtime.engines.onnxruntime import ort_session_factory
from emotion2vec_serving.server.runtime.gpu import (
    GpuOptions,
    cuda_provider_options,
    provider_list,
    resolve_gpu_mem_limit,
    tensorrt_provider_options,
)
from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER, CUDA_PROVIDER
from emotion2vec_serving.server.runtime.runner import Runner
from tests.support.polling import wait_until, wait_until_async
from tests.support.servers import Running, StartServer

RATE = 16000
pytestmark = pytest.mark.timeout(120)


class PretendGpu:
    """Session factory: real CPU sessions; those asked for CUDA claim CUDA and fail while ``broken``.

    ``poison``: item lengths whose batches always fail on the "GPU" (a deterministic input failure).
    ``widths`` records the padded width of every batch run.
    """

    def __init__(self, poison: frozenset[int] = frozenset()) -> None:
        self.broken = threading.Event()
        self.poison = poison
        self.widths: list[tuple[str, int, tuple[int, ...]]] = []
        self.created: list[list[str]] = []
        self.load_fails = threading.Event()

    def __call__(self, path: Path, providers: Sequence[str], options: RunnerOptions) -> SessionLike:
        self.created.append(list(providers))
        gpu = CUDA_PROVIDER in providers
        if gpu and self.load_fails.is_set():
            raise RuntimeError("CUDA error: no CUDA-capable device is detected (injected)")
        return _Session(ort_session_factory(path, [CPU_PROVIDER], options), self, gpu)


class _Session:
    def __init__(self, real: SessionLike, owner: PretendGpu, gpu: bool) -> None:
        self._real, self._owner, self._gpu = real, owner, gpu

    def get_providers(self) -> list[str]:
        return [CUDA_PROVIDER, CPU_PROVIDER] if self._gpu else [CPU_PROVIDER]

    def new_run_handle(self) -> Any:
        return self._real.new_run_handle()

    def run(
        self, output_names: Sequence[str] | None, feeds: dict[str, Any], run_handle: Any = None
    ) -> list[Any]:
        lengths = tuple(int(n) for n in feeds["lengths"])
        provider = CUDA_PROVIDER if self._gpu else CPU_PROVIDER
        self._owner.widths.append((provider, int(feeds["waveform"].shape[1]), lengths))
        if self._gpu and self._owner.broken.is_set():
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        if self._gpu and self._owner.poison.intersection(lengths):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code (injected poison input)")
        return self._real.run(output_names, feeds, run_handle)


def wave(n: int, seed: int) -> np.ndarray:
    return (0.05 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- buckets


def test_geometric_buckets_bound_the_padding_and_the_number_of_shapes() -> None:
    buckets = LengthBuckets.geometric(int(0.25 * RATE), 30 * RATE, per_octave=4)
    assert 25 <= len(buckets) <= 32
    assert buckets.worst_padding <= 0.2  # 2 ** (1/4) - 1 of the padded length, plus frame rounding
    assert all(e % 320 == 0 for e in buckets.edges)
    rng = np.random.default_rng(0)
    for n in rng.integers(buckets.edges[0], 30 * RATE, 2000):  # shorter inputs pad to the first edge
        padded = buckets.pad(int(n))
        assert padded >= n and (padded - n) / padded <= 0.2
        assert padded in buckets.edges
    beyond = buckets.pad(31 * RATE)
    assert beyond >= 31 * RATE and beyond % buckets.tail_step == 0


def test_length_bucket_setting() -> None:
    assert parse_length_buckets("auto", gpu=False, min_s=0.1, max_s=30) is None  # CPUs: exact lengths
    assert parse_length_buckets("off", gpu=True, min_s=0.1, max_s=30) is None
    auto = parse_length_buckets("auto", gpu=True, min_s=0.25, max_s=30)
    assert auto is not None and auto.edges[-1] == 30 * RATE
    given = parse_length_buckets("1,2,4.5", gpu=True, min_s=0.1, max_s=30)
    assert given is not None and given.edges == (16000, 32000, 72000)
    with pytest.raises(ValueError, match="length buckets"):
        parse_settings(["--length-buckets", "1,x"], env={})
    with pytest.raises(ValueError, match="positive"):
        parse_length_buckets("0,-1", gpu=True, min_s=0.1, max_s=30)


def test_padding_to_buckets_changes_no_result_and_cost_reports_the_padded_length(
    manifest: ModelManifest,
) -> None:
    """The model is padding-exact: a bucket-padded batch equals each item run alone at its own length."""
    buckets = LengthBuckets.geometric(int(0.25 * RATE), 8 * RATE)
    plain = Runner(manifest, RunnerOptions(providers=(CPU_PROVIDER,)))
    gpu = PretendGpu()
    padded = Runner(
        manifest,
        RunnerOptions(providers=(CUDA_PROVIDER, CPU_PROVIDER), length_buckets=buckets),
        session_factory=gpu,
    )
    try:
        assert padded.provider == CUDA_PROVIDER
        lengths = [3_333, 16_000, 17_001, 40_123, 99_999]
        waves = [wave(n, i) for i, n in enumerate(lengths)]
        alone = [plain.run([w])[0] for w in waves]
        batched = padded.run(waves)
        assert gpu.widths[-1][1] == buckets.pad(max(lengths)) > max(lengths)
        for a, b in zip(alone, batched, strict=True):
            assert a.probs is not None and b.probs is not None
            np.testing.assert_allclose(b.probs, a.probs, atol=1e-5)
            np.testing.assert_allclose(b.embedding, a.embedding, atol=1e-4)
            assert b.frame_features.shape == a.frame_features.shape
            np.testing.assert_allclose(b.frame_features, a.frame_features, atol=1e-4)
        for n in lengths:
            assert padded.cost(n) == buckets.pad(n) and plain.cost(n) == n
            single = padded.run([wave(n, 7)])
            assert gpu.widths[-1][1] == padded.cost(n)
            assert single[0].frame_features.shape[0] == plain.run([wave(n, 7)])[0].frame_features.shape[0]
    finally:
        plain.close()
        padded.close()


# ---------------------------------------------------------------------------------------- provider options


def test_cuda_options_heuristic_search_no_tf32_and_a_memory_limit() -> None:
    opts = cuda_provider_options(GpuOptions(gpu_mem_limit_bytes=8 << 30))
    assert opts["cudnn_conv_algo_search"] == "HEURISTIC"
    assert opts["use_tf32"] == "0"
    assert opts["gpu_mem_limit"] == str(8 << 30)
    assert opts["arena_extend_strategy"] == "kSameAsRequested"
    assert opts["do_copy_in_default_stream"] == "1" and opts["cudnn_conv_use_max_workspace"] == "1"
    assert "gpu_mem_limit" not in cuda_provider_options(GpuOptions())
    assert (
        cuda_provider_options(GpuOptions(tf32=True, cudnn_conv_algo_search="exhaustive"))["use_tf32"] == "1"
    )
    listed = provider_list([CUDA_PROVIDER, CPU_PROVIDER], GpuOptions())
    assert listed[0][0] == CUDA_PROVIDER and isinstance(listed[0][1], dict) and listed[1] == CPU_PROVIDER
    assert resolve_gpu_mem_limit(512) == 512 << 20 and resolve_gpu_mem_limit(-1) == 0


def test_settings_map_to_gpu_options_only_when_a_gpu_is_asked_for(tmp_path: Path) -> None:
    cpu = parse_settings(["--providers", "CPUExecutionProvider"], env={})
    options, buckets = cpu.gpu_options("m")
    assert options == GpuOptions() and buckets is None
    gpu = parse_settings(
        [
            "--providers",
            "CUDAExecutionProvider,CPUExecutionProvider",
            "--gpu-mem-limit-mb",
            "4096",
            "--cudnn-conv-algo-search",
            "exhaustive",
            "--gpu-arena-extend-strategy",
            "next_power_of_two",
            "--model-cache-dir",
            str(tmp_path),
        ],
        env={},
    )
    options, buckets = gpu.gpu_options("tiny-1-fp32")
    assert buckets is not None and buckets.edges[-1] == int(gpu.max_duration_s * RATE)
    cuda = cuda_provider_options(options)
    assert cuda["gpu_mem_limit"] == str(4096 << 20) and cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert cuda["arena_extend_strategy"] == "kNextPowerOfTwo" and cuda["use_tf32"] == "0"
    with pytest.raises(ValueError, match="cudnn conv algo search"):
        parse_settings(["--cudnn-conv-algo-search", "fastest"], env={})


def test_tensorrt_is_not_a_default_and_is_configured_when_listed(tmp_path: Path) -> None:
    defaults = parse_settings([], env={})
    assert "TensorrtExecutionProvider" not in defaults.providers
    trt_settings = parse_settings(
        [
            "--providers",
            "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider",
            "--model-cache-dir",
            str(tmp_path),
        ],
        env={},
    )
    options, buckets = trt_settings.gpu_options("tiny-1-fp32")
    assert buckets is not None
    trt = tensorrt_provider_options(options)
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_fp16_enable"] == "0"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "tensorrt" / "tiny-1-fp32")
    assert (tmp_path / "tensorrt" / "tiny-1-fp32").is_dir()
    mins = trt["trt_profile_min_shapes"].split(",")
    maxs = trt["trt_profile_max_shapes"].split(",")
    assert len(mins) == len(maxs) and 2 <= len(mins) <= 8  # (waveform, lengths) per profile
    assert mins[0] == f"waveform:1x{buckets.edges[0]}"
    assert maxs[-2] == f"waveform:{trt_settings.max_batch_size}x{buckets.edges[-1]}"


# --------------------------------------------------------------------------------- failure accounting


async def _through_batcher(runner: Runner, waves: list[np.ndarray]) -> list[Any]:
    batcher: DynamicBatcher[np.ndarray, Any] = DynamicBatcher(
        runner.run,
        BatchPolicy(max_batch_size=8, max_queue_delay_s=0.05, adaptive=False),
        split_on_error=split_on_error,
        out_of_memory=is_out_of_memory,
    )
    await batcher.start()
    try:
        return await asyncio.gather(
            *(batcher.submit(w, cost=runner.cost(len(w))) for w in waves), return_exceptions=True
        )
    finally:
        await batcher.close()


async def test_one_bad_input_in_a_split_batch_is_not_a_device_failure(manifest: ModelManifest) -> None:
    """8 -> 4 -> 2 -> 1 failures of one poison input: the probe passes each time, the GPU stays."""
    poison = 12_345
    gpu = PretendGpu(poison=frozenset({poison}))
    changes: list[tuple[str | None, str, str]] = []
    runner = Runner(
        manifest,
        RunnerOptions(providers=(CUDA_PROVIDER, CPU_PROVIDER), gpu_failures_before_fallback=2),
        session_factory=gpu,
        on_provider_change=lambda *a: changes.append(a),
    )
    try:
        lengths = [16_000 + 97 * i for i in range(7)] + [poison]
        results = await _through_batcher(runner, [wave(n, i) for i, n in enumerate(lengths)])
        assert isinstance(results[-1], RunnerError) and "this input" in str(results[-1])
        assert all(not isinstance(r, BaseException) for r in results[:-1]), results
        failed_batches = [w for w in gpu.widths if poison in w[2]]
        assert len(failed_batches) >= 3  # the split retries really happened ...
        assert runner.provider == CUDA_PROVIDER  # ... and none of them moved the runner off the GPU
        assert changes == [(None, CUDA_PROVIDER, "load")]
        assert [c for c in gpu.created if c == [CPU_PROVIDER]] == []
    finally:
        runner.close()


async def test_device_failures_fall_back_to_cpu_then_return_after_the_cooldown(
    manifest: ModelManifest,
) -> None:
    gpu = PretendGpu()
    changes: list[tuple[str | None, str, str]] = []
    runner = Runner(
        manifest,
        RunnerOptions(
            providers=(CUDA_PROVIDER, CPU_PROVIDER), gpu_failures_before_fallback=2, gpu_cooldown_s=0.3
        ),
        session_factory=gpu,
        on_provider_change=lambda *a: changes.append(a),
    )
    try:
        gpu.broken.set()
        with pytest.raises(RunnerError, match="1 consecutive device failure"):
            runner.run([wave(16_000, 1)])
        assert runner.provider == CUDA_PROVIDER
        (moved,) = runner.run([wave(16_000, 2)])  # second device failure: rerun on CPU
        assert moved.provider == CPU_PROVIDER and runner.provider == CPU_PROVIDER
        assert changes[-1] == (CUDA_PROVIDER, CPU_PROVIDER, "runtime_failure")
        # Still broken at the first probe after the cool-down: stays on CPU and keeps serving.
        gpu_runs = len([w for w in gpu.widths if w[0] == CUDA_PROVIDER])
        wait_until(
            lambda: len([w for w in gpu.widths if w[0] == CUDA_PROVIDER]) > gpu_runs,
            20.0,
            message="a probe run on a newly loaded GPU session",
        )
        assert runner.provider == CPU_PROVIDER
        assert runner.run([wave(8_000, 3)])[0].provider == CPU_PROVIDER
        gpu.broken.clear()  # the device recovers: the next attempt's probe passes
        wait_until(lambda: runner.provider == CUDA_PROVIDER, 20.0, message="return to the GPU")
        assert changes[-1] == (CPU_PROVIDER, CUDA_PROVIDER, "recovered")
        (back,) = runner.run([wave(16_000, 4)])
        assert back.provider == CUDA_PROVIDER and gpu.widths[-1][0] == CUDA_PROVIDER
    finally:
        runner.close()


async def test_a_broken_device_under_a_full_batch_loses_no_request(manifest: ModelManifest) -> None:
    gpu = PretendGpu()
    runner = Runner(
        manifest,
        RunnerOptions(
            providers=(CUDA_PROVIDER, CPU_PROVIDER), gpu_failures_before_fallback=3, gpu_cooldown_s=0
        ),
        session_factory=gpu,
    )
    try:
        gpu.broken.set()
        results = await _through_batcher(runner, [wave(16_000 + 50 * i, i) for i in range(8)])
        assert all(not isinstance(r, BaseException) for r in results), results
        assert runner.provider == CPU_PROVIDER
        assert {r.provider for r in results} == {CPU_PROVIDER}
    finally:
        runner.close()


def test_close_stops_the_restorer(manifest: ModelManifest) -> None:
    gpu = PretendGpu()
    runner = Runner(
        manifest,
        RunnerOptions(
            providers=(CUDA_PROVIDER, CPU_PROVIDER), gpu_failures_before_fallback=1, gpu_cooldown_s=0.2
        ),
        session_factory=gpu,
    )
    gpu.broken.set()
    runner.run([wave(16_000, 1)])
    assert runner.provider == CPU_PROVIDER
    runner.close()
    restorer = runner._restorer
    assert restorer is not None
    restorer.join(timeout=10)
    assert not restorer.is_alive()


# ------------------------------------------------------------------------------------ through the server


async def test_server_metrics_and_model_info_follow_the_fallback_and_the_return(
    start_server: StartServer,
) -> None:
    from emotion.v1 import emotion_pb2 as pb

    gpu = PretendGpu()
    running: Running = await start_server(
        gpu, providers=(CUDA_PROVIDER, CPU_PROVIDER), gpu_failures_before_fallback=1, gpu_cooldown_s=0.3
    )
    runner = running.server.runner
    assert runner is not None and runner.length_buckets is not None  # buckets: on, since a GPU was asked for
    n = 17_001  # between two bucket edges
    samples = wave(n, 5)
    request = pb.RecognizeRequest(
        audio=pb.Audio(
            raw=pb.RawAudio(
                data=samples.astype("<f4").tobytes(),
                encoding=pb.PCM_ENCODING_F32LE,
                sample_rate_hz=RATE,
                channels=1,
            )
        )
    )
    assert (await running.stub.Recognize(request, timeout=30)).utterance.label
    assert runner.cost(n) > n and gpu.widths[-1] == (
        CUDA_PROVIDER,
        runner.cost(n),
        (n,),
    )  # padded to its bucket
    # The batcher was told the padded length (the core submits with cost=runner.cost(n)).
    assert running.metric("emotion_padded_audio_seconds_total") == pytest.approx(runner.cost(n) / RATE)
    gpu.broken.set()
    assert (await running.stub.Recognize(request, timeout=30)).utterance.label  # rerun on CPU, not lost
    info = await running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.execution_provider == CPU_PROVIDER
    assert running.metric("emotion_execution_provider", provider=CPU_PROVIDER) == 1
    assert (
        running.metric(
            "emotion_provider_fallbacks_total",
            from_provider=CUDA_PROVIDER,
            to_provider=CPU_PROVIDER,
            reason="runtime_failure",
        )
        == 1
    )
    gpu.broken.clear()
    await wait_until_async(lambda: runner.provider == CUDA_PROVIDER, 20.0, message="return to the GPU")
    info = await running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.execution_provider == CUDA_PROVIDER
    assert running.metric("emotion_execution_provider", provider=CUDA_PROVIDER) == 1
    assert running.metric("emotion_execution_provider", provider=CPU_PROVIDER) == 0
    assert (
        running.metric(
            "emotion_provider_fallbacks_total",
            from_provider=CPU_PROVIDER,
            to_provider=CUDA_PROVIDER,
            reason="recovered",
        )
        == 1
    )
    assert (await running.stub.Recognize(request, timeout=30)).utterance.label
    assert gpu.widths[-1][0] == CUDA_PROVIDER


async def test_warm_up_on_a_gpu_runs_every_bucket_shape(start_server: StartServer) -> None:
    gpu = PretendGpu()
    running: Running = await start_server(
        gpu, providers=(CUDA_PROVIDER, CPU_PROVIDER), warmup=True, warmup_max_s=2.0, max_batch_size=2
    )
    runner = running.server.runner
    assert runner is not None and runner.active_length_buckets is not None
    warmed = {width for provider, width, _ in gpu.widths if provider == CUDA_PROVIDER}
    wanted = {e for e in runner.active_length_buckets.edges if e <= 2 * RATE}
    assert len(wanted) >= 8 and wanted <= warmed, sorted(wanted - warmed)
