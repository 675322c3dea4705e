"""In-process fuzzing of the decoding layer (server/audio/decode.py) with hypothesis.

Most of the suite's ≥ 10,000 malformed inputs run here, where one costs about a millisecond; a few hundred
more go through the real gRPC server in test_fuzz_grpc.py. The property for every input: decoding either
returns a usable waveform (float32, mono, finite, within the duration limits, at 16 kHz) or raises
``AudioError`` with a readable message and a known reason. Anything else (another exception, a crash, a
hang, NaN in the output) fails.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emotion2vec_serving.server.audio.decode import decode_encoded
from emotion2vec_serving.server.audio.errors import AudioError, AudioLimits
from emotion2vec_serving.server.audio.pcm import decode_pcm
from tests.support.fuzzing import (
    AUDIO_ERROR_REASONS,
    BOMB_SPECS,
    GRPC_FUZZ_CASES,
    bombs,
    hostile_files,
    magic_then_noise,
    mutated,
    seed_files,
)

LIMITS = AudioLimits(max_duration_s=5.0, min_duration_s=0.025, max_encoded_bytes=8 << 20)
TARGET_HZ = LIMITS.target_sample_rate_hz

# Examples per in-process fuzz test; with the GRPC_FUZZ_CASES test_fuzz_grpc sends they add up to >= 10,000.
IN_PROCESS_EXAMPLES = {
    "random_bytes": 1500,
    "magic_then_noise": 1500,
    "mutated_real_files": 3200,
    "hostile_headers": 1800,
    "raw_pcm": 1200,
    "non_finite_pcm": 500,
}

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def check_outcome(decode: Callable[[], np.ndarray]) -> str:
    """Runs one decode; asserts the property; returns ``"ok"`` or the AudioError reason."""
    try:
        out = decode()
    except AudioError as exc:
        message = str(exc)
        assert message.strip(), "AudioError without a message"
        assert len(message) < 600, f"error message is not meant for a person: {message[:200]}..."
        assert exc.reason in AUDIO_ERROR_REASONS, f"unknown reason {exc.reason!r}: {message}"
        return exc.reason
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 1, (out.dtype, out.shape)
    assert np.isfinite(out).all(), "decoded audio contains NaN/Inf"
    duration_s = out.size / TARGET_HZ
    # Resampling can add or drop a few samples at the edges.
    assert LIMITS.min_duration_s - 0.01 <= duration_s <= LIMITS.max_duration_s + 0.01, duration_s
    return "ok"


def run_counted(
    name: str, strategy: st.SearchStrategy[bytes], decode: Callable[[bytes], np.ndarray]
) -> dict[str, int]:
    """Runs ``IN_PROCESS_EXAMPLES[name]`` examples of the property; returns the outcome histogram."""
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=IN_PROCESS_EXAMPLES[name])
    @given(strategy)
    def prop(data: bytes) -> None:
        outcome = check_outcome(lambda: decode(data))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    prop()
    assert sum(outcomes.values()) >= IN_PROCESS_EXAMPLES[name], outcomes
    return outcomes


def _decode(data: bytes) -> np.ndarray:
    return decode_encoded(data, LIMITS)


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    files = seed_files()
    for fmt, data in files.items():  # the seeds themselves must decode, or mutating them proves little
        assert check_outcome(lambda d=data: _decode(d)) == "ok", fmt
    return files


def test_random_bytes_are_refused_cleanly() -> None:
    outcomes = run_counted("random_bytes", st.binary(max_size=4096), _decode)
    assert set(outcomes) <= AUDIO_ERROR_REASONS, outcomes  # noise is never audio


def test_random_bodies_behind_every_magic_number() -> None:
    outcomes = run_counted("magic_then_noise", magic_then_noise(), _decode)
    # The bytes passed the sniffer and reached a demuxer, so "undecodable"/"empty" etc. must appear.
    assert outcomes.keys() - {"ok"}, outcomes


def test_corrupted_real_files_of_every_format(seeds: dict[str, bytes]) -> None:
    outcomes = run_counted("mutated_real_files", mutated(seeds), _decode)
    # Both sides of the property are exercised: many corruptions still decode, many are refused.
    assert outcomes.get("ok", 0) > 0 and sum(v for k, v in outcomes.items() if k != "ok") > 0, outcomes


def test_hostile_headers_declaring_absurd_sizes_rates_and_channels() -> None:
    run_counted("hostile_headers", hostile_files(), _decode)


@st.composite
def raw_pcm_requests(draw: st.DrawFn) -> tuple[bytes, str, int, int]:
    encoding = draw(st.sampled_from(["s16le", "f32le", "s24le", "u8", "", "S16LE"]))
    rate = draw(
        st.sampled_from([0, 1, 7999, 8000, 16000, 48000, 384000, 384001, 2**32 - 1]) | st.integers(-5, 2**32)
    )
    channels = draw(st.sampled_from([0, 1, 2, 3, 32, 33, 2**16]) | st.integers(-2, 300))
    data = draw(st.binary(max_size=8192))
    return data, encoding, rate, channels


def test_raw_pcm_with_any_format_description() -> None:
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=IN_PROCESS_EXAMPLES["raw_pcm"])
    @given(raw_pcm_requests())
    def prop(req: tuple[bytes, str, int, int]) -> None:
        data, encoding, rate, channels = req
        outcome = check_outcome(lambda: decode_pcm(data, encoding, rate, channels, LIMITS))  # type: ignore[arg-type]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "ok":
            assert encoding in ("s16le", "f32le") and 8000 <= rate <= 384000 and 1 <= channels <= 32

    prop()
    assert sum(outcomes.values()) >= IN_PROCESS_EXAMPLES["raw_pcm"]
    assert {"bad_sample_rate", "bad_channels", "unsupported_encoding"} <= outcomes.keys(), outcomes


@st.composite
def pcm_with_non_finite(draw: st.DrawFn) -> tuple[bytes, int, int]:
    channels = draw(st.integers(1, 4))
    frames = draw(st.integers(2000, 8000))  # >= 25 ms at 48 kHz: too short is checked first
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    samples = rng.uniform(-1, 1, frames * channels).astype("<f4")
    for _ in range(draw(st.integers(1, 5))):
        samples[draw(st.integers(0, samples.size - 1))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
    return samples.tobytes(), draw(st.sampled_from([8000, 16000, 44100, 48000])), channels


def test_nan_and_inf_pcm_is_always_refused_as_non_finite() -> None:
    count = 0

    @settings(FUZZ, max_examples=IN_PROCESS_EXAMPLES["non_finite_pcm"])
    @given(pcm_with_non_finite())
    def prop(req: tuple[bytes, int, int]) -> None:
        nonlocal count
        data, rate, channels = req
        assert check_outcome(lambda: decode_pcm(data, "f32le", rate, channels, LIMITS)) == "non_finite"
        count += 1

    prop()
    assert count >= IN_PROCESS_EXAMPLES["non_finite_pcm"]


def test_nan_inside_an_encoded_float_wav_is_refused() -> None:
    samples = np.zeros(16000, "<f4")
    samples[1234] = np.nan
    data = samples.tobytes()
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 3, 1, 16000, 64000, 4, 32)
        + b"data"
        + struct.pack("<I", len(data))
    )
    assert check_outcome(lambda: _decode(header + data)) == "non_finite"


@pytest.mark.parametrize(
    ("samples", "reason"),
    [(0, "empty"), (1, "too_short"), (2, "too_short"), (399, "too_short")],
)
def test_zero_and_one_sample_audio(samples: int, reason: str) -> None:
    pcm = np.full(samples, 0.1, "<f4").tobytes()
    assert check_outcome(lambda: decode_pcm(pcm, "f32le", 16000, 1, LIMITS)) == reason
    wav = (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 3, 1, 16000, 64000, 4, 32)
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )
    assert check_outcome(lambda: _decode(wav)) in {reason, "empty"}


@pytest.mark.parametrize("name", [*BOMB_SPECS, "flac_1h_unknown_length"])
def test_decompression_bombs_are_refused_as_too_long(name: str) -> None:
    data = bombs()[name]
    assert len(data) < LIMITS.max_encoded_bytes, (name, len(data))  # small enough to pass the size check
    try:
        decode_encoded(data, LIMITS)
    except AudioError as exc:
        assert exc.reason == "too_long", (name, str(exc))
        assert "maximum 5 s" in str(exc), str(exc)
    else:
        pytest.fail(f"{name} ({len(data)} bytes) decoded instead of being refused")


def test_a_header_declaring_hours_over_little_data_costs_only_the_data() -> None:
    # Streaming writers (espeak-ng, pipes) put 0xFFFFFFFF in the data size, so a huge declared size with
    # little data is legitimate: what is decoded is what is there, never what the header claims.
    out = decode_encoded(bombs()["wav_declares_37h"], LIMITS)
    assert out.size == 800


def test_oversized_encoded_input_is_refused_before_decoding() -> None:
    data = b"RIFF" + bytes(LIMITS.max_encoded_bytes)
    assert check_outcome(lambda: _decode(data)) == "too_large"


def test_the_suite_sends_at_least_ten_thousand_malformed_inputs() -> None:
    assert sum(IN_PROCESS_EXAMPLES.values()) + GRPC_FUZZ_CASES >= 10_000
